"""lpmn-experiment's launcher flags: where the runs of a grid go (this process, worker processes, SLURM)."""

from __future__ import annotations

import argparse
from pathlib import Path

LAUNCHERS = ("sequential", "local", "slurm")
# Keys the flags below add to the parsed namespace (lpmn_fast.experiment.make_plan moves them into Plan.launch).
LAUNCH_FIELDS = ("launcher", "max_parallel", "devices", "slurm_partition", "slurm_gpus_per_job",
                 "slurm_cpus_per_job", "slurm_mem", "slurm_time", "slurm_max_parallel", "slurm_qos",
                 "slurm_account", "slurm_option", "no_wait", "poll_seconds", "status")


def _devices(text: str) -> list[str]:
    devices = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in devices if d != "cpu" and not (d.startswith("cuda:") and d[5:].isdigit())]
    if not devices or bad:
        raise argparse.ArgumentTypeError(f"expected a comma list of cpu or cuda:<index>, got {text!r}")
    return devices


def _sbatch_option(text: str) -> tuple[str, str]:
    key, sep, value = text.removeprefix("--").partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (an sbatch option without its --), got {text!r}")
    return key.replace("-", "_"), value if sep else ""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_launcher_arguments(group) -> None:
    """The launcher flags, on ``group`` (an argparse parser or argument group)."""
    group.add_argument("--launcher", choices=LAUNCHERS, default="sequential",
                       help="sequential: every run in this process, one after another (default); local: each "
                            "(seed, fold, row) training a worker process on this machine, --max-parallel at once, "
                            "each on one of --devices; slurm: each a SLURM job (submitit), one job array per wave")
    group.add_argument("--max-parallel", type=_positive, metavar="N",
                       help="local: runs at once (default: the number of --devices)")
    group.add_argument("--devices", type=_devices, metavar="LIST",
                       help="local: comma list of devices the runs are pinned to, one run per GPU at a time, "
                            "e.g. cuda:0,cuda:1 (default: every visible GPU, else cpu)")
    group.add_argument("--slurm-partition", metavar="NAME", help="slurm: partition (default: the cluster's default)")
    group.add_argument("--slurm-gpus-per-job", type=int, default=1, metavar="N",
                       help="slurm: GPUs per job (default 1; 0: none)")
    group.add_argument("--slurm-cpus-per-job", type=_positive, default=8, metavar="N",
                       help="slurm: CPU cores per job (default 8)")
    group.add_argument("--slurm-mem", metavar="MEM",
                       help="slurm: memory per job, e.g. 64G (default: the partition's default)")
    group.add_argument("--slurm-time", type=_positive, default=24 * 60, metavar="MINUTES",
                       help="slurm: time limit per job in minutes (default 1440); a job stopped at its limit is "
                            "requeued and resumes from its last checkpoint")
    group.add_argument("--slurm-max-parallel", type=_positive, metavar="N",
                       help="slurm: most jobs of one array running at once (default: submitit's 256)")
    group.add_argument("--slurm-qos", metavar="QOS", help="slurm: quality of service")
    group.add_argument("--slurm-account", metavar="NAME", help="slurm: account to charge")
    group.add_argument("--slurm-option", type=_sbatch_option, action="append", default=[], metavar="KEY=VALUE",
                       help="slurm: any other sbatch option, e.g. constraint=a100 or exclude=node7; repeatable")
    group.add_argument("--no-wait", action="store_true",
                       help="slurm (and local): submit what may be submitted now and return (locally that is only "
                            "the jobs whose inputs are ready); rerun the same command (or --status OUT) to see "
                            "progress, and once every run is in to write the results")
    group.add_argument("--poll-seconds", type=float, default=5.0, metavar="S",
                       help="local and slurm: seconds between looks at the jobs while waiting (default 5)")
    group.add_argument("--status", type=Path, metavar="OUT",
                       help="print the job table of experiment OUT (pending, running, done, failed; the best "
                            "validation metric per row) and exit")
