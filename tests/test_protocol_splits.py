"""Cross-validation folds: leave-one-session-out on a fake IEMOCAP tree, stratified k-fold on MER2023-like
utterances. Folds partition the data, never leak a session or an utterance into their own test fold,
and keep the class proportions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold
from training_fixtures import write_fake_iemocap

from lpmn_fast.data.corpus import MER2023_CLASSES, Utterance
from lpmn_fast.data.iemocap import load_iemocap
from lpmn_fast.protocol import SPLITS, fold_ids, make_split, stratified_kfold


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
    root = write_fake_iemocap(tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release", sessions=5,
                              per_speaker=5)
    return load_iemocap(root, expected_counts=None).utterances


def _mer(counts=(30, 12, 20, 9, 7, 5)):
    """Unbalanced MER2023-like utterances: counts[i] of class i, ids in a shuffled order."""
    labels = [c for c, n in zip(MER2023_CLASSES, counts) for _ in range(n)]
    order = np.random.default_rng(0).permutation(len(labels))
    return [Utterance(f"sample_{i:08d}", f"/x/{i}.wav", labels[j], valence=0.0) for i, j in enumerate(order)]


def _ids(utts):
    return {u.utt_id for u in utts}


@pytest.mark.parametrize("split", ["loso", "loso-speaker"])
def test_session_folds_never_leak_the_held_out_session(iemocap, split):
    folds = fold_ids(split, iemocap)
    assert folds == [1, 2, 3, 4, 5]
    tested = Counter()
    for fold in folds:
        s = make_split(split, iemocap, fold)
        assert {u.session for u in s.test} == {fold} and {u.session for u in s.valid} == {fold}
        assert fold not in {u.session for u in s.train}
        assert not _ids(s.train) & _ids(s.valid + s.test)
        assert _ids(s.train) | _ids(s.valid) | _ids(s.test) == _ids(iemocap)
        if split == "loso-speaker":  # validation and test speakers differ, both from the held-out session
            assert not {u.speaker for u in s.valid} & {u.speaker for u in s.test}
            assert not _ids(s.valid) & _ids(s.test)
        else:
            assert s.valid == s.test  # the paper validates and tests on the held-out session
        assert f"test_session={fold}" in s.describe()["protocol"]
        tested.update(_ids(s.valid) | _ids(s.test))  # the held-out part (a set: loso's valid is its test)
    assert set(tested) == _ids(iemocap) and set(tested.values()) == {1}  # held-out parts partition the corpus


@pytest.mark.parametrize("folds, seed", [(5, 0), (5, 3), (3, 1)])
def test_kfold_partitions_without_leaks_and_stratifies(folds, seed):
    utts = _mer()
    labels = np.array([u.label for u in utts])
    tested = Counter()
    per_fold_counts = []
    for fold in fold_ids("kfold", utts, folds=folds):
        s = make_split("kfold", utts, fold, folds=folds, seed=seed, valid_fraction=0.1)
        train, valid, test = _ids(s.train), _ids(s.valid), _ids(s.test)
        assert not train & valid and not train & test and not valid & test
        assert train | valid | test == _ids(utts)
        # validation: 10% of each class of the training folds (rounded, at least one), so every class
        # is in both the training and the validation part
        held = Counter(u.label for u in s.valid)
        rest_counts = Counter(u.label for u in s.train + s.valid)
        for c in MER2023_CLASSES:
            assert held[c] >= 1 and (held[c] == 1 or abs(held[c] - 0.1 * rest_counts[c]) <= 0.5)
        assert {u.label for u in s.train} == set(MER2023_CLASSES)
        tested.update(test)
        per_fold_counts.append(Counter(u.label for u in s.test))
        assert s.describe()["protocol"].startswith(f"kfold(fold={fold}/{folds}, seed={seed}")
    assert set(tested) == _ids(utts) and set(tested.values()) == {1}
    for c in MER2023_CLASSES:  # stratified: a class's count differs by at most one between test folds
        counts = [fc[c] for fc in per_fold_counts]
        assert max(counts) - min(counts) <= 1 and sum(counts) == (labels == c).sum()


def test_kfold_test_folds_are_scikit_learns_and_seeded():
    utts = _mer()
    labels = [u.label for u in utts]
    expected = list(StratifiedKFold(5, shuffle=True, random_state=7).split(np.zeros(len(utts)), labels))
    for fold, (_, test_idx) in enumerate(expected, 1):
        assert _ids(stratified_kfold(utts, fold, seed=7).test) == {utts[i].utt_id for i in test_idx}
    again = stratified_kfold(utts, 2, seed=7)
    assert again == stratified_kfold(utts, 2, seed=7)  # same seed, same fold (validation part included)
    assert _ids(again.test) != _ids(stratified_kfold(utts, 2, seed=8).test)


@pytest.mark.parametrize("kwargs, match", [
    (dict(fold=0), r"fold must be in \[1, 5\]"),
    (dict(fold=6), r"fold must be in \[1, 5\]"),
    (dict(fold=1, folds=1), "at least 2 folds"),
    (dict(fold=1, valid_fraction=1.0), r"valid_fraction must be in \(0, 1\)"),
])
def test_kfold_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        stratified_kfold(_mer(), **kwargs)


def test_kfold_names_what_is_too_small():
    with pytest.raises(ValueError, match=r"at least 5 utterances per class; classes \{'surprise': 3\}"):
        stratified_kfold(_mer((10, 10, 10, 10, 10, 3)), 1)
    with pytest.raises(ValueError, match="'surprise' has 1 utterance"):
        stratified_kfold(_mer((10, 10, 10, 10, 10, 2)), 1, folds=2)
    twice = _mer()
    twice[1] = Utterance(twice[0].utt_id, "/x/dup.wav", twice[1].label)
    with pytest.raises(ValueError, match="unique utterance ids"):
        stratified_kfold(twice, 1)


def test_unknown_split_is_named(iemocap):
    assert "kfold" in SPLITS
    with pytest.raises(ValueError, match="unknown split 'random'"):
        fold_ids("random", iemocap)
    with pytest.raises(ValueError, match="unknown split 'random'"):
        make_split("random", iemocap, 1)
