"""The ablation of the paper's open choices (issue 22): one niced background job, resumable.

    python -m benchmarks.ablation --out runs/ablation [--studies NAME,...] [--folds 1,3,5] [--seeds 0]
    python -m benchmarks.ablation --out runs/ablation --report benchmarks/results/ablation.md

Each study is one lpmn-experiment (rows lpmn, lpmn-ps; K = 256, K' = 60; every fold x seed) on a
corpus: ``synthetic`` (the demo's corpus and settings) or ``espeak`` (benchmarks/espeak_corpus.py,
read as a manifest). Probe variants (reading x standardisation x importance) need no retraining:
each probes the study's best LPMN-256 checkpoints again (``probe-K60-<variant>.json``). Finished runs
are read back, so rerunning the command resumes. ``--report`` writes the tables (mean ± sample std
over all folds x seeds, the per-seed means over folds, and paired differences between studies
over the same seeds and folds) from what has finished.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The ablation's size, cut so that the whole grid fits about an hour of a quiet 2-core CPU (two
# lanes of one thread; a run of this size takes about 20 s there): half the synthetic corpus (50
# utterances per speaker) and 8 epochs instead of the demo's 20; everything else is the demo's
# (fbank, K 256, lr 2e-3, batch 32, quantization weight 0.1, loso-speaker). Every study runs every
# fold with every seed (5 x 3), in this order, the decisive ones first.
SIZE = ["--epochs", "8"]
SYNTHETIC_SIZE = ["--synthetic-utterances-per-speaker", "50"]
FOLDS, SEEDS = "1,2,3,4,5", "0,1,2"
# name -> (corpus, extra lpmn-experiment flags)
STUDIES = {
    "tau005-standard": ("synthetic", ["--tau", "0.05", "--feature-norm", "standard"]),
    "tau1-standard": ("synthetic", ["--tau", "1.0", "--feature-norm", "standard"]),
    "tau1-none": ("synthetic", ["--tau", "1.0", "--feature-norm", "none"]),
    "tau005-none": ("synthetic", ["--tau", "0.05", "--feature-norm", "none"]),
    "espeak-tau005-standard": ("espeak", ["--tau", "0.05", "--feature-norm", "standard"]),
    "espeak-tau1-standard": ("espeak", ["--tau", "1.0", "--feature-norm", "standard"]),
    "espeak-tau1-none": ("espeak", ["--tau", "1.0", "--feature-norm", "none"]),
    "espeak-tau005-none": ("espeak", ["--tau", "0.05", "--feature-norm", "none"]),
    "tau1-log": ("synthetic", ["--tau", "1.0", "--feature-norm", "log"]),
    "tau1-scale": ("synthetic", ["--tau", "1.0", "--feature-norm", "scale"]),
    "tau1-batch": ("synthetic", ["--tau", "1.0", "--feature-norm", "batch"]),
    "tau005-standard-restart-frame": ("synthetic", ["--tau", "0.05", "--feature-norm", "standard",
                                                    "--restart", "frame"]),
}
# probe variant -> (probe_reading, probe_standardize, importance)
VARIANTS = {
    "columns-std-gradient": ("columns", True, "gradient"),
    "columns-raw-gradient": ("columns", False, "gradient"),
    "renorm-std-gradient": ("renormalise", True, "gradient"),
    "renorm-raw-gradient": ("renormalise", False, "gradient"),
    "columns-std-direction": ("columns", True, "direction"),
    "renorm-raw-direction": ("renormalise", False, "direction"),
}
K, K_PRIME = 256, 60
# Paired comparisons (same seed and fold, so the fold-to-fold spread cancels): (study A, row A, study
# B, row B); a row is "LPMN-256" or a probe variant's name.
PAIRS = [
    ("tau1-standard", "LPMN", "tau1-none", "LPMN"),
    ("tau1-standard", "LPMN", "tau1-scale", "LPMN"),
    ("tau1-standard", "LPMN", "tau1-log", "LPMN"),
    ("tau1-batch", "LPMN", "tau1-standard", "LPMN"),
    ("tau005-standard", "LPMN", "tau005-none", "LPMN"),
    ("espeak-tau1-standard", "LPMN", "espeak-tau1-none", "LPMN"),
    ("espeak-tau005-standard", "LPMN", "espeak-tau005-none", "LPMN"),
    ("tau005-standard", "LPMN", "tau1-standard", "LPMN"),
    ("espeak-tau005-standard", "LPMN", "espeak-tau1-standard", "LPMN"),
    ("tau005-standard-restart-frame", "LPMN", "tau005-standard", "LPMN"),
    ("tau005-standard-restart-frame", "columns-std-gradient", "tau005-standard", "columns-std-gradient"),
    *[pair for study in ("tau005-standard", "tau1-standard", "espeak-tau005-standard", "espeak-tau1-standard")
      for pair in ((study, "columns-std-gradient", study, "columns-raw-gradient"),
                   (study, "renorm-std-gradient", study, "renorm-raw-gradient"),
                   (study, "columns-std-gradient", study, "renorm-std-gradient"),
                   (study, "columns-std-direction", study, "columns-std-gradient"),
                   (study, "columns-std-gradient", study, "LPMN"))],
]
PROBE_EPOCHS = 30  # lpmn-train's --probe-epochs default


def corpus_flags(corpus: str, out: Path) -> list[str]:
    if corpus == "synthetic":
        return ["--data", "synthetic", *SYNTHETIC_SIZE]
    manifest = out / "espeak-corpus" / "manifest.csv"
    if not manifest.is_file():
        from .espeak_corpus import make_corpus

        make_corpus(manifest.parent)
    return ["--data", "manifest", "--manifest", str(manifest), "--split", "loso-speaker"]


def run_study(name: str, out: Path, folds: str, seeds: str, threads: int, extra: list[str] = ()) -> None:
    corpus, flags = STUDIES[name]
    command = [sys.executable, "-m", "lpmn_fast.experiment", *corpus_flags(corpus, out), *flags, *SIZE,
               "--backbone", "fbank", "--rows", "lpmn", "--k", str(K), "--seeds", seeds, "--fold", folds,
               "--threads", str(threads), "--no-progress", "--out", str(out / name), *extra]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command[1:])}", flush=True)
    finished = subprocess.run(command, stdout=subprocess.DEVNULL).returncode == 0
    if not finished:
        print(f"{name}: lpmn-experiment failed; its finished runs are still probed and reported", flush=True)
    probe_variants(out / name)


def _run_dirs(study: Path) -> list[Path]:
    """The LPMN-K run folders of a study: OUT/seed-<s>/fold-<f>/lpmn-K<K> (several seeds) or OUT/fold-<f>/..."""
    return sorted(study.glob(f"**/fold-*/lpmn-K{K}"))


def probe_variants(study: Path) -> None:
    """Every VARIANT's K' probe of every finished LPMN-K run of ``study`` (data and model loaded once per run)."""
    import torch

    from lpmn_fast.training.build import build_model, pick_device
    from lpmn_fast.training.checkpoint import load_checkpoint, load_model_state
    from lpmn_fast.training.config import make_config, resolve, saved_fields
    from lpmn_fast.training.corpus import prepare_data
    from lpmn_fast.training.probe import linear_probe

    torch.set_num_threads(1)
    for run_dir in _run_dirs(study):
        todo = {v: o for v, o in VARIANTS.items() if not (run_dir / f"probe-K{K_PRIME}-{v}.json").is_file()}
        if not todo or not (run_dir / "metrics.json").is_file():
            continue
        meta, state, _, _ = load_checkpoint(run_dir / "checkpoints", "best")
        c = resolve(make_config(**{**saved_fields(meta["config"]), "progress": False}))
        device = pick_device(c.device)
        data = prepare_data(c)
        model = build_model(c, len(data.classes), data.backbone).to(device)
        load_model_state(model, state)
        for variant, (reading, standardize, importance) in todo.items():
            # the driver trained with probe_epochs 0 (it probes itself): the probe's own defaults here
            results, _ = linear_probe(model, data.sets, data.classes, top_k=K_PRIME, epochs=PROBE_EPOCHS,
                                      lr=c.probe_lr, batch_size=c.batch_size, seed=c.seed,
                                      select_metric=c.select_metric, device=device, reading=reading,
                                      importance=importance, standardize=standardize)
            (run_dir / f"probe-K{K_PRIME}-{variant}.json").write_text(json.dumps(results, indent=1))


def collect(study: Path) -> dict[str, dict[str, dict[str, float]]]:
    """row -> seed -> fold -> test WA (%) (and the restart count), of the study's finished runs."""
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for run_dir in _run_dirs(study):
        if not (run_dir / "metrics.json").is_file():
            continue  # unfinished: neither trained to the end nor probed
        metrics = json.loads((run_dir / "metrics.json").read_text())
        seed, fold = str(metrics["config"]["seed"]), run_dir.parent.name[5:]
        values = {_row_key("LPMN"): 100 * metrics["test"]["wa"]}
        for file in sorted(run_dir.glob(f"probe-K{K_PRIME}-*.json")):
            values[_row_key(file.stem.split("-", 2)[2])] = 100 * json.loads(file.read_text())["test"]["wa"]
        values["prototype restarts per run (count)"] = metrics["prototype_restarts"]
        for row, value in values.items():
            rows.setdefault(row, {}).setdefault(seed, {})[fold] = value
    return rows


def _row_key(row: str) -> str:
    """A PAIRS row ("LPMN" or a probe variant) as collect() names it."""
    return f"LPMN-{K}" if row == "LPMN" else f"LPMN-{K}-{K_PRIME} {row}"


def summary(per_seed: dict[str, dict[str, float]]) -> tuple[str, str, int]:
    values = [v for folds in per_seed.values() for v in folds.values()]
    overall = f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else (
        f"{values[0]:.1f}" if values else "")
    seeds = ", ".join(f"s{s}: {statistics.mean(f.values()):.1f}" for s, f in sorted(per_seed.items()))
    return overall, seeds, len(values)


def paired(collected: dict[str, dict[str, dict[str, dict[str, float]]]]) -> list[str]:
    """PAIRS as table rows: mean ± sample std of A - B over the (seed, fold) runs both finished.

    collected: study -> collect(study)."""
    lines = ["| A | B | A - B, test WA points: mean ± std (standard error) | A better / tie / worse | runs |",
             "|---|---|---|---|---|"]

    def runs(study, row):
        per_seed = collected.get(study, {}).get(_row_key(row), {})
        return {(seed, fold): v for seed, folds in per_seed.items() for fold, v in folds.items()}

    def name(study, row):
        return f"{study} {f'LPMN-{K}' if row == 'LPMN' else f'K{K_PRIME} {row}'}"

    for study_a, row_a, study_b, row_b in PAIRS:
        a, b = runs(study_a, row_a), runs(study_b, row_b)
        d = [a[key] - b[key] for key in sorted(a.keys() & b.keys())]
        if len(d) < 2:
            continue
        sd = statistics.stdev(d)
        lines.append(f"| {name(study_a, row_a)} | {name(study_b, row_b)} | {statistics.mean(d):+.1f} ± {sd:.1f} "
                     f"({sd / len(d) ** 0.5:.1f}) | {sum(x > 0 for x in d)} / {sum(x == 0 for x in d)} / "
                     f"{sum(x < 0 for x in d)} | {len(d)} |")
    return lines


def report(out: Path) -> str:
    lines = ["| corpus | study (training flags) | row | test WA % mean ± std | per-seed mean over folds | runs |",
             "|---|---|---|---|---|---|"]
    collected = {name: collect(out / name) for name in STUDIES if (out / name).is_dir()}
    for name, (corpus, flags) in STUDIES.items():
        for row, per_seed in collected.get(name, {}).items():
            overall, seeds, n = summary(per_seed)
            lines.append(f"| {corpus} | {name} (`{' '.join(flags)}`) | {row} | {overall} | {seeds} | {n} |")
    git = [json.loads(m.read_text())["provenance"]["git"] for m in out.glob("*/**/metrics.json")]
    commits = sorted({g["commit"][:12] + (" (dirty)" if g["dirty"] else "") for g in git})
    lines += ["", "Paired differences (same seed and fold):", "", *paired(collected)]
    lines += ["", f"Runs made at lpmn_fast commit {', '.join(commits) or '(none yet)'}."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--studies", default=",".join(STUDIES))
    parser.add_argument("--folds", default=FOLDS, help=f"folds of every study (default: {FOLDS})")
    parser.add_argument("--seeds", default=SEEDS, help=f"seeds of every study (default: {SEEDS})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--extra", default="", help="more lpmn-experiment flags, e.g. '--epochs 1' for a smoke test")
    parser.add_argument("--report", type=Path, help="write the table of finished runs to this file and stop")
    args = parser.parse_args(argv)
    if args.report:
        args.report.write_text(report(args.out) + "\n")
        print(report(args.out))
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    for name in args.studies.split(","):
        run_study(name, args.out, args.folds, args.seeds, args.threads, args.extra.split())
        print(report(args.out), flush=True)


if __name__ == "__main__":
    main()
