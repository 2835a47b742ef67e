"""Where jobs run, through submitit: SLURM (job arrays, dependencies) or worker processes on this machine.

Both answer the same questions: submit a wave of jobs, and which recorded job ids are still queued or
running. A job id that the backend no longer knows has ended; whether it succeeded is read off its
output files (lpmn_fast.launch.jobs.JobSpec.finished), not asked of the scheduler (a cluster without
an accounting database cannot say).
"""

from __future__ import annotations

import getpass
import subprocess
from pathlib import Path

import submitit

from .jobs import STATE

# squeue states of a job that will still run (or is running); anything else has ended.
_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "CONFIGURING"}
_RUNNING = {"RUNNING", "COMPLETING", "RESIZING", "STAGE_OUT", "SIGNALING"}


def slurm_answers() -> bool:
    """Whether a SLURM controller answers here (sinfo runs and lists a node)."""
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%N"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


class SlurmBackend:
    """SLURM through submitit.SlurmExecutor: one job array per wave, dependencies as sbatch --dependency."""

    name = "slurm"
    dependencies = True

    def __init__(self, out: Path, options: dict):
        self.options = options
        self.executor = submitit.SlurmExecutor(folder=out / STATE / "slurm", max_num_timeout=30)
        extra = {"kill_on_invalid_dep": "yes"}  # a job whose dependency failed is cancelled, not left pending
        extra.update(dict(options["slurm_option"]))
        params = {"job_name": f"lpmn-{out.name}", "cpus_per_task": options["slurm_cpus_per_job"],
                  "time": options["slurm_time"], "additional_parameters": extra}
        if options["slurm_gpus_per_job"]:
            params["gpus_per_node"] = options["slurm_gpus_per_job"]
        for key in ("partition", "mem", "qos", "account"):
            if options[f"slurm_{key}"]:
                params[key] = options[f"slurm_{key}"]
        if options["slurm_max_parallel"]:
            params["array_parallelism"] = options["slurm_max_parallel"]
        self.executor.update_parameters(**params)
        self.extra = extra

    def submit(self, calls: list, after: list[str | None]) -> list:
        """Submit ``calls`` (RunJob), each after the job id in ``after`` (or none): one array for those
        with no dependency, one array for those after a single common job, one job for each of the rest."""
        jobs: list = [None] * len(calls)
        groups: dict[str | None, list[int]] = {}
        for i, dep in enumerate(after):
            groups.setdefault(dep, []).append(i)
        for dep, indices in groups.items():
            extra = {**self.extra, **({"dependency": f"afterok:{dep}"} if dep else {})}
            self.executor.update_parameters(additional_parameters=extra)
            if len(indices) == 1:
                jobs[indices[0]] = self.executor.submit(calls[indices[0]])
                continue
            with self.executor.batch():
                submitted = [self.executor.submit(calls[i]) for i in indices]
            for i, job in zip(indices, submitted):
                jobs[i] = job
        self.executor.update_parameters(additional_parameters=self.extra)
        return jobs

    @staticmethod
    def states(ids: list[str]) -> dict[str, str]:
        """'pending' or 'running' for each id SLURM still holds; ids it has forgotten are absent."""
        done = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"squeue failed: {done.stderr.strip()}")
        known = {}
        for line in done.stdout.splitlines():
            job_id, _, state = line.strip().partition("|")
            if state in _QUEUED:
                known[job_id] = "pending"
            elif state in _RUNNING:
                known[job_id] = "running"
        return {i: known[i] for i in ids if i in known}

    def cancel(self, job_id: str) -> None:
        subprocess.run(["scancel", job_id], check=False)


class LocalBackend:
    """Worker processes on this machine through submitit.LocalExecutor, each pinned to one device
    (CUDA_VISIBLE_DEVICES); no dependencies: the launcher submits a job once the one it waits for is done."""

    name = "local"
    dependencies = False

    def __init__(self, out: Path, options: dict):
        import torch

        self.folder = out / STATE / "local"
        self.devices = options["devices"] or ([f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"])
        self.max_parallel = options["max_parallel"] or len(self.devices)
        self.processes: dict[str, object] = {}  # job id -> the submitit job this launcher started

    def executor(self, device: str):
        executor = submitit.LocalExecutor(folder=self.folder, max_num_timeout=30)
        gpus = () if device == "cpu" else (int(device.split(":")[1]),)
        executor.update_parameters(timeout_min=7 * 24 * 60, gpus_per_node=len(gpus), visible_gpus=gpus)
        return executor

    def submit_one(self, call, device: str):
        job = self.executor(device).submit(call)
        self.processes[job.job_id] = job
        return job

    def states(self, ids: list[str]) -> dict[str, str]:
        out = {}
        for job_id in ids:
            job = self.processes.get(job_id)
            if job is not None:
                alive = job._process.poll() is None  # also reaps it
            else:  # a worker started by an earlier launch: alive while its controller process is
                alive = _alive(job_id)
            if alive:
                out[job_id] = "running"
        return out

    def cancel(self, job_id: str) -> None:
        job = self.processes.get(job_id)
        if job is not None:
            job.cancel()


def _alive(pid: str) -> bool:
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z" and b"submitit" in cmdline
