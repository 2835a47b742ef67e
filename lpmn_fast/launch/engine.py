"""The launcher: submits an experiment grid's missing jobs in waves, waits with a live table, then writes
the results as the sequential launcher would (lpmn_fast.experiment.Driver reads every run back).

Records live in OUT/.launch/: jobs.json (job key -> launcher, job id, log files, attempts), plan.json
(the grid, for --status) and a lock file held while the records are read and jobs submitted, so that
two launches of one folder never submit the same job twice; each worker also locks its run folder
(lpmn_fast.launch.jobs.JobLock), so that one job never runs twice at once.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path

from ..data.atomic import write_text_atomic
from .backends import LocalBackend, SlurmBackend, _alive, slurm_answers
from .jobs import STATE, JobSpec, RunJob, grid_jobs

WAVES = ("features", "train", "probe")


@contextmanager
def folder_lock(out: Path):
    """Exclusive lock on OUT/.launch/lock for the block (waits for another launch's block to end)."""
    path = out / STATE / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_records(out: Path) -> dict[str, dict]:
    path = out / STATE / "jobs.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def log_tail(record: dict, lines: int = 12) -> str:
    """The last ``lines`` lines of a job's stderr (its traceback), else of its stdout."""
    for key in ("stderr", "stdout"):
        path = Path(record.get(key) or "/nonexistent")
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()
            if text:
                return "\n".join(text[-lines:])
    return "(no log)"


def job_states(specs: list[JobSpec], records: dict[str, dict], active: dict[str, str]) -> dict[str, str]:
    """done, pending, running, failed (recorded, ended without its outputs), waiting (for an unfinished
    job) or missing, for every job; ``active``: job id -> pending/running, as the scheduler says."""
    states: dict[str, str] = {}
    for spec in specs:
        record = records.get(spec.key)
        if spec.finished():
            states[spec.key] = "done"
        elif record is not None and record["id"] in active:
            states[spec.key] = active[record["id"]]
        elif record is not None:
            states[spec.key] = "failed"
        elif spec.after is not None and states.get(spec.after) != "done":
            states[spec.key] = "waiting"
        else:
            states[spec.key] = "missing"
    return states


def best_valid(spec: JobSpec, metric: str) -> float | None:
    """The best validation ``metric`` a job has reached so far (finished results, else its last checkpoint)."""
    values = []
    for output in spec.outputs if spec.kind != "features" else ():
        path = Path(output)
        try:
            if path.is_file():
                values.append(json.loads(path.read_text(encoding="utf-8"))["valid"][metric])
            elif spec.kind == "train":
                last = Path(spec.run_dir) / "checkpoints" / "last.json"
                best = json.loads(last.read_text(encoding="utf-8"))["run"]["best"] if last.is_file() else None
                if best is not None:
                    values.append(best["value"])
        except (OSError, ValueError, KeyError, TypeError):  # a file being replaced: next look
            continue
    return max(values) if values else None


def format_table(specs: list[JobSpec], states: dict[str, str], metric: str, elapsed: float) -> str:
    counts = {s: sum(v == s for v in states.values()) for s in ("pending", "running", "done", "failed")}
    waiting = sum(v in ("waiting", "missing") for v in states.values())
    head = (f"[{_clock(elapsed)}] jobs: {counts['pending']} pending, {counts['running']} running, "
            f"{counts['done']} done, {counts['failed']} failed, {waiting} not submitted (of {len(specs)})")
    rows: dict[str, list[JobSpec]] = {}
    for spec in specs:
        rows.setdefault(spec.row, []).append(spec)
    lines = [head, f"  {'row':<14} {'done':>6} {'running':>8} {'failed':>7}  best valid {metric}"]
    for row, members in rows.items():
        done = sum(states[s.key] == "done" for s in members)
        running = sum(states[s.key] == "running" for s in members)
        failed = sum(states[s.key] == "failed" for s in members)
        values = [v for v in (best_valid(s, metric) for s in members) if v is not None]
        best = f"{100 * max(values):.2f}" if values else "-"
        lines.append(f"  {row:<14} {f'{done}/{len(members)}':>6} {running:>8} {failed:>7}  {best}")
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Launch:
    """One launch of a grid: looks at the records and the scheduler, submits what may run, waits."""

    def __init__(self, plan, specs: list[JobSpec], backend, log):
        self.plan, self.specs, self.backend, self.log = plan, specs, backend, log
        self.by_key = {s.key: s for s in specs}
        self.out = plan.out
        self.submitted: set[str] = set()  # keys submitted by this launch: a failure is not retried in it
        self.devices: dict[str, str] = {}  # local: key -> device of the jobs this launch runs

    def look(self, records: dict[str, dict]) -> dict[str, str]:
        ids = [r["id"] for r in records.values() if r["launcher"] == self.backend.name]
        active = self.backend.states(ids)
        # local workers of an earlier launch run while the launcher is slurm (or the other way): keep them
        active.update({r["id"]: "running" for r in records.values()
                       if r["launcher"] == "local" != self.backend.name and _alive(r["id"])})
        return job_states(self.specs, records, active)

    def step(self) -> dict[str, str]:
        """Under the folder lock: read the records, submit every job that may start now, save the records."""
        with folder_lock(self.out):
            records = read_records(self.out)
            states = self.look(records)
            for wave in WAVES:
                todo = [s for s in self.specs if s.kind == wave and s.key not in self.submitted
                        and states[s.key] in ("missing", "failed", "waiting")]
                if not todo:
                    continue
                if self.backend.dependencies:
                    self._submit_slurm(todo, states, records)
                else:
                    self._submit_local(todo, states, records)
            write_text_atomic(self.out / STATE / "jobs.json", json.dumps(records, indent=1))
        return states

    def _parent_id(self, spec: JobSpec, states: dict[str, str], records: dict[str, dict]) -> tuple[bool, str | None]:
        """(may it be submitted now, the job id it must wait for)."""
        if spec.after is None or states[spec.after] == "done":
            return True, None
        if states[spec.after] in ("pending", "running"):
            return True, records[spec.after]["id"]
        return False, None

    def _submit_slurm(self, todo: list[JobSpec], states: dict[str, str], records: dict[str, dict]) -> None:
        ready = [(s, dep) for s in todo for ok, dep in [self._parent_id(s, states, records)] if ok]
        if not ready:
            return
        jobs = self.backend.submit([RunJob(self.plan, s) for s, _ in ready], [dep for _, dep in ready])
        for (spec, dep), job in zip(ready, jobs):
            self._record(spec, job, records, states, "pending", None)
            self.log(f"[{spec.key}] submitted: SLURM job {job.job_id}" + (f" (after {dep})" if dep else ""))

    def _submit_local(self, todo: list[JobSpec], states: dict[str, str], records: dict[str, dict]) -> None:
        for spec in todo:
            ok, dep = self._parent_id(spec, states, records)
            if not ok or dep is not None:  # no dependencies here: start it once its parent is done
                continue
            busy = [records[k].get("device") for k, v in states.items() if v in ("pending", "running")]
            if len(busy) >= self.backend.max_parallel:
                return
            free = [d for d in self.backend.devices if d == "cpu" or d not in busy]
            if not free:
                return
            device = min(free, key=busy.count)
            # the worker sees only its GPU (CUDA_VISIBLE_DEVICES), as cuda:0
            job = self.backend.submit_one(RunJob(self.plan, spec, "cpu" if device == "cpu" else "cuda:0"), device)
            self._record(spec, job, records, states, "running", device)
            self.log(f"[{spec.key}] started: worker process {job.job_id} on {device}")

    def _record(self, spec, job, records, states, state, device) -> None:
        attempt = records.get(spec.key, {}).get("attempt", 0) + 1
        records[spec.key] = {"launcher": self.backend.name, "id": str(job.job_id), "device": device,
                             "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                             "submitted": time.time(), "attempt": attempt}
        states[spec.key] = state
        self.submitted.add(spec.key)


def _check_backend(plan) -> object:
    options = plan.launch
    if options["launcher"] == "slurm":
        if not slurm_answers():
            raise ValueError("--launcher slurm: no SLURM controller answers here (sinfo); on a cluster, run on a "
                             "login node; for a one-node SLURM on this machine: sudo bash scripts/slurm_up.sh")
        return SlurmBackend(plan.out, options)
    return LocalBackend(plan.out, options)


def save_plan(plan, specs: list[JobSpec]) -> None:
    data = {"launcher": plan.launch["launcher"], "select_metric": plan.base.select_metric,
            "jobs": [dataclasses.asdict(s) for s in specs]}
    write_text_atomic(plan.out / STATE / "plan.json", json.dumps(data, indent=1))


def launch(plan, driver, log) -> bool | None:
    """Run ``plan``'s grid with --launcher local or slurm. True once every run is in and the results are
    written (by ``driver``, as the sequential launcher writes them); None when it returned before (--no-wait,
    or a job failed: rerun the same command to resubmit what failed)."""
    backend = _check_backend(plan)
    specs = grid_jobs(plan)
    metric = plan.base.select_metric
    save_plan(plan, specs)
    session = Launch(plan, specs, backend, log)
    started = time.time()
    with folder_lock(plan.out):
        before = session.look(read_records(plan.out))
    _report(specs, before, read_records(plan.out), log)
    shown = None
    while True:
        states = session.step()
        table = format_table(specs, states, metric, time.time() - started)
        if table.partition("\n")[2] != shown:  # the live table, whenever a count or a best value changes
            log(table)
            shown = table.partition("\n")[2]
        if plan.launch["no_wait"]:
            log(f"submitted; see lpmn-experiment --status {plan.out}, and rerun this command to write the results")
            return None
        if not any(v in ("pending", "running") for v in states.values()):
            break
        time.sleep(plan.launch["poll_seconds"])
    if all(v == "done" for v in states.values()):
        log(f"all {len(specs)} jobs done in {_clock(time.time() - started)}; writing the results")
        return write_results(driver)
    _report(specs, states, read_records(plan.out), log, only=("failed", "waiting", "missing"))
    log("some jobs did not finish; rerun the same command to resubmit them (they resume their checkpoints)")
    return None


def write_results(driver) -> bool:
    """results.json and results.md as the sequential launcher writes them: ``driver`` (Driver) reads every
    finished run back; written once, at the end (Driver.run also writes after each run, for a grid that
    trains as it goes)."""
    final = driver.write
    driver.write = lambda complete: final(complete) if complete else None
    try:
        return driver.run()
    finally:
        del driver.write


def _report(specs, states, records, log, only=("running", "pending", "failed", "missing", "waiting")) -> None:
    """One line per unfinished job (job id; a failed job's log tail)."""
    done = sum(v == "done" for v in states.values())
    if only[0] == "running":
        log(f"{done} of {len(specs)} jobs finished earlier")
    for spec in specs:
        state = states[spec.key]
        if state not in only:
            continue
        record = records.get(spec.key)
        where = f" ({record['launcher']} job {record['id']})" if record else ""
        log(f"  {spec.key}: {state}{where}" + (f" after {spec.after}" if state == "waiting" else ""))
        if state == "failed":
            log("    " + log_tail(record).replace("\n", "\n    "))


def print_status(out: Path) -> int:
    """lpmn-experiment --status OUT: the job table of a launched grid, and each unfinished job."""
    path = Path(out) / STATE / "plan.json"
    if not path.is_file():
        print(f"lpmn-experiment: {out} holds no launched grid ({path} missing; the sequential launcher keeps none)")
        return 2
    data = json.loads(path.read_text(encoding="utf-8"))
    specs = [JobSpec(**{**s, "outputs": tuple(s["outputs"])}) for s in data["jobs"]]
    records = read_records(Path(out))
    active = {}
    if any(r["launcher"] == "slurm" for r in records.values()) and slurm_answers():
        active.update(SlurmBackend.states([r["id"] for r in records.values() if r["launcher"] == "slurm"]))
    active.update({r["id"]: "running" for r in records.values() if r["launcher"] == "local" and _alive(r["id"])})
    states = job_states(specs, records, active)
    first = min((r["submitted"] for r in records.values()), default=time.time())
    print(format_table(specs, states, data["select_metric"], time.time() - first))
    _report(specs, states, records, print)
    return 0
