"""benchmarks/ablation.py --report: the tables read back from finished run folders, paired by seed and fold."""

from __future__ import annotations

import json
import statistics

import numpy as np

from benchmarks import ablation


def _fake_run(study, seed, fold, wa, probes, restarts=0):
    """A finished LPMN-256 run folder as lpmn-experiment writes it, with its K' = 60 probe files."""
    run = study / f"seed-{seed}" / f"fold-{fold}" / f"lpmn-K{ablation.K}"
    run.mkdir(parents=True)
    provenance = {"git": {"commit": "0123456789abcdef", "dirty": False}}
    run.joinpath("metrics.json").write_text(json.dumps(
        {"config": {"seed": seed}, "test": {"wa": wa}, "prototype_restarts": restarts, "provenance": provenance}))
    for variant, value in probes.items():
        run.joinpath(f"probe-K{ablation.K_PRIME}-{variant}.json").write_text(json.dumps({"test": {"wa": value}}))


def test_report_pairs_runs_by_seed_and_fold(tmp_path):
    rng = np.random.default_rng(3)
    a_values, b_values = {}, {}
    for seed in (0, 1):
        for fold in (1, 2, 3):
            a, b = rng.uniform(0.3, 0.9, size=2)
            a_values[seed, fold], b_values[seed, fold] = a, b
            _fake_run(tmp_path / "tau1-standard", seed, fold, a, {"columns-std-gradient": b, "columns-raw-gradient": a},
                      restarts=fold)
            _fake_run(tmp_path / "tau1-none", seed, fold, b, {})
    # a run only study A finished is left out of the pairs, not paired with another fold
    _fake_run(tmp_path / "tau1-standard", 2, 1, 0.99, {})

    text = ablation.report(tmp_path)

    def row(cells):
        lines = [line for line in text.splitlines() if line.startswith(cells)]
        assert len(lines) == 1, (cells, text)
        return [c.strip() for c in lines[0].strip("|").split("|")]

    all_a = [100 * v for v in a_values.values()] + [99.0]
    overall = row(f"| synthetic | tau1-standard (`--tau 1.0 --feature-norm standard`) | LPMN-{ablation.K} |")
    assert overall[3] == f"{statistics.mean(all_a):.1f} ± {statistics.stdev(all_a):.1f}" and overall[5] == "7"
    assert overall[4].startswith(f"s0: {statistics.mean(100 * a_values[0, f] for f in (1, 2, 3)):.1f}")

    diffs = [100 * (a_values[k] - b_values[k]) for k in sorted(a_values)]
    pair = row(f"| tau1-standard LPMN-{ablation.K} | tau1-none LPMN-{ablation.K} |")
    sd = statistics.stdev(diffs)
    assert pair[2] == f"{statistics.mean(diffs):+.1f} ± {sd:.1f} ({sd / len(diffs) ** 0.5:.1f})"
    assert pair[3] == f"{sum(d > 0 for d in diffs)} / 0 / {sum(d < 0 for d in diffs)}" and pair[4] == "6"
    # a probe variant against another of the same study: std probe - raw probe = b - a per run
    probe = row(f"| tau1-standard K{ablation.K_PRIME} columns-std-gradient | tau1-standard K{ablation.K_PRIME} "
                "columns-raw-gradient |")
    assert probe[2].startswith(f"{statistics.mean(-d for d in diffs):+.1f} ± ")
    # pairs whose studies did not run are not listed
    assert "tau1-log" not in text.split("Paired differences")[1]
    assert "Runs made at lpmn_fast commit 0123456789ab." in text
