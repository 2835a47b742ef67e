"""Set-up of ``pytest --benchmark``: options, case parametrisation, run order, time budget, results JSON.

Options (each also read from an environment variable, for scripts):
  --bench-profile NAME  auto (gpu with CUDA, else cpu), cpu, gpu or gpu-quick    LPMN_BENCH_PROFILE
  --bench-out PATH      results JSON; the Markdown and PNG go beside it          LPMN_BENCH_OUT
                        (default benchmarks/results/<device>_<profile>.json)
  --bench-budget-s S    cases that would start after S seconds are skipped       LPMN_BENCH_BUDGET_S
Write them as --option=value: pytest reads the options of this conftest only after it has decided
which paths to collect, and in ``--bench-out PATH`` it would take PATH for a test path.
The JSON is rewritten after every case, so a run cut short still leaves its results.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from .cases import LENGTH_DISTRIBUTION, Case, matmul_cases, model_step_cases, op_cases, resolve_profile, train_cases
from .report import derive, render, summary

RESULTS = Path(__file__).parent / "results"
# Seconds a case needs left in the budget to be worth starting: compiling dominates on a GPU.
MIN_LEFT_S = {"compile": 60.0, "compile-max-autotune": 150.0}
# On a CPU (the rehearsal of a GPU run, a shared machine) Inductor's C++ compile of one case takes
# a minute or more.
CPU_MIN_LEFT_S = {"compile": 90.0}
ENV_KEY = pytest.StashKey["BenchEnv"]()


def pytest_addoption(parser):
    group = parser.getgroup("lpmn benchmarks")
    group.addoption("--bench-profile", default=os.environ.get("LPMN_BENCH_PROFILE", "auto"),
                    help="benchmark shapes: auto (gpu with CUDA, else cpu), cpu, gpu, gpu-quick")
    group.addoption("--bench-out", default=os.environ.get("LPMN_BENCH_OUT"),
                    help="results JSON path (default benchmarks/results/<device>_<profile>.json)")
    group.addoption("--bench-budget-s", type=float, default=float(os.environ.get("LPMN_BENCH_BUDGET_S", "0")) or None,
                    help="skip cases that would start after this many seconds")


class BenchEnv:
    """Session state: device, profile, providers, time budget and the results being written."""

    def __init__(self, config):
        # Imported here: a plain `pytest` loads this conftest too, and needs none of lpmn_fast's ops.
        from .common import Providers, device_info, device_slug, matmul_settings, versions

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.profile = resolve_profile(config.getoption("--bench-profile"), self.device.type == "cuda")
        if self.profile.torch_threads:
            torch.set_num_threads(self.profile.torch_threads)
        self.providers = Providers(self.device)
        self.budget_s = config.getoption("--bench-budget-s")
        self.start = time.monotonic()
        info = device_info(self.device)
        out = config.getoption("--bench-out")
        self.path = Path(out) if out else RESULTS / f"{device_slug(info)}_{self.profile.name}.json"
        self.doc = {
            "schema": 1,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "profile": self.profile.name,
            "device": info,
            "versions": versions(),
            "settings": {**matmul_settings(), "length_distribution": LENGTH_DISTRIBUTION, "tau": 1.0},
            "memory_note": None if self.device.type == "cuda" else
            "CPU: peak memory not measured, torch keeps no CPU peak-allocation counter",
            "records": [],
        }

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def budget_reason(self, case: Case) -> str | None:
        """Why ``case`` should not start with the time left, or None."""
        if self.budget_s is None:
            return None
        need = (MIN_LEFT_S if self.device.type == "cuda" else CPU_MIN_LEFT_S).get(case.provider, 0.0)
        if self.budget_s - self.elapsed() <= need:
            # No seconds-left figure in the text: the report groups cases by reason.
            if need:
                return (f"time budget of {self.budget_s:.0f} s: less than the ~{need:.0f} s a {case.provider} "
                        "case needs was left")
            return f"time budget of {self.budget_s:.0f} s spent"
        return None

    def admit(self, case: Case) -> None:
        """Skip (or fail) ``case``, recording why, unless the budget and its provider allow it."""
        reason = self.budget_reason(case)
        if reason:
            self.skip(case, reason)
        problem = self.providers.unavailable(case.provider)
        if problem and problem[0] == "skipped":
            self.skip(case, problem[1])
        if problem:
            self.record(case, status="failed", reason=problem[1])
            pytest.fail(problem[1])

    def record(self, case: Case, **fields) -> None:
        self.doc["records"].append({**case.describe(), **fields, **self.modelled(case, fields.get("status"))})
        self.write()

    @staticmethod
    def modelled(case: Case, status: str | None) -> dict:
        """The roofline ledger's modelled figures of a measured op or matmul case (benchmarks/roofline.py)."""
        if status not in ("ok", "untimed") or case.kind not in ("op", "matmul"):
            return {}
        try:
            from .roofline import modelled

            figures = modelled(case.kind, case.provider, case.mode, case.shape, case.dtype, case.seed)
        except Exception as e:  # the model must never cost a measurement
            return {"modelled_error": f"{type(e).__name__}: {e}"[:200]}
        return {"modelled": figures} if figures else {}

    def skip(self, case: Case, reason: str):
        self.record(case, status="skipped", reason=reason)
        pytest.skip(reason)

    def write(self) -> None:
        from lpmn_fast.data.atomic import write_text_atomic

        from .report import modelled_machine

        doc = {**self.doc, "records": derive(self.doc["records"], modelled_machine(self.doc))}
        # Atomic: readers never see half a file, even if the run is killed.
        write_text_atomic(self.path, json.dumps(doc, indent=1) + "\n")


@pytest.fixture(scope="session")
def bench_env(request) -> BenchEnv:
    return request.config.stash[ENV_KEY]


def pytest_configure(config):
    if config.getoption("--benchmark", default=False):
        config.stash[ENV_KEY] = BenchEnv(config)


def pytest_generate_tests(metafunc):
    if not {"op_case", "train_case", "matmul_case", "model_step_case"} & set(metafunc.fixturenames):
        return
    cuda = torch.cuda.is_available()
    profile = resolve_profile(metafunc.config.getoption("--bench-profile"), cuda)
    for name, cases in (("op_case", op_cases(profile)), ("train_case", train_cases(profile)),
                        ("matmul_case", matmul_cases(profile, cuda)), ("model_step_case", model_step_cases(profile))):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, cases, ids=[c.id for c in cases])


def _priority(item) -> int:
    callspec = getattr(item, "callspec", None)
    for name in ("matmul_case", "op_case", "train_case", "model_step_case"):
        if callspec is not None and name in callspec.params:
            return callspec.params[name].priority
    return 1000


def pytest_collection_modifyitems(session, config, items):
    # Most important cases first, across files, so that a time budget cuts the least important.
    if config.getoption("--benchmark", default=False):
        items.sort(key=_priority)


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables, so the short table ends the output
def pytest_terminal_summary(terminalreporter, config):
    if ENV_KEY not in config.stash:
        return
    env = config.stash[ENV_KEY]
    if not env.doc["records"]:
        return
    env.write()
    written = [env.path] + render(env.path)
    terminalreporter.write_sep("-", f"lpmn benchmark results ({env.elapsed():.0f} s)")
    for path in written:
        terminalreporter.write_line(f"wrote {path}")
    terminalreporter.write_line(summary(json.loads(env.path.read_text())))
