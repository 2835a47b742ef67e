"""lpmn-experiment --seeds: every fold and row per seed, mean ± std over folds and seeds, the spread over
seeds, resumption, and provenance in results.json."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import lpmn_fast.experiment as experiment
import lpmn_fast.training.loop as loop
from lpmn_fast.protocol.table import build_seed_table, format_markdown

SEEDS, FOLDS = ["0", "1"], ["1", "2"]


def _args(cache: Path, out: Path) -> list[str]:
    return ["--data", "synthetic", "--synthetic-utterances-per-speaker", "4", "--split", "loso", "--fold", "1,2",
            "--rows", "ap,lpmn-ps", "--k", "8", "--k-prime", "4", "--seeds", "0,1", "--out", str(out),
            "--cache-dir", str(cache), "--epochs", "4", "--fbank-mel-bins", "16", "--encoder-hidden", "16",
            "--batch-size", "4", "--tau", "0.2", "--lr", "0.01", "--kmeans-frames", "500", "--probe-epochs", "2",
            "--no-progress"]


def test_seed_table_statistics():
    rng = np.random.default_rng(0)
    values = {s: {f: {"wa": float(rng.uniform()), "ua": float(rng.uniform())} for f in FOLDS} for s in SEEDS}
    values["2"] = {"1": {"wa": 0.5, "ua": 0.5}}  # a seed with one fold of two done
    table = build_seed_table({"AP": values}, ["wa", "ua"], FOLDS, SEEDS + ["2"])
    row = table["rows"][0]
    for c in ("wa", "ua"):
        runs = [values[s][f][c] for s in values for f in values[s]]
        assert row["mean"][c] == pytest.approx(np.mean(runs)) and row["std"][c] == pytest.approx(np.std(runs, ddof=1))
        per_seed = [np.mean([values[s][f][c] for f in FOLDS]) for s in SEEDS]  # complete seeds only
        assert [row["per_seed"][s]["mean"][c] for s in SEEDS] == pytest.approx(per_seed)
        assert row["seed_spread"]["std"][c] == pytest.approx(np.std(per_seed, ddof=1))
        assert (row["seed_spread"]["min"][c], row["seed_spread"]["max"][c]) == (min(per_seed), max(per_seed))
    assert row["runs_done"] == 5 and row["seeds_complete"] == SEEDS and row["per_seed"]["2"]["folds_done"] == 1
    text = format_markdown(table)
    assert "| AP | 2 | 1 | 50.00 | 50.00 |" in text and "| 5/6 |" in text and "| 2/3 |" in text


def test_several_seeds_train_every_fold_and_row_per_seed(tmp_path, monkeypatch, capsys):
    calls = []
    train = loop.train

    def spy(config):
        calls.append((config.seed, config.test_session, config.head))
        return train(config)

    monkeypatch.setattr(loop, "train", spy)
    out = tmp_path / "out"
    assert experiment.main(_args(tmp_path / "cache", out)) == 0
    assert sorted(calls) == sorted((s, f, h) for s in (0, 1) for f in (1, 2) for h in ("ap", "lpmn"))
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["complete"]
    table = results["table"]
    assert table["seeds"] == SEEDS and [r["name"] for r in table["rows"]] == ["AP", "LPMN-8-4"]
    for row in table["rows"]:
        runs = {}
        for s in SEEDS:
            for f in FOLDS:
                folder = out / f"seed-{s}" / f"fold-{f}"
                file = folder / "ap" / "metrics.json" if row["name"] == "AP" else folder / "lpmn-K8" / "probe-K4.json"
                saved = json.loads(file.read_text())
                runs[s, f] = saved["test"]
                if row["name"] == "AP":
                    assert saved["config"]["seed"] == int(s)
        if row["name"] == "AP":  # seeds make a difference here, so a mix-up of runs would show
            assert len({runs[k]["wa"] for k in runs}) > 1
        for c in table["columns"]:
            every = [runs[k][c] for k in runs]
            assert row["mean"][c] == pytest.approx(np.mean(every))
            assert row["std"][c] == pytest.approx(np.std(every, ddof=1))
            means = [np.mean([runs[s, f][c] for f in FOLDS]) for s in SEEDS]
            assert row["seed_spread"]["std"][c] == pytest.approx(np.std(means, ddof=1))
    text = (out / "results.md").read_text()
    assert "mean ± sample std over folds and seeds (0, 1)" in text and "Spread over seeds" in text
    prov = results["provenance"]
    assert prov["libraries"]["torch"] == metadata.version("torch") and prov["wall_seconds"] > 0
    assert "Made with lpmn_fast" in text

    calls.clear()  # rerunning reads every run back
    assert experiment.main(_args(tmp_path / "cache", out)) == 0
    assert calls == []
    assert json.loads((out / "results.json").read_text())["table"] == table


def test_seed_and_seeds_together_are_refused(tmp_path, capsys):
    assert experiment.main(_args(tmp_path / "cache", tmp_path / "out") + ["--seed", "3"]) == 2
    assert "either --seed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        experiment.main(["--seeds", "0,-1"])
    assert exit_.value.code == 2 and "integers >= 0" in capsys.readouterr().err
