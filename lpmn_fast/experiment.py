"""lpmn-experiment: a whole cross-validation in the paper's layout (Tables 2-4), resumable fold by fold.

    lpmn-experiment --data synthetic --out runs/cv-synthetic                     # AP, MP, LPMN-K, LPMN-K-K'
    lpmn-experiment --data iemocap --data-dir IEMOCAP_full_release --split loso \\
        --backbone hubert --hubert-path hubert-large-ll60k --out runs/iemocap     # Table 2, IEMOCAP
    lpmn-experiment --data mer2023 --data-dir MER2023 --backbone hubert --hubert-path DIR --out runs/mer
    lpmn-experiment ... --rows lpmn --k 128,256,512,1024,2048                     # Table 3: K sweep
    lpmn-experiment ... --rows lpmn,lpmn-ps --k 1024 --k-prime 30,60,100,200,512  # Table 4: K' sweep

Every fold trains each row with lpmn-train's machinery into OUT/fold-<f>/<row>/ (ap, mp,
lpmn-K<K>). A run with its metrics.json is finished and never recomputed; one with only a
checkpoint resumes from it; so rerunning the same command continues an interrupted experiment.
LPMN-K-K' rows do not retrain anything: each K' probes the best LPMN-K checkpoint (section 3.3),
saved as OUT/fold-<f>/lpmn-K<K>/probe-K<K'>.json. Frozen backbone features are cached on disk
(CACHE_DIR/features, keyed by the backbone) and shared by all folds, rows and experiments.
Results: OUT/results.md and OUT/results.json (per fold, and mean ± std over folds), rewritten
after every run. Every flag of lpmn-train is accepted except those the driver sets per run
(--head, --num-prototypes, --top-k, --test-session, --run-dir, --resume).

--seeds 0,1,2 trains every fold and row once per seed, into OUT/seed-<s>/fold-<f>/<row>/; the
tables then give mean ± std over all folds and seeds, the per-seed results and the spread over
seeds. results.json records the code, library versions and device that made it (provenance).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from .cli import add_version, readable_warnings
from .data.atomic import write_text_atomic
from .data.problems import CorpusError
from .launch.options import LAUNCH_FIELDS, add_launcher_arguments
from .protocol import fold_ids
from .protocol.table import HEADERS, build_seed_table, build_table, format_markdown, table_columns
from .provenance import describe, provenance
from .train import add_config_flags
from .training import loop
from .training.config import (
    RUN_CONTROL, TrainConfig, changed_fields, config_dict, load_config_file, make_config, resolve,
)
from .training.corpus import Corpus, load_corpus
from .training.probe import probe_trained_run

ROWS = ("ap", "mp", "lpmn", "lpmn-ps")
# TrainConfig fields the driver sets for each run itself.
PER_RUN = ("head", "num_prototypes", "top_k", "test_session", "run_dir", "resume")
PROTOCOLS = {
    "loso": "leave-one-session-out; validation and test on the held-out session (the paper, section 4.1)",
    "loso-speaker": "leave-one-session-out; validation on one speaker of the held-out session, test on the other",
    "kfold": "stratified {folds}-fold cross-validation on seeded random partitions (seed {fold_seed}; the paper, "
             "section 4.1, for MER2023); validation on a stratified {valid_fraction:g} of the training folds",
    "speaker-kfold": "speaker-independent {folds}-fold cross-validation (seed {fold_seed}): no test speaker in "
                     "training; validation on whole speakers of the training folds (about {valid_fraction:g})",
    "column": "the manifest's split column (train, valid, test): one fold",
}


def _int_list(text: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < minimum:
        kind = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
    return list(dict.fromkeys(values))  # drop repeats, keep order


def _seed_list(text: str) -> list[int]:
    return _int_list(text, minimum=0)


def _rows(text: str) -> list[str]:
    rows = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if not rows or unknown:
        raise argparse.ArgumentTypeError(f"rows must be a comma list of {ROWS}, got {text!r}")
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpmn-experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    ex = parser.add_argument_group("experiment")
    ex.add_argument("--out", type=Path, help="experiment directory (default runs/experiment-<data>-<backbone>-"
                                             "<split>); rerun with the same --out to resume")
    ex.add_argument("--rows", type=_rows, default=list(ROWS),
                    help="comma list of table rows: ap, mp (pooling baselines), lpmn (LPMN-K, one per --k), lpmn-ps "
                         "(LPMN-K-K': prototype selection + linear probing of LPMN-K, one per --k-prime) "
                         "(default: ap,mp,lpmn,lpmn-ps)")
    ex.add_argument("--k", type=_int_list, help="comma list of K (prototypes), one LPMN-K row each, e.g. "
                                                "128,256,512,1024,2048 for Table 3 (default: --num-prototypes' "
                                                "default for the backbone)")
    ex.add_argument("--k-prime", type=_int_list, help="comma list of K' (selected prototypes), one LPMN-K-K' row "
                                                      "per K and K' <= K, e.g. 30,60,100,200,512 for Table 4; "
                                                      "all probe one trained LPMN-K (default: --top-k's default)")
    ex.add_argument("--fold", type=_int_list, help="comma list of folds to run (sessions for loso splits, 1..folds "
                                                   "for kfold; default: all); the table covers these")
    ex.add_argument("--seeds", type=_seed_list, help="comma list of training seeds, e.g. 0,1,2: every fold and row is "
                                                      "trained once per seed (into OUT/seed-<s>/), and the tables give "
                                                      "mean ± std over folds and seeds plus the spread over seeds "
                                                      "(default: one run per fold with --seed)")
    ex.add_argument("--config", type=Path, help="YAML or JSON file of training config fields; flags override it")
    add_version(parser)
    add_config_flags(parser, skip=PER_RUN, prefix="training (as lpmn-train): ")
    add_launcher_arguments(parser.add_argument_group("launcher (where the runs go: this process, worker processes, "
                                                     "SLURM; see docs/cluster.md)"))
    return parser


@dataclasses.dataclass
class Plan:
    """What one experiment runs: the base config (resolved), rows, K and K' lists, folds, where, and
    the training seeds (one: today's layout OUT/fold-<f>/; several: OUT/seed-<s>/fold-<f>/)."""

    base: TrainConfig
    rows: list[str]
    ks: list[int]
    k_primes: list[int]
    folds: list[int]
    out: Path
    seeds: list[int] = dataclasses.field(default_factory=list)
    launch: dict = dataclasses.field(default_factory=dict)  # the launcher flags (lpmn_fast.launch.options)

    @property
    def several_seeds(self) -> bool:
        return len(self.seeds) > 1


def make_plan(argv: list[str] | None = None) -> tuple[Plan, Corpus]:
    """The plan of the command line ``argv`` and the loaded corpus (checked once, up front)."""
    args = vars(build_parser().parse_args(argv))
    experiment = {k: args.pop(k) for k in ("out", "rows", "k", "k_prime", "fold", "seeds", "config")}
    launch = {k: args.pop(k) for k in LAUNCH_FIELDS}
    fields = load_config_file(experiment["config"]) if experiment["config"] else {}
    fields.update(args)
    per_run = sorted(set(fields) & set(PER_RUN))
    if per_run:
        raise ValueError(f"{per_run} are set by lpmn-experiment per run (use --k, --k-prime, --fold, --out); "
                         "remove them from the config file")
    if experiment["seeds"] and "seed" in fields:
        raise ValueError("give either --seed (one seed) or --seeds (several), not both")
    base = resolve(make_config(**{**fields, "run_dir": "unused", "test_session": 1}))  # both set per run
    ks = experiment["k"] or [base.num_prototypes]
    k_primes = experiment["k_prime"] or [base.top_k]
    out = experiment["out"] or Path("runs") / f"experiment-{base.data}-{base.backbone}-{base.split}"
    corpus = load_corpus(base)
    folds = fold_ids(base.split, corpus.utterances, folds=base.folds)
    chosen = experiment["fold"] or folds
    missing = [f for f in chosen if f not in folds]
    if missing:
        raise ValueError(f"folds {missing} do not exist; split {base.split!r} of this corpus has folds {folds}")
    return Plan(base, experiment["rows"], ks, k_primes, sorted(chosen), Path(out),
                experiment["seeds"] or [base.seed], launch), corpus


def _run_key(plan: Plan, fold: int, seed: int) -> str:
    """The run's folder under OUT (and its key in results.json's runs): fold-<f>, or seed-<s>/fold-<f>."""
    return f"seed-{seed}/fold-{fold}" if plan.several_seeds else f"fold-{fold}"


def _run_config(plan: Plan, fold: int, head: str, k: int | None = None, seed: int | None = None) -> TrainConfig:
    name = head if k is None else f"lpmn-K{k}"
    seed = plan.base.seed if seed is None else seed
    run_dir = plan.out / _run_key(plan, fold, seed) / name
    fields = {**dataclasses.asdict(plan.base), "head": head, "test_session": fold, "run_dir": str(run_dir),
              "resume": (run_dir / "checkpoints" / "last.json").is_file(), "seed": seed}
    if k is not None:
        # The driver probes every K' itself from the best checkpoint: no probe inside train().
        fields.update(num_prototypes=k, top_k=k, probe_epochs=0)
    return resolve(make_config(**fields))


def training_runs(plan: Plan, fold: int, seed: int) -> list[tuple[str, TrainConfig]]:
    """(row name, config) of every training of one fold and seed, in the order they run; the LPMN-K
    runs are trained for the lpmn-ps rows too, whose K' probes read them."""
    runs = [(r.upper(), _run_config(plan, fold, r, seed=seed)) for r in ("ap", "mp") if r in plan.rows]
    if "lpmn" in plan.rows or "lpmn-ps" in plan.rows:
        runs += [(f"LPMN-{k}", _run_config(plan, fold, "lpmn", k, seed)) for k in plan.ks]
    return runs


def _check_same(saved: dict, current: dict, where: Path) -> None:
    changed = changed_fields(saved, current)
    if changed:
        raise ValueError(f"{where} was made with other settings ({changed}); rerun with those settings to resume, "
                         "or choose another --out")


def _summary(metrics: dict, columns) -> str:
    return " ".join(f"{HEADERS[c]} {100 * metrics[c]:.2f}" if c != "valence_mse" else f"MSE {metrics[c]:.4f}"
                    for c in columns)


class Driver:
    """Runs a Plan fold by fold, skipping finished runs, and keeps the results table up to date."""

    def __init__(self, plan: Plan, corpus: Corpus, log=print):
        self.plan, self.corpus, self.log = plan, corpus, log
        self.columns = table_columns(plan.base.data)
        if plan.base.valence_weight > 0 and "valence_mse" not in self.columns:  # a manifest with valence
            self.columns = (*self.columns, "valence_mse")
        self.started = time.perf_counter()
        self.per_seed: dict[str, dict[str, dict[str, dict]]] = {}  # row -> seed -> fold -> test metrics
        self.runs: dict[str, dict[str, dict]] = {}
        self.skipped: list[str] = []
        self.row_names = ([r.upper() for r in ("ap", "mp") if r in plan.rows]
                          + [f"LPMN-{k}" for k in plan.ks if "lpmn" in plan.rows]
                          + [f"LPMN-{k}-{kp}" for k in plan.ks for kp in plan.k_primes
                             if "lpmn-ps" in plan.rows and kp <= k])
        if "lpmn-ps" in plan.rows:
            self.skipped = [f"LPMN-{k}-{kp}: K' > K" for k in plan.ks for kp in plan.k_primes if kp > k]

    def _record(self, fold: int, name: str, results: dict, run_dir: Path, seed: int) -> None:
        self.per_seed.setdefault(name, {}).setdefault(str(seed), {})[str(fold)] = results["test"]
        key = _run_key(self.plan, fold, seed) if self.plan.several_seeds else str(fold)
        self.runs.setdefault(key, {})[name] = {
            "run_dir": str(run_dir), "protocol": results.get("protocol"), "best_epoch": results.get("best_epoch"),
            "valid": {c: results["valid"].get(c) for c in self.columns}, "seconds": results.get("seconds")}

    def _train(self, tag: str, name: str, config: TrainConfig) -> dict | None:
        """Results of one training run: read back if finished, else trained (or resumed); None if interrupted."""
        run_dir = Path(config.run_dir)
        metrics_file = run_dir / "metrics.json"
        if metrics_file.is_file():
            results = json.loads(metrics_file.read_text(encoding="utf-8"))
            _check_same(results["config"], config_dict(config), run_dir)
            self.log(f"{tag} {name}: finished earlier, read {metrics_file}")
            return results
        self.log(f"{tag} {name}: " + ("resuming its checkpoint" if config.resume else "training"))
        results = loop.train(config)
        if results.get("interrupted"):
            self.log(f"{tag} {name}: stopped after step {results['step']}; rerun the same command to resume")
            return None
        self.log(f"{tag} {name}: test {_summary(results['test'], self.columns)} ({results['seconds']} s)")
        return results

    def _probes(self, tag: str, fold: int, k: int, config: TrainConfig, protocol: dict | None) -> None:
        seed = config.seed
        run_dir = Path(config.run_dir)
        wanted = [kp for kp in self.plan.k_primes if kp <= k]
        b = self.plan.base
        settings = {"probe_epochs": b.probe_epochs, "probe_lr": b.probe_lr, "probe_reading": b.probe_reading,
                    "probe_standardize": b.probe_standardize, "importance": b.importance}
        todo = []
        for kp in wanted:
            file = run_dir / f"probe-K{kp}.json"
            if file.is_file():
                results = json.loads(file.read_text(encoding="utf-8"))
                _check_same(results["settings"], settings, file)
                self.log(f"{tag} {results['name']}: finished earlier, read {file}")
                self._record(fold, results["name"], results, run_dir, seed)
            else:
                todo.append(kp)
        if not todo:
            return
        self.log(f"{tag} LPMN-{k}-K' for K' in {todo}: probing the best LPMN-{k} checkpoint")
        options = {k: settings[k] for k in ("probe_reading", "probe_standardize", "importance")}
        for kp, results in probe_trained_run(run_dir, todo, epochs=settings["probe_epochs"],
                                             lr=settings["probe_lr"], progress=self.plan.base.progress,
                                             options=options):
            results = {**results, "settings": settings, "protocol": protocol}
            write_text_atomic(run_dir / f"probe-K{kp}.json", json.dumps(results, indent=1))
            self.log(f"{tag} {results['name']}: test {_summary(results['test'], self.columns)}")
            self._record(fold, results["name"], results, run_dir, seed)

    def run(self) -> bool:
        """Run every fold; True when all finished, False when a run stopped (stop_after_steps)."""
        plan = self.plan
        todo = [(seed, fold) for seed in plan.seeds for fold in plan.folds]
        for i, (seed, fold) in enumerate(todo, 1):
            tag = (f"[seed {seed}, fold {fold} ({i}/{len(todo)})]" if plan.several_seeds
                   else f"[fold {fold} ({i}/{len(plan.folds)})]")
            started = time.perf_counter()
            for name, config in training_runs(plan, fold, seed):
                results = self._train(tag, name, config)
                if results is None:
                    self.write(complete=False)
                    return False
                if name in self.row_names:
                    self._record(fold, name, results, Path(config.run_dir), seed)
                if config.head == "lpmn" and "lpmn-ps" in plan.rows:
                    self._probes(tag, fold, config.num_prototypes, config, results.get("protocol"))
                self.write(complete=False)
            self.log(f"{tag} done in {time.perf_counter() - started:.1f} s")
        self.write(complete=True)
        return True

    def protocol(self) -> dict:
        b = self.plan.base
        return {"split": b.split, "description": PROTOCOLS[b.split].format(**dataclasses.asdict(b)),
                "folds": self.plan.folds}

    def table(self) -> dict:
        folds = [str(f) for f in self.plan.folds]
        if self.plan.several_seeds:
            ordered = {name: self.per_seed.get(name, {}) for name in self.row_names}
            return build_seed_table(ordered, self.columns, folds, [str(s) for s in self.plan.seeds])
        seed = str(self.plan.seeds[0])
        ordered = {name: self.per_seed.get(name, {}).get(seed, {}) for name in self.row_names}
        return build_table(ordered, self.columns, folds)

    def provenance(self) -> dict:
        """lpmn_fast.provenance of the experiment (wall time so far)."""
        from .ops.prototype_mil import resolve_backend
        from .training.build import pick_device

        b = self.plan.base
        device = pick_device(b.device)
        kernel = ({"asked": b.kernel, "used": resolve_backend(b.kernel, device)}
                  if {"lpmn", "lpmn-ps"} & set(self.plan.rows) else None)
        return provenance(device=device, precision=getattr(b, "precision", None) or "float32", kernel=kernel,
                          seconds=time.perf_counter() - self.started)

    def write(self, complete: bool) -> None:
        """results.json and results.md (atomic), from the runs finished so far."""
        b, table = self.plan.base, self.table()
        settings = {k: v for k, v in dataclasses.asdict(b).items() if k not in PER_RUN and k not in RUN_CONTROL}
        data = {"complete": complete, "data": b.data, "backbone": b.backbone, "protocol": self.protocol(),
                "corpus": self.corpus.describe(), "rows": self.plan.rows, "k": self.plan.ks,
                "k_prime": self.plan.k_primes, "skipped": self.skipped, "table": table, "runs": self.runs,
                "settings": settings, "seeds": self.plan.seeds, "provenance": self.provenance()}
        write_text_atomic(self.plan.out / "results.json", json.dumps(data, indent=1))
        write_text_atomic(self.plan.out / "results.md", self.markdown(data) + "\n")

    def markdown(self, data: dict) -> str:
        b, corpus = self.plan.base, data["corpus"]
        title = f"# {b.data} cross-validation, {b.backbone} backbone" + ("" if data["complete"] else " (incomplete)")
        counts = ", ".join(f"{c} {n}" for c, n in (corpus["counts"] or {}).items())
        lines = [title, "", f"Protocol: {b.split}: {data['protocol']['description']}. "
                 f"Folds: {', '.join(map(str, self.plan.folds))}.",
                 f"Corpus: {corpus['utterances']} utterances ({counts}) from `{Path(corpus['root']).resolve()}`."]
        if corpus["counts_match"] is False:
            expected = sum(corpus["expected_counts"].values())
            lines.append(f"**Class counts differ from the release's ({expected} utterances: "
                         f"{corpus['expected_counts']})**; results are on the counts above.")
        if corpus["warnings"]:
            lines.append(f"The loader skipped or flagged {len(corpus['warnings'])} part(s); see results.json.")
        over = (f"over folds and seeds ({', '.join(map(str, self.plan.seeds))})" if self.plan.several_seeds
                else "over folds")
        lines += ["", f"Test metrics, mean ± sample std {over}; WA/UA/F1 in %, valence MSE as is. "
                  f"Best epoch chosen on validation {b.select_metric}.", "", format_markdown(data["table"])]
        if data["skipped"]:
            lines += ["", "Not run: " + "; ".join(data["skipped"]) + "."]
        lines += ["", f"Made with {describe(data['provenance'])}."]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    with readable_warnings("lpmn-experiment"):
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    started = time.perf_counter()
    status_of = build_parser().parse_args(argv).status
    if status_of is not None:
        from .launch import print_status
        return print_status(status_of)
    try:
        plan, corpus = make_plan(argv)
    except (ValueError, FileNotFoundError, CorpusError) as error:
        print(f"lpmn-experiment: error: {error}", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log(f"lpmn-experiment: {plan.base.data}, {plan.base.split} folds {plan.folds}, rows {plan.rows}, K {plan.ks}"
        + (f", K' {plan.k_primes}" if "lpmn-ps" in plan.rows else "")
        + (f", seeds {plan.seeds}" if plan.several_seeds else "") + f" -> {plan.out}")
    driver = Driver(plan, corpus, log)
    try:
        if plan.launch["launcher"] != "sequential":
            from .launch import launch
            complete = launch(plan, driver, log)
            if complete is None:  # submitted without waiting, or a run failed: no results yet
                return 0 if plan.launch["no_wait"] else 1
        else:
            complete = driver.run()
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"lpmn-experiment: error: {error}", file=sys.stderr)
        return 2
    print(driver.markdown(json.loads((plan.out / "results.json").read_text(encoding="utf-8"))))
    log(f"results: {plan.out / 'results.md'} and results.json ({time.perf_counter() - started:.1f} s"
        + ("" if complete else "; incomplete, rerun the same command to resume") + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
