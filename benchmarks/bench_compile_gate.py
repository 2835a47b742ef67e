"""The full sm_90 compile gate (issue 11) under ``pytest --benchmark``: every config, every variant.

About 10-20 minutes on 2 CPU cores (112 configs; far less once Triton's cache holds them), hence
here and not in the test suite (which checks the committed report and compiles one config per
kernel). Writes to a temporary file; regenerate the committed report with
``python -m benchmarks.compile_report``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sm90_compile_gate(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the GPU config lists
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_report", "--jobs", "2", "--out",
                           str(tmp_path / "sm90-compile.md")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3600)
    gate = [line for line in proc.stderr.splitlines() if line.startswith("GATE:")]
    assert proc.returncode == 0, "\n".join(gate) or proc.stderr[-3000:]
