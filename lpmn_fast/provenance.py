"""Where a result came from: code version, library versions, device, precision, kernel, wall time.

``provenance(...)`` is recorded in every metrics.json, results.json and model card, so that a
number can be traced to the code (lpmn_fast version, git commit and whether the checkout had
uncommitted changes) and the software and hardware that made it. Library versions come from
the installed distributions (``importlib.metadata``): nothing here imports triton or
transformers, which ``import lpmn_fast`` keeps lazy.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# Distributions whose versions a result records (None when not installed).
LIBRARIES = ("torch", "triton", "transformers", "torchaudio", "huggingface_hub", "numpy")


def package_version() -> str:
    """lpmn_fast's version: the installed distribution's, else the source tree's ``__version__``."""
    try:
        return metadata.version("lpmn_fast")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def library_versions() -> dict[str, str | None]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict | None:
    """{"commit", "dirty"} of the checkout lpmn_fast is imported from, None outside a git checkout
    (e.g. a wheel install). dirty: tracked files differ from the commit (untracked files ignored)."""
    commit = _git("rev-parse", "HEAD")
    # The package itself must be tracked there: an install inside some other repository (a venv in a
    # checkout) is not "run from a checkout".
    if not commit or _git("ls-files", "--error-unmatch", Path(__file__).name) is None:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_name(device=None) -> str:
    """The GPU's name for a CUDA device, else the CPU's (from /proc/cpuinfo where there is one)."""
    torch = sys.modules.get("torch")
    if torch is not None and device is not None and torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cuda_version() -> str | None:
    """The CUDA version torch was built with (None for CPU builds or when torch was never imported)."""
    torch = sys.modules.get("torch")
    return getattr(getattr(torch, "version", None), "cuda", None)


def provenance(*, device=None, precision: str | None = None, kernel: dict | str | None = None,
               seconds: float | None = None) -> dict:
    """JSON-able record of what made a result.

    device: the torch device it ran on; precision: the training/inference precision (e.g.
    "float32", "bf16-mixed"); kernel: the prototype-MIL backend (as asked and as used); seconds:
    wall time of the run.
    """
    return {
        "lpmn_fast": package_version(),
        "git": git_state(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "cuda": cuda_version(),
        "device": None if device is None else str(device),
        "device_name": device_name(device),
        "precision": precision,
        "kernel": kernel,
        "wall_seconds": None if seconds is None else round(float(seconds), 1),
        "platform": platform.platform(),
    }


def describe(record: dict) -> str:
    """One line for a Markdown file or a card: version, commit, libraries, device."""
    git = record.get("git")
    code = f"lpmn_fast {record['lpmn_fast']}"
    if git:
        code += f" (commit {git['commit'][:12]}{', uncommitted changes' if git.get('dirty') else ''})"
    libs = ", ".join(f"{k} {v}" for k, v in record["libraries"].items() if v and k in ("torch", "triton",
                                                                                      "transformers"))
    parts = [code, f"Python {record['python']}", libs, f"CUDA {record['cuda']}" if record.get("cuda") else "no CUDA",
             f"device {record['device_name']}"]
    if record.get("precision"):
        parts.append(f"precision {record['precision']}")
    if record.get("kernel"):
        kernel = record["kernel"]
        parts.append("kernel " + (kernel if isinstance(kernel, str) else
                                  f"{kernel.get('used')} (asked {kernel.get('asked')})"))
    if record.get("wall_seconds") is not None:
        parts.append(f"wall time {record['wall_seconds']} s")
    return "; ".join(parts)


__all__ = ["describe", "device_name", "git_state", "library_versions", "package_version", "provenance"]
