"""Live logs of a training run: per-epoch scalars (metrics.csv, TensorBoard) and train.log.

``EpochLog`` writes one row per finished epoch, as the epoch ends, so a running or interrupted
job can be inspected: ``RUN_DIR/metrics.csv`` (``--log csv``, the default) or TensorBoard event
files under ``RUN_DIR/tb/`` (``--log tensorboard``; needs the optional ``tensorboard`` package).
Every numeric entry of the epoch record is written, nested ones as ``valid/wa``, so keys that the
loop adds later (learning rate, padding fraction, ...) appear without changes here. On
``--resume`` the rows of epochs the checkpoint has not finished are dropped before new ones are
added (CSV rewritten atomically; TensorBoard's ``purge_step``), so no epoch appears twice.

``run_logging`` sends the ``lpmn_fast`` loggers' messages and every warning raised during a run
to ``RUN_DIR/train.log`` as well as to the console.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from ..cli import one_line
from ..data.atomic import write_text_atomic

LOG_KINDS = ("csv", "tensorboard", "none")
CSV_NAME = "metrics.csv"
TB_DIR = "tb"
TRAIN_LOG = "train.log"

log = logging.getLogger("lpmn_fast.training")


def flatten(record: Mapping, prefix: str = "") -> dict[str, float]:
    """The numeric scalars of a (nested) record as {"a/b": value}; lists, strings, None and bools are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


class EpochLog:
    """Per-epoch scalars of one run, written as each epoch ends.

    kind: one of LOG_KINDS. completed_epochs: epochs the run (or the checkpoint it resumes) has
    finished; logged rows of later epochs are discarded. enabled: False on the ranks of a
    distributed run other than rank 0 (nothing is written).
    """

    def __init__(self, run_dir: str | os.PathLike, kind: str = "csv", completed_epochs: int = 0,
                 enabled: bool = True):
        if kind not in LOG_KINDS:
            raise ValueError(f"unknown log kind {kind!r}; choose one of {LOG_KINDS}")
        self.run_dir = Path(run_dir)
        self.kind = kind if enabled else "none"
        self.rows: list[dict[str, float]] = []
        self.columns: list[str] = []
        self.writer = None
        self._mark = time.perf_counter()
        if self.kind == "csv":
            self._read_csv(completed_epochs)
        elif self.kind == "tensorboard":
            self.writer = _summary_writer(self.run_dir / TB_DIR, completed_epochs)
        if enabled:
            where = {"csv": self.run_dir / CSV_NAME, "tensorboard": self.run_dir / TB_DIR}.get(self.kind)
            log.info(f"run {self.run_dir}" + (f": resuming after epoch {completed_epochs}" if completed_epochs else "")
                     + (f"; per-epoch log in {where}" if where else ""))

    def _read_csv(self, completed_epochs: int) -> None:
        path = self.run_dir / CSV_NAME
        if not path.is_file():
            return
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            self.columns = list(reader.fieldnames or [])
            for row in reader:
                try:
                    values = {k: float(v) for k, v in row.items() if k and v not in (None, "")}
                except (TypeError, ValueError):
                    continue  # a damaged row (e.g. cut short by a crash): dropped, the rest is kept
                if values.get("epoch", math.inf) <= completed_epochs:
                    self.rows.append(values)

    def epoch(self, record: Mapping, **extra) -> dict[str, float]:
        """Log the record of the epoch that just ended (must hold ``epoch``). ``extra`` scalars
        (e.g. cumulative ``restarts``, ``lr``) are added where the record has no such key;
        ``seconds`` (wall time since the previous epoch ended, or since the log was opened) is added
        too. Returns the row written."""
        now = time.perf_counter()
        row = flatten({**extra, "seconds": round(now - self._mark, 3), **record})
        self._mark = now
        if "epoch" not in row:
            raise ValueError("an epoch record needs an 'epoch' number")
        if self.kind == "csv":
            self.rows = [r for r in self.rows if r.get("epoch") != row["epoch"]] + [row]
            self.columns += [k for k in row if k not in self.columns]
            self._write_csv()
        elif self.kind == "tensorboard":
            step = int(row["epoch"])
            for key, value in row.items():
                if key != "epoch" and math.isfinite(value):
                    self.writer.add_scalar(key, value, global_step=step)
            self.writer.flush()  # visible now, not at the writer's next periodic flush
        return row

    def _write_csv(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["epoch"] + [c for c in self.columns if c != "epoch"],
                                lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
        write_text_atomic(self.run_dir / CSV_NAME, text.getvalue())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _cell(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2 ** 53 else repr(float(value))


def _summary_writer(directory: Path, completed_epochs: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "--log tensorboard needs the tensorboard package, which is not installed: "
            "pip install 'lpmn_fast[tensorboard]' (or pip install tensorboard), or use --log csv. "
            f"Cause: {error}") from error
    # purge_step: events of epochs after the checkpoint (written before a crash) are dropped on resume.
    return SummaryWriter(log_dir=str(directory), purge_step=completed_epochs + 1 if completed_epochs else None)


class _TqdmHandler(logging.Handler):
    """Console lines (stderr) through tqdm.write, so they do not break a running progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never break training
            self.handleError(record)


@contextmanager
def run_logging(run_dir: str | os.PathLike, console: bool = True, enabled: bool = True) -> Iterator[None]:
    """During the block, ``lpmn_fast`` log messages (INFO and up) and all warnings are appended to
    ``run_dir/train.log``; with ``console``, the messages are also printed (warnings are shown on
    the console as usual either way). ``enabled=False`` (ranks > 0) does nothing."""
    if not enabled:
        yield
        return
    package = logging.getLogger("lpmn_fast")
    file_handler = _FileHandler(Path(run_dir) / TRAIN_LOG)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers = [file_handler]
    if console:
        console_handler = _TqdmHandler()
        console_handler.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(console_handler)
    previous_level, previous_show = package.level, warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        # Into train.log directly (not through a logger, which could print it a second time) ...
        record = logging.makeLogRecord({
            "name": "py.warnings", "levelno": logging.WARNING, "levelname": "WARNING",
            "msg": one_line(message, category)})
        file_handler.handle(record)
        # ... then wherever warnings went before (the console, or pytest's recorder).
        previous_show(message, category, filename, lineno, file, line)

    for handler in handlers:
        package.addHandler(handler)
    if package.level == logging.NOTSET or package.level > logging.INFO:
        package.setLevel(logging.INFO)
    warnings.showwarning = show
    try:
        yield
    finally:
        if warnings.showwarning is show:
            warnings.showwarning = previous_show
        for handler in handlers:
            package.removeHandler(handler)
            handler.close()
        package.setLevel(previous_level)


class _FileHandler(logging.FileHandler):
    """Appending, created on the first message, with its folder."""

    def __init__(self, path: Path):
        super().__init__(path, mode="a", encoding="utf-8", delay=True)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


__all__ = ["CSV_NAME", "LOG_KINDS", "TB_DIR", "TRAIN_LOG", "EpochLog", "flatten", "run_logging"]
