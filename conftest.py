"""Repository-wide pytest set-up.

* ``pytest`` runs the tests in tests/; ``pytest --benchmark`` runs the benchmarks in benchmarks/
  instead (pytest-benchmark alone rejects ``--benchmark`` as an ambiguous prefix of its options).
* Without a GPU, Triton kernels run through its CPU interpreter. TRITON_INTERPRET must be set
  before any kernel is decorated, i.e. before lpmn_fast.kernels is imported: here, at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).parent


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmarks in benchmarks/ (speed and memory) instead of the tests",
    )


def pytest_ignore_collect(collection_path, config):
    path = Path(collection_path).resolve()
    benchmarks = config.getoption("--benchmark")
    if not benchmarks and path.is_relative_to(ROOT / "benchmarks"):
        return True
    if benchmarks and path.is_relative_to(ROOT / "tests"):
        return True
    return None
