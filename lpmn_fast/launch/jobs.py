"""The jobs of an experiment grid and the callable that runs one of them in a worker (a SLURM job or a
local process started by submitit).

Three kinds, in waves: ``features`` (one job: the frozen-feature cache of every fold, before anything
reads it), ``train`` (one per seed, fold and trained row: AP, MP, LPMN-K) and ``probe`` (the LPMN-K-K'
probes of one trained LPMN-K, after it). A job is finished when its output files exist, so the state
of a grid is read off the experiment folder, whatever launched it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import sys
import time
from pathlib import Path

from submitit.helpers import Checkpointable

STATE = ".launch"  # OUT/.launch/: the launcher's records (jobs.json, plan.json, lock, submitit folders)
# Test hook: "<job key>:<steps>[,<job key>:<steps>...]" makes those jobs, on a first attempt (no checkpoint
# yet), train <steps> optimizer steps (keeping the periodic checkpoints) and then wait until they are killed
# or preempted, so that a test can scancel or preempt a run mid-way.
HOLD_ENV = "LPMN_LAUNCH_TEST_HOLD"


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One job of the grid: ``key`` names it (``features``, ``[seed-<s>/]fold-<f>/<run>``, ``.../probes``),
    ``row`` is its table row (``LPMN-<K>-K'`` for probes), ``after`` the key of the job it waits for."""

    key: str
    kind: str
    row: str
    seed: int | None = None
    fold: int | None = None
    head: str | None = None
    k: int | None = None
    run_dir: str | None = None
    outputs: tuple[str, ...] = ()
    after: str | None = None

    def finished(self) -> bool:
        return bool(self.outputs) and all(Path(p).is_file() for p in self.outputs)


def features_marker(out: Path) -> Path:
    return out / STATE / "features.done"


def grid_jobs(plan) -> list[JobSpec]:
    """Every job of ``plan`` (lpmn_fast.experiment.Plan) in launch order: features, then per seed and fold
    the trainings in lpmn_fast.experiment.training_runs' order, each LPMN-K followed by its probes."""
    from ..experiment import _run_key, training_runs

    jobs = [JobSpec("features", "features", "features", outputs=(str(features_marker(plan.out).absolute()),))]
    for seed in plan.seeds:
        for fold in plan.folds:
            for name, config in training_runs(plan, fold, seed):
                run_dir = Path(config.run_dir).absolute()  # --status may look from another folder
                key = f"{_run_key(plan, fold, seed)}/{run_dir.name}"
                k = config.num_prototypes if config.head == "lpmn" else None
                jobs.append(JobSpec(key, "train", name, seed, fold, config.head, k, str(run_dir),
                                    (str(run_dir / "metrics.json"),), after="features"))
                probes = [kp for kp in plan.k_primes if k is not None and kp <= k] if "lpmn-ps" in plan.rows else []
                if probes:
                    jobs.append(JobSpec(f"{key}/probes", "probe", f"LPMN-{k}-K'", seed, fold, "lpmn", k,
                                        str(run_dir), tuple(str(run_dir / f"probe-K{kp}.json") for kp in probes),
                                        after=key))
    return jobs


class JobLock:
    """An exclusive, non-blocking lock on a file (fcntl.flock): held while one worker runs one job, so
    that two launches never run the same job at once. Released when the process ends, however it ends."""

    def __init__(self, path: Path):
        self.path, self.fd = Path(path), None

    def __enter__(self) -> JobLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RuntimeError(f"{self.path}: another worker runs this job now; not running it twice") from None
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class RunJob(Checkpointable):
    """Runs one JobSpec of ``plan`` in a worker. Checkpointable: a job that SLURM stops at its time limit
    or preempts is requeued by submitit with this same callable, which resumes the run's last checkpoint
    (whether to resume is decided when the job starts, not when it was submitted)."""

    def __init__(self, plan, spec: JobSpec, device: str | None = None):
        self.plan, self.spec, self.device = plan, spec, device

    def __call__(self) -> str:
        spec = self.spec
        lock = Path(spec.run_dir) / ".job.lock" if spec.run_dir else self.plan.out / STATE / "features.lock"
        with JobLock(lock):
            if spec.finished():
                return f"{spec.key}: finished earlier"
            getattr(self, f"_{spec.kind}")()
        return f"{spec.key}: done"

    def _config(self):
        from ..experiment import _run_config

        config = _run_config(self.plan, self.spec.fold, self.spec.head, self.spec.k, self.spec.seed)
        return config if self.device is None else dataclasses.replace(config, device=self.device)

    def _features(self) -> None:
        """The frozen-feature cache of every fold's sets, once, before the trainings that read it."""
        from ..experiment import _run_config
        from ..training.corpus import prepare_data
        from ..data.atomic import write_text_atomic

        started = time.perf_counter()
        for fold in self.plan.folds:
            config = _run_config(self.plan, fold, "ap", seed=self.plan.seeds[0])
            if self.device is not None:
                config = dataclasses.replace(config, device=self.device)
            data = prepare_data(config)
            _log(f"features of fold {fold}: {sum(len(s.labels) for s in data.sets.values())} utterances")
        write_text_atomic(features_marker(self.plan.out), json.dumps(
            {"cache_dir": self.plan.base.cache_dir, "cached": self.plan.base.cache_features,
             "seconds": round(time.perf_counter() - started, 1)}))

    def _train(self) -> None:
        from ..experiment import Driver

        config = self._config()
        holds = dict(h.rpartition(":")[::2] for h in os.environ.get(HOLD_ENV, "").split(",") if h)
        held = self.spec.key in holds and not config.resume
        if held:
            config = dataclasses.replace(config, stop_after_steps=int(holds[self.spec.key]))
        results = Driver(self.plan, None, _log)._train(f"[{self.spec.key}]", self.spec.row, config)
        if held:
            _log(f"[{self.spec.key}] {HOLD_ENV}: holding after step {config.stop_after_steps} until killed")
            while True:
                time.sleep(1)
        if results is None:
            raise RuntimeError(f"{self.spec.key}: stopped before the end (stop_after_steps); resubmit to resume")

    def _probe(self) -> None:
        from ..experiment import Driver

        config = self._config()
        trained = json.loads((Path(config.run_dir) / "metrics.json").read_text(encoding="utf-8"))
        Driver(self.plan, None, _log)._probes(f"[{self.spec.key}]", self.spec.fold, self.spec.k, config,
                                              trained.get("protocol"))
