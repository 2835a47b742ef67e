"""Live training logs (metrics.csv, TensorBoard, train.log), provenance in result files, the run's model card."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import lpmn_fast.training.corpus as training_corpus
from lpmn_fast.provenance import provenance
from lpmn_fast.training import make_config, train
from lpmn_fast.training.logs import EpochLog, flatten, run_logging

TINY = dict(fbank_mel_bins=16, encoder_hidden=16, num_prototypes=8, top_k=4, tau=0.2, lr=1e-2, batch_size=4,
            epochs=3, probe_epochs=2, kmeans_frames=500, checkpoint_every=3, progress=False, test_session=3)
# Columns that depend on the wall clock, not on the training (seconds, and any rate or time the loop adds).
TIMING = re.compile(r"second|time|per_s|throughput")


@pytest.fixture
def use_corpus(corpus, monkeypatch):
    """train() reads the tiny corpus (and warns while loading it, as a real loader may)."""
    def load(config):
        warnings.warn("tiny corpus: 2 files skipped (test warning)", UserWarning)
        return corpus

    monkeypatch.setattr(training_corpus, "load_corpus", load)
    return corpus


def _config(root: Path, **fields):
    return make_config(**{**TINY, "cache_dir": str(root / "cache"), "run_dir": str(root / "run"), **fields})


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _without_timing(rows):
    return [{k: v for k, v in r.items() if not TIMING.search(k)} for r in rows]


def test_csv_rows_per_epoch_and_resume_appends_without_duplicates(tmp_path, use_corpus):
    with pytest.warns(UserWarning, match="test warning"):  # warnings still reach the caller
        full = train(_config(tmp_path / "a"))
    rows = _csv(tmp_path / "a" / "run" / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    for row, record in zip(rows, full["history"]):
        assert float(row["train_loss"]) == pytest.approx(record["train_loss"], rel=1e-12)
        assert float(row["valid/ua"]) == pytest.approx(record["valid"]["ua"], rel=1e-12)
        # lr: the optimizer's (a schedule may lower it, never above the configured one)
        assert 0 < float(row["lr"]) <= TINY["lr"] and float(row["seconds"]) >= 0 and row["restarts"] != ""

    # Stop after step 7 (mid epoch 2; the last checkpoint, step 6, has finished epoch 1) ...
    b = tmp_path / "b" / "run"
    with pytest.warns(UserWarning):
        train(_config(tmp_path / "b", stop_after_steps=7))
    assert [r["epoch"] for r in _csv(b / "metrics.csv")] == ["1"]
    # ... as if killed after logging epoch 2 but before its checkpoint: a row the checkpoint does not know.
    with (b / "metrics.csv").open("a") as f:
        f.write("2,0,0.01,1.0,8,99.0,99.0,99.0\n")
    with pytest.warns(UserWarning):
        train(_config(tmp_path / "b", resume=True))
    resumed = _csv(b / "metrics.csv")
    assert [r["epoch"] for r in resumed] == ["1", "2", "3"]
    assert _without_timing(resumed) == _without_timing(rows)  # the same numbers as the uninterrupted run


def test_train_log_holds_messages_and_warnings(tmp_path, use_corpus):
    with pytest.warns(UserWarning):
        train(_config(tmp_path, epochs=2, stop_after_steps=5))  # 4 steps per epoch: stops in epoch 2
    text = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 1: train loss" in text and "epoch 2: train loss" not in text
    assert "warning: tiny corpus: 2 files skipped (test warning)" in text
    with pytest.warns(UserWarning):
        train(_config(tmp_path, epochs=2, resume=True))  # appends
    text = (tmp_path / "run" / "train.log").read_text()
    assert text.count("epoch 1: train loss") == 1 and "epoch 2: train loss" in text
    assert text.count("test warning") == 2


def test_log_none_writes_no_epoch_file(tmp_path, use_corpus):
    with pytest.warns(UserWarning):
        train(_config(tmp_path, epochs=1, probe_epochs=0, log="none"))
    assert not (tmp_path / "run" / "metrics.csv").exists() and not (tmp_path / "run" / "tb").exists()
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_tensorboard_events_per_epoch_and_resume_purges_stale_ones(tmp_path, use_corpus):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install 'lpmn_fast[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with pytest.warns(UserWarning):
        full = train(_config(tmp_path / "a", log="tensorboard", probe_epochs=0))
    with pytest.warns(UserWarning):
        train(_config(tmp_path / "b", log="tensorboard", probe_epochs=0, stop_after_steps=7))
    # an event of epoch 2 written before the "kill", which the checkpoint does not know
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "b" / "run" / "tb")) as writer:
        writer.add_scalar("train_loss", 99.0, global_step=2)
    with pytest.warns(UserWarning):
        train(_config(tmp_path / "b", log="tensorboard", probe_epochs=0, resume=True))

    expected = [(i + 1, h["train_loss"]) for i, h in enumerate(full["history"])]
    for run in ("a", "b"):
        events = EventAccumulator(str(tmp_path / run / "run" / "tb")).Reload()
        assert "valid/ua" in events.Tags()["scalars"] and "lr" in events.Tags()["scalars"]
        got = [(e.step, e.value) for e in events.Scalars("train_loss")]
        assert [s for s, _ in got] == [1, 2, 3], run
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), run


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"--log tensorboard needs the tensorboard package.*--log csv"):
        EpochLog(tmp_path, "tensorboard")


def test_epoch_log_writes_every_numeric_key_even_new_ones(tmp_path):
    assert flatten({"a": 1, "b": {"c": 2.5, "d": [1, 2], "e": "x"}, "f": None, "g": True}) == {"a": 1, "b/c": 2.5}
    log = EpochLog(tmp_path, "csv")
    log.epoch({"epoch": 1, "train_loss": 0.5})
    log.epoch({"epoch": 2, "train_loss": 0.25, "padding_fraction": 0.125, "valid": {"ua": 0.75}}, restarts=3)
    rows = _csv(tmp_path / "metrics.csv")
    assert [(r["epoch"], r["train_loss"], r["padding_fraction"], r["valid/ua"]) for r in rows] == [
        ("1", "0.5", "", ""), ("2", "0.25", "0.125", "0.75")]
    assert rows[1]["restarts"] == "3"
    with pytest.raises(ValueError, match="needs an 'epoch'"):
        log.epoch({"train_loss": 1.0})
    with pytest.raises(ValueError, match="unknown log kind"):
        EpochLog(tmp_path, "wandb")
    # a later log of the same run keeps what the checkpoint finished and drops the rest, and a damaged row
    with (tmp_path / "metrics.csv").open("a") as f:
        f.write("0,x\n")
    assert [r["epoch"] for r in EpochLog(tmp_path, "csv", completed_epochs=1).rows] == [1.0]


def test_run_logging_restores_the_warning_hook(tmp_path):
    before = warnings.showwarning
    with run_logging(tmp_path, console=False):
        assert warnings.showwarning is not before
    assert warnings.showwarning is before
    assert not (tmp_path / "train.log").exists()  # nothing logged, no file


def test_metrics_and_card_record_provenance_and_the_runs_metrics(tmp_path, use_corpus):
    with pytest.warns(UserWarning):
        results = train(_config(tmp_path, epochs=2))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    prov = saved["provenance"]
    assert prov["lpmn_fast"] and prov["python"] == ".".join(map(str, sys.version_info[:3]))
    assert prov["libraries"]["torch"] == metadata.version("torch")
    assert prov["libraries"]["transformers"] == metadata.version("transformers")
    assert prov["device"] == "cpu" and prov["device_name"] and prov["precision"] == "fp32"  # auto on a CPU
    assert prov["kernel"] == {"asked": "auto", "used": "torch"} and prov["wall_seconds"] >= 0
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    if head.returncode == 0:  # tests run from a checkout (CI's clone is one)
        assert prov["git"]["commit"] == head.stdout.strip() and isinstance(prov["git"]["dirty"], bool)

    for folder, metrics in (("model", results["test"]), ("model-probe", results["probe"]["test"])):
        card = ModelCard.load(tmp_path / "run" / folder / "README.md")
        values = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
        assert values[("accuracy", None)] == pytest.approx(metrics["wa"], abs=1e-6)
        assert values[("recall", "macro")] == pytest.approx(metrics["ua"], abs=1e-6)
        assert f"| test | {100 * metrics['wa']:.2f} % | {100 * metrics['ua']:.2f} % |" in card.text
        assert prov["lpmn_fast"] in card.text and "device " + prov["device_name"] in card.text
        assert (tmp_path / "run" / folder / "confusion.png").is_file()
        matrix = metrics["confusion_matrix"]
        assert "| neutral | " + " | ".join(map(str, matrix[0])) + " |" in card.text


def test_provenance_imports_neither_triton_nor_transformers():
    # What ``import lpmn_fast`` itself imports is its business (issue 16 makes it lazy); provenance adds nothing.
    script = ("import sys, lpmn_fast\nbefore = set(sys.modules)\nfrom lpmn_fast.provenance import provenance\n"
              "p = provenance()\nnew = set(sys.modules) - before\n"
              "assert not {m for m in new if m.split('.')[0] in ('triton', 'transformers', 'torch')}, new\n"
              "assert p['libraries']['triton'] is None or p['libraries']['triton']\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert provenance(seconds=1.26)["wall_seconds"] == 1.3


def test_cli_summary_of_several_heads_records_provenance(tmp_path, use_corpus):
    from lpmn_fast.train import main as cli_main

    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "progress"]
    with pytest.warns(UserWarning):
        assert cli_main(args + ["--no-progress", "--epochs", "1", "--head", "ap,mp", "--cache-dir",
                                str(tmp_path / "cache"), "--run-dir", str(tmp_path / "runs")]) == 0
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert [s["head"] for s in summary] == ["ap", "mp"]
    assert all(s["provenance"]["libraries"]["torch"] == metadata.version("torch") for s in summary)
    assert all(s["provenance"]["kernel"] is None for s in summary)  # pooling heads use no prototype kernel
