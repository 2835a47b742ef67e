"""lpmn-experiment's launchers for a grid of runs: worker processes on this machine or SLURM jobs, both
through submitit (options: the flags; jobs: the grid's jobs and the worker callable; backends: SLURM and
local; engine: submission in waves, records, lock, live table, --status)."""

from .engine import launch, print_status

__all__ = ["launch", "print_status"]
