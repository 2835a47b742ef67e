"""lpmn-experiment on tiny corpora: the paper's table from per-fold runs, resumption fold by fold, K' probes
from one trained LPMN, the IEMOCAP count check, MER2023's F1/MSE table, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from training_fixtures import write_fake_iemocap, write_fake_mer2023

import lpmn_fast.experiment as experiment
import lpmn_fast.training.loop as loop
from lpmn_fast.data.iemocap import RELEASE_COUNTS
from lpmn_fast.data.problems import CorpusWarning
from lpmn_fast.training import make_config
from lpmn_fast.training.probe import probe_trained_run

FOLDS = ["1", "2"]
ROWS = ["AP", "MP", "LPMN-8", "LPMN-8-2", "LPMN-8-4"]


def _common(cache: Path) -> list[str]:
    """Tiny settings: 16-channel encoder, K = 8, one epoch, checkpoints every 2 steps."""
    return ["--cache-dir", str(cache), "--epochs", "1", "--fbank-mel-bins", "16", "--encoder-hidden", "16",
            "--batch-size", "8", "--tau", "0.2", "--lr", "0.01", "--kmeans-frames", "500", "--probe-epochs", "2",
            "--checkpoint-every", "2", "--no-progress", "--k", "8"]


def _synthetic(cache: Path) -> list[str]:
    return ["--data", "synthetic", "--synthetic-utterances-per-speaker", "4", "--split", "loso",
            "--fold", ",".join(FOLDS), "--k-prime", "2,4,16"] + _common(cache)


class Spy:
    """Counts calls of a function and passes them through."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append(args)
        return self.fn(*args, **kwargs)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # synthetic corpus and features, shared by the tests


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache):
    """One complete synthetic experiment: (out dir, train() calls, probe calls, stdout)."""
    out = tmp_path_factory.mktemp("experiment") / "out"
    mp = pytest.MonkeyPatch()
    trains, probes = Spy(loop.train), Spy(experiment.probe_trained_run)
    mp.setattr(loop, "train", trains)
    mp.setattr(experiment, "probe_trained_run", probes)
    try:
        assert experiment.main(_synthetic(cache) + ["--out", str(out)]) == 0
    finally:
        mp.undo()
    return out, trains.calls, probes.calls


def _run_metrics(out: Path, fold: str, name: str) -> dict:
    if name in ("AP", "MP"):
        return json.loads((out / f"fold-{fold}" / name.lower() / "metrics.json").read_text())
    k, *kp = name.split("-")[1:]
    file = f"probe-K{kp[0]}.json" if kp else "metrics.json"
    return json.loads((out / f"fold-{fold}" / f"lpmn-K{k}" / file).read_text())


def test_table_in_the_paper_layout_with_mean_and_std_from_the_folds(finished):
    out, _, _ = finished
    results = json.loads((out / "results.json").read_text())
    table = results["table"]
    assert results["complete"] and results["protocol"]["split"] == "loso" and results["protocol"]["folds"] == [1, 2]
    assert table["columns"] == ["wa", "ua", "macro_f1", "weighted_f1"] and table["folds"] == FOLDS
    assert [r["name"] for r in table["rows"]] == ROWS
    assert results["skipped"] == ["LPMN-8-16: K' > K"]
    for row in table["rows"]:
        runs = {f: _run_metrics(out, f, row["name"]) for f in FOLDS}
        for f, run in runs.items():
            assert run["protocol"]["protocol"] == f"loso(test_session={f})"  # every results file names it
        for c in table["columns"]:
            values = np.array([runs[f]["test"][c] for f in FOLDS])
            assert [row["per_fold"][f][c] for f in FOLDS] == values.tolist()
            assert row["mean"][c] == pytest.approx(values.mean())
            assert row["std"][c] == pytest.approx(values.std(ddof=1))
    text = (out / "results.md").read_text()
    assert "leave-one-session-out; validation and test on the held-out session" in text
    lpmn = table["rows"][2]
    assert (f"| LPMN-8 | {100 * lpmn['mean']['wa']:.2f} ± {100 * lpmn['std']['wa']:.2f} | "
            f"{100 * lpmn['mean']['ua']:.2f} ± {100 * lpmn['std']['ua']:.2f} |") in text


def test_k_primes_probe_one_trained_lpmn(finished):
    _, trains, probes = finished
    runs = sorted((c[0].head, c[0].test_session) for c in trains)
    assert runs == sorted((h, f) for h in ("ap", "mp", "lpmn") for f in (1, 2))  # one LPMN per fold for all K'
    assert all(c[0].num_prototypes == 8 and c[0].probe_epochs == 0 for c in trains if c[0].head == "lpmn")
    assert [(Path(c[0]).parent.name, list(c[1])) for c in probes] == [("fold-1", [2, 4]), ("fold-2", [2, 4])]


def test_probe_of_a_trained_run_equals_the_probe_inside_train(tmp_path, finished, cache):
    fields = dict(data="synthetic", synthetic_utterances_per_speaker=4, cache_dir=str(cache), epochs=1,
                  fbank_mel_bins=16, encoder_hidden=16, batch_size=8, tau=0.2, lr=0.01, kmeans_frames=500,
                  num_prototypes=8, top_k=4, probe_epochs=2, progress=False, test_session=2,
                  run_dir=str(tmp_path / "run"))
    inside = loop.train(make_config(**fields))["probe"]
    [(k, outside)] = list(probe_trained_run(tmp_path / "run", [4]))
    assert k == 4 and outside["name"] == inside["name"] == "LPMN-8-4"
    for key in ("selected", "best_epoch", "valid", "test"):
        assert outside[key] == inside[key], key


def test_rerun_skips_finished_runs_and_redoes_only_what_is_missing(tmp_path, finished, cache, monkeypatch, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    before = json.loads((out / "results.json").read_text())
    trains, probes = Spy(loop.train), Spy(experiment.probe_trained_run)
    monkeypatch.setattr(loop, "train", trains)
    monkeypatch.setattr(experiment, "probe_trained_run", probes)
    assert experiment.main(_synthetic(cache) + ["--out", str(out)]) == 0
    assert trains.calls == [] and probes.calls == []
    assert json.loads((out / "results.json").read_text())["table"] == before["table"]
    assert "finished earlier" in capsys.readouterr().err

    (out / "fold-2" / "mp" / "metrics.json").unlink()  # its checkpoints remain: resumed, not retrained
    (out / "fold-1" / "lpmn-K8" / "probe-K2.json").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("fold-*/*/metrics.json")}
    assert experiment.main(_synthetic(cache) + ["--out", str(out)]) == 0
    assert [(c[0].head, c[0].test_session, c[0].resume) for c in trains.calls] == [("mp", 2, True)]
    assert [(Path(c[0]).name, list(c[1])) for c in probes.calls] == [("lpmn-K8", [2])]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished runs untouched
    after = json.loads((out / "results.json").read_text())
    assert after["table"] == before["table"]  # the same numbers again


def test_interrupted_fold_resumes_from_its_checkpoint(tmp_path, finished, cache, capsys):
    out = tmp_path / "out"
    args = _synthetic(cache) + ["--out", str(out), "--fold", "1", "--rows", "lpmn"]
    # 32 training utterances / batch 8 = 4 steps; a checkpoint after step 2, stopped after step 3
    assert experiment.main(args + ["--stop-after-steps", "3"]) == 0
    assert not json.loads((out / "results.json").read_text())["complete"]
    run = out / "fold-1" / "lpmn-K8"
    assert (run / "checkpoints" / "last.json").is_file() and not (run / "metrics.json").exists()
    assert experiment.main(args) == 0
    assert "LPMN-8: resuming its checkpoint" in capsys.readouterr().err
    resumed = json.loads((run / "metrics.json").read_text())
    uninterrupted = json.loads((finished[0] / "fold-1" / "lpmn-K8" / "metrics.json").read_text())
    for key in ("test", "valid", "best_epoch", "steps"):
        assert resumed[key] == uninterrupted[key], key
    untimed = [[{k: v for k, v in e.items() if k != "seconds"} for e in r["history"]] for r in (resumed, uninterrupted)]
    assert untimed[0] == untimed[1]  # per-epoch seconds are wall-clock times


def test_changed_settings_are_refused(tmp_path, finished, cache, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    assert experiment.main(_synthetic(cache) + ["--out", str(out), "--lr", "0.5"]) == 2
    assert "was made with other settings (['lr'])" in capsys.readouterr().err


def test_iemocap_count_mismatch_is_recorded_or_fatal_with_strict(tmp_path, cache, capsys):
    root = write_fake_iemocap(tmp_path / "IEMOCAP_full_release", sessions=5, per_speaker=4)
    args = ["--data", "iemocap", "--data-dir", str(root), "--rows", "ap", "--fold", "5", "--split", "loso",
            "--out", str(tmp_path / "out")] + _common(tmp_path / "cache")
    with pytest.warns(CorpusWarning, match="differ from the expected"):
        assert experiment.main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    corpus = results["corpus"]
    assert corpus["counts_match"] is False and corpus["expected_counts"] == RELEASE_COUNTS
    assert corpus["utterances"] == 40 and sum(corpus["counts"].values()) == 40
    assert any("5531" in w for w in corpus["warnings"])
    assert "Class counts differ from the release's (5531 utterances" in (tmp_path / "out" / "results.md").read_text()
    capsys.readouterr()
    assert experiment.main(args + ["--strict", "--out", str(tmp_path / "strict")]) == 2
    assert "differ from the expected" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()


def test_mer2023_experiment_reports_f1_and_mse(tmp_path):
    write_fake_mer2023(tmp_path / "mer")
    out = tmp_path / "out"
    args = ["--data", "mer2023", "--data-dir", str(tmp_path / "mer"), "--rows", "ap,lpmn-ps", "--k-prime", "4",
            "--fold", "1,2", "--out", str(out)] + _common(tmp_path / "cache")
    assert experiment.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["table"]["columns"] == ["macro_f1", "weighted_f1", "valence_mse"]
    assert [r["name"] for r in results["table"]["rows"]] == ["AP", "LPMN-8-4"]  # LPMN-8 trained, not a row
    assert results["protocol"]["split"] == "kfold" and "stratified 5-fold" in results["protocol"]["description"]
    for row in results["table"]["rows"]:
        mse = [row["per_fold"][f]["valence_mse"] for f in ("1", "2")]
        assert row["mean"]["valence_mse"] == pytest.approx(np.mean(mse))
    assert json.loads((out / "fold-2" / "ap" / "metrics.json").read_text())["protocol"]["protocol"].startswith(
        "kfold(fold=2/5")
    assert "| model | F1 (macro) | F1 (weighted) | MSE | folds |" in (out / "results.md").read_text()


def test_help_explains_every_flag(capsys):
    parser = experiment.build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert all(a.help and len(a.help) > 10 for a in flags)
    names = {s for a in flags for s in a.option_strings}
    assert {"--rows", "--k", "--k-prime", "--fold", "--out", "--strict", "--label-csv", "--wav-dir",
            "--valence-weight", "--split", "--config"} <= names
    assert not names & {"--head", "--num-prototypes", "--top-k", "--test-session", "--run-dir", "--resume"}
    with pytest.raises(SystemExit) as exit_:
        experiment.main(["--help"])
    assert exit_.value.code == 0 and "resumable fold by fold" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (["--k", "0"], "positive integers"),
    (["--rows", "ap,attention"], "rows must be a comma list"),
    (["--k-prime", "a,b"], "comma-separated list of integers"),
])
def test_bad_lists_are_usage_errors(args, match, capsys):
    with pytest.raises(SystemExit) as exit_:
        experiment.main(args)
    assert exit_.value.code == 2 and match in capsys.readouterr().err


def test_bad_plans_are_named(tmp_path, cache, capsys):
    assert experiment.main(_synthetic(cache) + ["--fold", "9", "--out", str(tmp_path / "a")]) == 2
    assert "folds [9] do not exist" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("head: lpmn\n")
    assert experiment.main(_synthetic(cache) + ["--config", str(config), "--out", str(tmp_path / "b")]) == 2
    assert "set by lpmn-experiment per run" in capsys.readouterr().err
