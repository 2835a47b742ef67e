"""Cross-validation result tables in the paper's layout (Tables 2-4): per fold, and mean ± std.

A table has one row per model (AP, MP, LPMN-K, LPMN-K-K') and one column per metric: WA, UA and
F1 for IEMOCAP-layout corpora, F1 and valence MSE for MER2023 (macro and weighted F1 both, since
the paper's "F1-score" does not say which: MER2023's baseline reports the weighted one). Means
and standard deviations are over the folds a row has finished; the std is the sample one
(ddof=1), None with a single fold.

With several training seeds (:func:`build_seed_table`), the mean ± std is over every (fold, seed)
run, and each row also gives the per-seed results (mean ± std over folds) and the spread over
seeds: the std, min and max of the per-seed means, over the seeds that finished every fold.
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


def build_seed_table(per_seed: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]],
                     columns: Sequence[str], folds: Sequence[str], seeds: Sequence[str]) -> dict:
    """JSON-able table from ``per_seed[row name][seed][fold] = test metrics`` (several training seeds).

    Each row: name, runs_done (= folds_done, counted over the seeds), mean and std per column over
    all (fold, seed) runs; per_seed {seed: {folds_done, mean, std, per_fold}} as :func:`build_table`'s
    rows; seed_spread {std, min, max} per column of the per-seed means, over the seeds with every fold
    done (``seeds_complete``).
    """
    rows = []
    for name, by_seed in per_seed.items():
        runs = [by_seed[s][f] for s in seeds for f in folds if f in by_seed.get(s, {})]
        per = {s: build_table({name: by_seed.get(s, {})}, columns, folds)["rows"][0] for s in seeds}
        complete = [s for s in seeds if per[s]["folds_done"] == len(folds)]
        row = {"name": name, "runs_done": len(runs), "folds_done": len(runs), "mean": {}, "std": {},
               "per_seed": {s: {k: per[s][k] for k in ("folds_done", "mean", "std", "per_fold")} for s in seeds},
               "seeds_complete": complete, "seed_spread": {"std": {}, "min": {}, "max": {}}}
        for c in columns:
            row["mean"][c], row["std"][c] = mean_std([r[c] for r in runs])
            means = [per[s]["mean"][c] for s in complete]
            row["seed_spread"]["std"][c] = mean_std(means)[1]
            row["seed_spread"]["min"][c] = min(means) if means else None
            row["seed_spread"]["max"][c] = max(means) if means else None
        rows.append(row)
    return {"columns": list(columns), "folds": list(folds), "seeds": list(seeds), "rows": rows}


def _cell(column: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if column in PERCENT else f"{value:.4f}"


def _mean_std_cell(column: str, mean: float | None, std: float | None) -> str:
    return _cell(column, mean) + ("" if std is None else f" ± {_cell(column, std)}")


def format_markdown(table: dict) -> str:
    """The summary (mean ± std, in % except MSE) and the per-fold table, in Markdown (with several
    seeds: also the spread over seeds and the per-seed table)."""
    if table.get("seeds"):
        return _format_seed_markdown(table)
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


def _format_seed_markdown(table: dict) -> str:
    cols, folds, seeds = table["columns"], table["folds"], table["seeds"]
    names = " | ".join(HEADERS[c] for c in cols)
    total = len(folds) * len(seeds)
    lines = [f"Mean ± std over all {len(folds)} folds x {len(seeds)} seeds:", "", f"| model | {names} | runs |",
             "|---" * (len(cols) + 2) + "|"]
    for row in table["rows"]:
        cells = " | ".join(_mean_std_cell(c, row["mean"][c], row["std"][c]) for c in cols)
        lines.append(f"| {row['name']} | {cells} | {row['runs_done']}/{total} |")
    lines += ["", "Spread over seeds: std (min–max) of the per-seed means over folds, seeds with every fold done:",
              "",
              f"| model | {names} | seeds |", "|---" * (len(cols) + 2) + "|"]
    for row in table["rows"]:
        spread = row["seed_spread"]
        cells = " | ".join(_cell(c, spread["std"][c])
                           + (f" ({_cell(c, spread['min'][c])}–{_cell(c, spread['max'][c])})"
                              if spread["min"][c] is not None else "") for c in cols)
        lines.append(f"| {row['name']} | {cells} | {len(row['seeds_complete'])}/{len(seeds)} |")
    lines += ["", "Per seed (mean ± std over folds):", "", f"| model | seed | {names} | folds |",
              "|---" * (len(cols) + 3) + "|"]
    for row in table["rows"]:
        for seed, per in row["per_seed"].items():
            cells = " | ".join(_mean_std_cell(c, per["mean"][c], per["std"][c]) for c in cols)
            lines.append(f"| {row['name']} | {seed} | {cells} | {per['folds_done']}/{len(folds)} |")
    lines += ["", "Per fold:", "", f"| model | seed | fold | {names} |", "|---" * (len(cols) + 3) + "|"]
    for row in table["rows"]:
        for seed, per in row["per_seed"].items():
            for f, values in per["per_fold"].items():
                cells = " | ".join(_cell(c, values[c]) for c in cols)
                lines.append(f"| {row['name']} | {seed} | {f} | {cells} |")
    return "\n".join(lines)
