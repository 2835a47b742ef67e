"""Valence MSE against scikit-learn and by hand; results tables: paper layout, mean ± std from per-fold values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, mean_squared_error

from lpmn_fast.protocol import classification_metrics, valence_metrics
from lpmn_fast.protocol.table import build_table, format_markdown, mean_std, table_columns


def test_valence_mse_by_hand_and_against_sklearn():
    assert valence_metrics([0.0, 1.0, -2.0], [1.0, 1.0, 0.0]) == {"valence_mse": pytest.approx((1 + 0 + 4) / 3)}
    rng = np.random.default_rng(0)
    truth, pred = rng.uniform(-5, 5, 50), rng.uniform(-5, 5, 50)
    assert valence_metrics(truth, pred)["valence_mse"] == pytest.approx(mean_squared_error(truth, pred))


@pytest.mark.parametrize("truth, pred, match", [
    ([1.0], [1.0, 2.0], "equal length"),
    ([], [], "empty"),
    ([1.0, float("nan")], [1.0, 2.0], "finite"),
    ([1.0, 2.0], [float("inf"), 2.0], "finite"),
])
def test_valence_mse_rejects_bad_input(truth, pred, match):
    with pytest.raises(ValueError, match=match):
        valence_metrics(truth, pred)


def test_six_class_metrics_match_sklearn():
    # MER2023's six classes, a known confusion: truth i predicted as (i + 1) % 6 for every third utterance
    classes = ["neutral", "anger", "happiness", "sadness", "worry", "surprise"]
    y_true = np.repeat(np.arange(6), 6)
    y_pred = np.where(np.arange(36) % 3 == 0, (y_true + 1) % 6, y_true)
    m = classification_metrics(y_true, y_pred, classes)
    cm = np.asarray(m["confusion_matrix"])
    assert cm.trace() == 24 and (cm.sum(0) == 6).all() and (cm.sum(1) == 6).all()
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert m["wa"] == pytest.approx(24 / 36) and m["ua"] == pytest.approx(4 / 6)


def test_mean_std():
    assert mean_std([]) == (None, None)
    assert mean_std([0.5]) == (0.5, None)
    mean, std = mean_std([0.2, 0.4, 0.9])
    assert mean == pytest.approx(0.5) and std == pytest.approx(np.sqrt(((0.3 ** 2) + (0.1 ** 2) + (0.4 ** 2)) / 2))


def _per_fold(rng, rows, folds, columns):
    return {r: {f: {c: float(rng.uniform(0.3, 0.9)) for c in columns} for f in folds} for r in rows}


def test_table_rows_columns_and_mean_std_from_the_folds():
    rng = np.random.default_rng(1)
    columns, folds = table_columns("iemocap"), ["1", "2", "3", "4", "5"]
    rows = ["AP", "MP", "LPMN-1024", "LPMN-1024-60"]
    per_fold = _per_fold(rng, rows, folds, columns + ("loss",))
    del per_fold["MP"]["4"]  # a row still running: its mean covers the folds it has
    table = build_table(per_fold, columns, folds)
    assert table["columns"] == ["wa", "ua", "macro_f1", "weighted_f1"] and [r["name"] for r in table["rows"]] == rows
    for row in table["rows"]:
        done = [f for f in folds if f in per_fold[row["name"]]]
        assert row["folds_done"] == len(done) and list(row["per_fold"]) == done
        for c in columns:
            values = np.array([per_fold[row["name"]][f][c] for f in done])
            assert row["mean"][c] == pytest.approx(values.mean())
            assert row["std"][c] == pytest.approx(values.std(ddof=1))
            assert "loss" not in row["per_fold"][done[0]]
    text = format_markdown(table)
    assert text.splitlines()[0] == "| model | WA | UA | F1 (macro) | F1 (weighted) | folds |"
    ap = table["rows"][0]
    assert f"| AP | {100 * ap['mean']['wa']:.2f} ± {100 * ap['std']['wa']:.2f} |" in text
    assert "| 4/5 |" in text and "| MP | 5 |" in text and "| MP | 4 |" not in text


def test_mer2023_table_has_f1_and_mse():
    rng = np.random.default_rng(2)
    columns = table_columns("mer2023")
    assert columns == ("macro_f1", "weighted_f1", "valence_mse")
    per_fold = _per_fold(rng, ["AP", "LPMN-8"], ["1", "2"], columns)
    table = build_table(per_fold, columns, ["1", "2"])
    text = format_markdown(table)
    assert text.splitlines()[0] == "| model | F1 (macro) | F1 (weighted) | MSE | folds |"
    mse = [per_fold["AP"][f]["valence_mse"] for f in ("1", "2")]
    assert f"{np.mean(mse):.4f} ± {np.std(mse, ddof=1):.4f}" in text  # MSE as is, not in %
    with pytest.raises(ValueError, match="unknown table column"):
        build_table(per_fold, ["mse"], ["1"])
