"""sm_90 compile gate (issue 11): the committed report is current and green, and a real sm_90a compile works.

The full gate (every config of every kernel, 10-20 minutes on 2 cores) runs under
``pytest --benchmark`` (benchmarks/bench_compile_gate.py) and ``python -m benchmarks.compile_report``.
The tests here need the kernels module's GPU config lists, which it builds only when not
interpreting: they run the tool in a subprocess without TRITON_INTERPRET.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.compile_report import SHARED_LIMIT, Result, check, to_markdown

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "results" / "sm90-compile.md"


def _gpu_mode(code_or_args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, *code_or_args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _report_rows() -> dict[tuple, list[str]]:
    rows = {}
    for line in REPORT.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 12 and cells[0].startswith("_"):
            rows[(cells[0], cells[1], cells[2], int(cells[3]), int(cells[4]))] = cells
    return rows


def test_committed_report_lists_every_current_config_and_is_green():
    proc = _gpu_mode(["-c", "import json; from benchmarks.compile_report import jobs, describe; "
                            "print(json.dumps([describe(j) for j in jobs()]))"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    current = [tuple(row) for row in json.loads(proc.stdout.strip().splitlines()[-1])]
    rows = _report_rows()
    missing = [key for key in current if key not in rows]
    assert not missing, (f"{len(missing)} config(s) not in {REPORT.name} (first: {missing[0]}): re-run "
                         "`python -m benchmarks.compile_report` and commit the report")
    assert "**Gate: green**" in REPORT.read_text()
    for key in current:
        cells = rows[key]
        assert cells[-1] == "", f"{key}: {cells[-1]}"
        if key[1] in ("bf16", "fp16"):
            assert cells[6] == cells[7] == "0", f"{key} spills"
        assert float(cells[9]) * 1024 <= SHARED_LIMIT


def test_first_bf16_config_of_every_kernel_compiles_for_sm90a(tmp_path):
    out = tmp_path / "sm90.md"
    proc = _gpu_mode(["-m", "benchmarks.compile_report", "--first-only", "--variant", "bf16", "--out", str(out)],
                     timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "**Gate: green**" in text
    assert "| _prototype_mil_fwd | bf16 |" in text and "| True |" in text  # wgmma: the Hopper tensor-core path


def test_running_under_the_interpreter_is_refused():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_report", "--out", "-"], cwd=ROOT,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "TRITON_INTERPRET" in proc.stderr


def _result(variant="bf16", **fields):
    base = dict(kernel="_k", variant=variant, config="T64", num_warps=4, num_stages=3, ok=True, registers=100,
                spill_stores=0, spill_loads=0, stack=0, shared=1024, wgmma=True)
    return Result(**{**base, **fields})


@pytest.mark.parametrize("fields,variant,bad", [
    ({}, "bf16", False),
    ({"spill_stores": 8, "spill_loads": 8}, "bf16", True),
    ({"spill_stores": 8, "spill_loads": 8}, "fp16", True),
    ({"spill_stores": 8, "spill_loads": 8}, "fp32 tf32x3", False),  # reported, not gated
    ({"shared": SHARED_LIMIT + 1}, "fp32 ieee", True),
    ({"ok": False, "error": "CompilationError: x"}, "fp32 tf32", True),
])
def test_gate_rules(fields, variant, bad):
    results = [_result(variant, **fields)]
    assert bool(check(results)) == bad
    md = to_markdown(results, helpers=["_helper"])
    assert ("**Gate: RED**" in md) == bad and "_helper" in md
