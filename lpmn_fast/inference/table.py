"""The output file of ``lpmn-predict --output``: one row per input, CSV or JSON Lines, written atomically.

Rows are kept in memory and the whole file is rewritten atomically (lpmn_fast.data.atomic) once the
first batch's rows are in (``first_rows``), then whenever ``flush_seconds`` have passed or
``flush_rows`` new rows have come since the last write, and at the end, so the file on disk is always
complete: an interrupted run leaves every row finished before the last write, and ``resume`` reads
them back and skips their inputs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

from ..data.atomic import write_text_atomic

OUTPUT_FORMATS = (".csv", ".jsonl")
NAME_COLUMNS = ("file", "id", "start", "end")
PROBABILITY_PREFIX = "prob_"


def row_key(row: dict) -> str:
    """The identity of an input in an output row (matches lpmn_fast.inference.inputs.Item.key)."""
    return "|".join("" if row.get(k) in (None, "") else str(row[k]) for k in NAME_COLUMNS)


def flatten(record: dict) -> dict:
    """A lpmn-predict record -> one flat row: probabilities become prob_<class> columns."""
    row = {k: v for k, v in record.items() if k != "probabilities"}
    for c, p in (record.get("probabilities") or {}).items():
        row[f"{PROBABILITY_PREFIX}{c}"] = p
    return row


class OutputTable:
    """Rows of ``path`` (.csv or .jsonl) for a model with ``classes``.

    resume: read the rows already in ``path``; ``done`` holds the keys of those without an error
    (failed inputs are labelled again, replacing their row). An existing ``path`` without resume
    or overwrite raises FileExistsError; a file made by a model with other classes, ValueError.
    """

    def __init__(self, path: str | Path, classes: list[str], *, resume: bool = False, overwrite: bool = False,
                 flush_seconds: float = 30.0, flush_rows: int = 1000, first_rows: int = 1):
        self.path = Path(path)
        if self.path.suffix.lower() not in OUTPUT_FORMATS:
            raise ValueError(f"--output {self.path}: name it .csv or .jsonl")
        self.classes = list(classes)
        self.rows: dict[str, dict] = {}
        self.flush_seconds = flush_seconds
        self.flush_rows = max(1, flush_rows)
        self.first_rows = max(1, first_rows)
        self.written = False  # not yet by this run: the first write comes after the first batch
        self.unwritten = 0  # rows added since the last write
        self.last_write = time.monotonic()
        if self.path.exists():
            if resume:
                self.rows = {row_key(r): r for r in self._read()}
            elif not overwrite:
                raise FileExistsError(f"{self.path} exists; pass --resume to continue it or --overwrite to replace it")
        self.done = {k for k, r in self.rows.items() if not r.get("error")}

    def _read(self) -> list[dict]:
        text = self.path.read_text(encoding="utf-8")
        if self.path.suffix.lower() == ".jsonl":
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{self.path}:{n}: not valid JSON ({e.msg}); cannot resume it") from None
        else:
            rows = list(csv.DictReader(io.StringIO(text)))
        for n, row in enumerate(rows, 1):
            if "file" not in row:
                raise ValueError(f"{self.path}: row {n} has no 'file' column; not a lpmn-predict output")
        found = {k[len(PROBABILITY_PREFIX):] for r in rows for k in r if k.startswith(PROBABILITY_PREFIX)}
        if found and found != set(self.classes):
            raise ValueError(f"{self.path} holds probabilities of classes {sorted(found)}, this model predicts "
                             f"{sorted(self.classes)}; write to another file")
        return rows

    def add(self, item, record: dict) -> None:
        """Add (or replace) the row of ``item``; rewrite the file when the first ``first_rows`` rows
        are in, then after ``flush_rows`` more rows or ``flush_seconds``, whichever comes first."""
        self.rows[item.key] = flatten(record)
        self.unwritten += 1
        if (self.unwritten >= (self.flush_rows if self.written else self.first_rows)
                or time.monotonic() - self.last_write >= self.flush_seconds):
            self.write()

    def columns(self) -> list[str]:
        present = {k for r in self.rows.values() for k in r if r.get(k) not in (None, "")}
        names = [c for c in NAME_COLUMNS if c in present or c == "file"]
        names += ["label"] + [f"{PROBABILITY_PREFIX}{c}" for c in self.classes]
        names += [c for c in ("valence", "evidence_start_s", "evidence_end_s") if c in present]
        names += ["duration_s", "num_frames"]
        names += sorted(present - set(names) - {"error"}) + ["error"]
        return names

    def write(self) -> None:
        """Rewrite the whole file atomically."""
        if self.path.suffix.lower() == ".jsonl":
            text = "".join(json.dumps(r) + "\n" for r in self.rows.values())
        else:
            out = io.StringIO()
            writer = csv.DictWriter(out, self.columns(), lineterminator="\n", extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in r.items()} for r in self.rows.values())
            text = out.getvalue()
        write_text_atomic(self.path, text)
        self.written, self.unwritten = True, 0
        self.last_write = time.monotonic()


def _cell(value) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value
