"""Cross-validation result tables in the paper's layout (Tables 2-4): per fold, and mean ± std.

A table has one row per model (AP, MP, LPMN-K, LPMN-K-K') and one column per metric: WA, UA and
F1 for IEMOCAP-layout corpora, F1 and valence MSE for MER2023 (macro and weighted F1 both, since
the paper's "F1-score" does not say which: MER2023's baseline reports the weighted one). Means
and standard deviations are over the folds a row has finished; the std is the sample one
(ddof=1), None with a single fold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# metric key -> column header; values in [0, 1] print as percentages, MSE as is.
HEADERS = {"wa": "WA", "ua": "UA", "macro_f1": "F1 (macro)", "weighted_f1": "F1 (weighted)", "valence_mse": "MSE"}
PERCENT = ("wa", "ua", "macro_f1", "weighted_f1")
COLUMNS = {
    "iemocap": ("wa", "ua", "macro_f1", "weighted_f1"),
    "mer2023": ("macro_f1", "weighted_f1", "valence_mse"),
}


def table_columns(data: str) -> tuple[str, ...]:
    """The metric columns of corpus ``data`` (the synthetic corpus has IEMOCAP's)."""
    return COLUMNS["mer2023" if data == "mer2023" else "iemocap"]


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, sample std with ddof=1) of ``values``; (None, None) if empty, std None for one value."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def build_table(per_fold: Mapping[str, Mapping[str, Mapping[str, float]]], columns: Sequence[str],
                folds: Sequence[str]) -> dict:
    """JSON-able table from ``per_fold[row name][fold] = test metrics`` (rows in the given order).

    Each row: name, per_fold {fold: {column: value}} for the folds it has, folds_done, and mean
    and std per column over those folds.
    """
    unknown = [c for c in columns if c not in HEADERS]
    if unknown:
        raise ValueError(f"unknown table column(s) {unknown}; known: {sorted(HEADERS)}")
    rows = []
    for name, by_fold in per_fold.items():
        done = [f for f in folds if f in by_fold]
        row = {"name": name, "folds_done": len(done), "mean": {}, "std": {},
               "per_fold": {f: {c: by_fold[f][c] for c in columns} for f in done}}
        for c in columns:
            row["mean"][c], row["std"][c] = mean_std([by_fold[f][c] for f in done])
        rows.append(row)
    return {"columns": list(columns), "folds": list(folds), "rows": rows}


def _cell(column: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if column in PERCENT else f"{value:.4f}"


def format_markdown(table: dict) -> str:
    """The summary (mean ± std, in % except MSE) and the per-fold table, in Markdown."""
    cols, folds = table["columns"], table["folds"]
    head = "| model | " + " | ".join(HEADERS[c] for c in cols) + " | folds |"
    rule = "|---" * (len(cols) + 2) + "|"
    lines = [head, rule]
    for row in table["rows"]:
        cells = []
        for c in cols:
            mean, std = row["mean"][c], row["std"][c]
            cells.append(_cell(c, mean) + ("" if std is None else f" ± {_cell(c, std)}"))
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {row['folds_done']}/{len(folds)} |")
    lines += ["", "Per fold:", "", "| model | fold | " + " | ".join(HEADERS[c] for c in cols) + " |",
              "|---" * (len(cols) + 2) + "|"]
    for row in table["rows"]:
        for f, values in row["per_fold"].items():
            lines.append(f"| {row['name']} | {f} | " + " | ".join(_cell(c, values[c]) for c in cols) + " |")
    return "\n".join(lines)
