"""Protocol: metrics against hand-checked confusion matrices and scikit-learn; splits never leak."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from lpmn_fast.data.corpus import Utterance
from lpmn_fast.protocol import classification_metrics, leave_one_session_out, make_split

CLASSES = ["neutral", "happy", "angry", "sad"]


def test_metrics_hand_checked():
    # truth:   0 0 0 0 | 1 1 | 2 2 2 | 3
    # pred:    0 0 1 2 | 1 0 | 2 2 2 | 1
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 3]
    y_pred = [0, 0, 1, 2, 1, 0, 2, 2, 2, 1]
    m = classification_metrics(y_true, y_pred, CLASSES)
    assert m["confusion_matrix"] == [[2, 1, 1, 0], [1, 1, 0, 0], [0, 0, 3, 0], [0, 1, 0, 0]]
    assert m["wa"] == pytest.approx(6 / 10)
    assert m["ua"] == pytest.approx((2 / 4 + 1 / 2 + 3 / 3 + 0 / 1) / 4)
    # per class: precision 2/3, 1/3, 3/4, 0 (no prediction, zero_division=0); recall as above
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in ((2 / 3, 1 / 2), (1 / 3, 1 / 2), (3 / 4, 1), (0, 0))]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 4)
    assert m["weighted_f1"] == pytest.approx((4 * f1[0] + 2 * f1[1] + 3 * f1[2] + 1 * f1[3]) / 10)
    assert m["count"] == 10 and m["classes"] == CLASSES


def test_metrics_perfect_and_constant_predictions():
    y = [0, 1, 2, 3, 3]
    assert classification_metrics(y, y, CLASSES)["macro_f1"] == 1.0
    constant = classification_metrics(y, [3] * 5, CLASSES)
    assert constant["wa"] == pytest.approx(2 / 5)
    assert constant["ua"] == pytest.approx(1 / 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    m = classification_metrics(y_true, y_pred, CLASSES)
    assert m["ua"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert np.asarray(m["confusion_matrix"]).sum() == 200
    assert np.trace(np.asarray(m["confusion_matrix"])) / 200 == pytest.approx(m["wa"])


def test_ua_ignores_classes_absent_from_the_truth():
    # Class 3 never occurs in y_true: its recall is undefined, not zero.
    m = classification_metrics([0, 1, 2], [0, 1, 3], CLASSES)
    assert m["ua"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("y_true, y_pred, match", [
    ([0, 1], [0], "equal length"),
    ([], [], "empty"),
    ([0, 4], [0, 1], "outside"),
    ([0, 1], [0, -1], "outside"),
])
def test_metrics_reject_bad_input(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_pred, CLASSES)


def _utterances(sessions=5):
    return [Utterance(f"Ses{s:02d}{g}_{i}", f"/x/{s}{g}{i}.wav", CLASSES[i % 4], s, f"Ses{s:02d}{g}")
            for s in range(1, sessions + 1) for g in "FM" for i in range(6)]


@pytest.mark.parametrize("session", [1, 3, 5])
def test_loso_holds_out_one_session(session):
    utts = _utterances()
    split = make_split("loso", utts, session)
    assert {u.session for u in split.train} == {1, 2, 3, 4, 5} - {session}
    assert {u.session for u in split.test} == {session}
    assert split.valid == split.test  # the paper validates and tests on the held-out session
    assert len(split.train) + len(split.test) == len(utts)


def test_loso_speaker_separates_validation_and_test_speakers():
    utts = _utterances()
    split = make_split("loso-speaker", utts, 2)
    assert {u.speaker for u in split.valid} == {"Ses02F"}
    assert {u.speaker for u in split.test} == {"Ses02M"}
    assert not {u.utt_id for u in split.train} & {u.utt_id for u in split.valid + split.test}
    assert "valid_speaker=Ses02F" in split.describe()["protocol"]


def test_split_errors():
    utts = _utterances()
    with pytest.raises(ValueError, match="test session 9"):
        make_split("loso", utts, 9)
    with pytest.raises(ValueError, match="unknown split"):
        make_split("random", utts, 1)
    with pytest.raises(ValueError, match="valid_speaker"):
        leave_one_session_out(utts, 1, valid_speaker="Ses02F")
    with pytest.raises(ValueError, match="at least 2 sessions"):
        make_split("loso", _utterances(1), 1)
