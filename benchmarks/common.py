"""Run-time pieces of the benchmark suite: device description, inputs, providers, memory, rounds.

Timing itself is pytest-benchmark's; the functions handed to it end with :func:`sync` so that a
round's time covers the GPU work, not just its launch.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import re
import time
from contextlib import contextmanager

import torch
import torch._dynamo

from lpmn_fast import prototype_mil
from lpmn_fast.ops.output import PrototypeMILOutput
from lpmn_fast.ops.reference import _unit_vectors, first_argmax, frame_mask, prototype_mil_reference
from lpmn_fast.ops.validation import validate_inputs

from .cases import COMPILE_MODES, DTYPES, Case

TAU = 1.0  # the paper's default temperature


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict:
    """What the numbers were measured on: name, type and the properties that bound the rates."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(device),
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_bytes": props.total_memory,
            "l2_cache_bytes": getattr(props, "L2_cache_size", None),
        }
    return {"type": "cpu", "name": _cpu_model(), "torch_threads": torch.get_num_threads()}


def device_slug(info: dict) -> str:
    """File-name form of the device name, e.g. ``nvidia-h100-80gb-hbm3`` or ``cpu-intel-r-xeon-r-...``."""
    name = info["name"] if info["type"] == "cuda" else f"cpu-{info['name']}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or info["type"]


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _package_version("triton"),
        "cuda": torch.version.cuda,
        "lpmn_fast": _package_version("lpmn_fast"),
        "pytest_benchmark": _package_version("pytest-benchmark"),
    }


def matmul_settings() -> dict:
    """Settings that change what "the float32 matmul rate" means."""
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def input_copies(case: Case, device: torch.device) -> int:
    """How many input sets to rotate through, so that on CUDA round i+1 does not find x in L2."""
    if device.type != "cuda":
        return 1
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 * 2**20
    x_bytes = case.B * case.T * case.C * DTYPES[case.dtype].itemsize
    return max(1, min(4, math.ceil(2 * l2 / x_bytes)))


def random_inputs(case: Case, device: torch.device, copies: int, requires_grad: bool):
    """``copies`` random (x (B, T, C), prototypes (K, C)) pairs; never zeros, which run unrealistically fast."""
    g = torch.Generator(device=device).manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    sets = []
    for _ in range(copies):
        x = torch.randn(case.B, case.T, case.C, generator=g, device=device, dtype=dtype)
        p = torch.randn(case.K, case.C, generator=g, device=device, dtype=dtype)
        sets.append((x.requires_grad_(requires_grad), p.requires_grad_(requires_grad)))
    return sets


@contextmanager
def peak_memory(device: torch.device):
    """Yield a dict whose "bytes" becomes the peak CUDA allocation above the allocation at entry.

    On the CPU torch keeps no peak-allocation counter: "bytes" stays None and "note" says why.
    """
    result = {"bytes": None, "note": None}
    if device.type != "cuda":
        result["note"] = "not measured on the CPU (torch keeps no CPU peak-allocation counter)"
        yield result
        return
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    yield result
    sync(device)
    result["bytes"] = torch.cuda.max_memory_allocated(device) - base


def choose_rounds(seconds_per_call: float, target_s: float, bounds: tuple[int, int]) -> int:
    """Rounds that fill about ``target_s`` of timed work, within ``bounds`` (min, max)."""
    lo, hi = bounds
    if seconds_per_call <= 0:
        return hi
    return max(lo, min(hi, math.ceil(target_s / seconds_per_call)))


def timed_call(fn, *args) -> tuple[float, object]:
    """Wall time of one call (already synchronised by ``fn``) and its result."""
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def _similarities(x, prototypes, lengths):
    """The reference's first half (for :meth:`Providers._full_pass_fallback`): cos (B, T, K), valid
    (B, T) and the factors of eq. (4)'s closed form, weight (B, T, K) and 1 / |p|^2 (K,)."""
    valid = frame_mask(lengths, x.shape[1])
    xh, ph, p_norm = _unit_vectors(x, prototypes, valid)
    cos = xh @ ph.T
    weight = ((xh.detach() ** 2).sum(dim=-1, keepdim=True) - cos.detach() ** 2) * valid[..., None]
    return cos, valid, weight, p_norm.detach() ** -2


def _pooled(cos, valid, tau, out_dtype: torch.dtype):
    """The reference's second half: softmax over K, max over valid frames, nearest prototypes."""
    s = torch.softmax(cos / tau, dim=-1)
    pooled, frame_index = s.masked_fill(~valid[..., None], -1.0).max(dim=1)
    nearest = first_argmax(cos.detach(), dim=-1).masked_fill(~valid, -1)
    return pooled.to(out_dtype), frame_index, nearest


class Providers:
    """The op as each provider runs it, built once per session.

    triton: ``prototype_mil(backend="triton")``; eager: ``backend="torch"``; compile and
    compile-max-autotune: the reference under ``torch.compile`` after the same input validation
    as the public op, so that all providers pay for it alike.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._triton_reason: str | None | bool = False  # False: not probed yet
        self._compiled: dict[str, object] = {}
        self._compile_mode: str | None = None
        # compile provider -> why the reference's own full pass failed to compile (then the fallback runs)
        self.full_pass_fallback: dict[str, str] = {}
        cfg = torch._dynamo.config
        # Every shape of a sweep is a recompile; the default limit (8) would fall back to eager silently.
        limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
        setattr(cfg, limit, max(getattr(cfg, limit), 256))

    def unavailable(self, provider: str) -> tuple[str, str] | None:
        """("skipped" or "failed", why) when ``provider`` cannot be measured here, else None."""
        if provider == "triton":
            return self._probe_triton()
        if provider == "compile-max-autotune" and self.device.type != "cuda":
            return "skipped", "max-autotune-no-cudagraphs is measured on GPUs only (it tunes GPU kernels)"
        return None

    def _probe_triton(self) -> tuple[str, str] | None:
        """One tiny forward + backward with Fisher, once per session."""
        if self._triton_reason is not False:
            return self._triton_reason
        if self.device.type != "cuda":
            self._triton_reason = "skipped", "no CUDA device: the Triton CPU interpreter is not a performance target"
            return self._triton_reason
        x = torch.randn(2, 5, 8, device=self.device, requires_grad=True)
        p = torch.randn(3, 8, device=self.device, requires_grad=True)
        fisher = torch.zeros(3, device=self.device)
        try:
            out = prototype_mil(x, p, torch.tensor([5, 3], device=self.device), tau=TAU, fisher=fisher,
                                backend="triton")
            out.pooled.sum().backward()
            sync(self.device)
            self._triton_reason = None
        except NotImplementedError as e:
            self._triton_reason = "skipped", f"backend='triton' not available yet: {e}"
        except Exception as e:  # a broken fused op must show as failures, not as skips
            self._triton_reason = "failed", f"backend='triton' failed a tiny probe call: {type(e).__name__}: {e}"[:300]
        return self._triton_reason

    def op(self, provider: str):
        """A callable ``(x, prototypes, lengths, fisher) -> PrototypeMILOutput`` for ``provider``."""
        if provider in ("triton", "eager"):
            backend = "triton" if provider == "triton" else "torch"
            return lambda x, p, lengths, fisher: prototype_mil(x, p, lengths, tau=TAU, fisher=fisher, backend=backend)
        if provider in COMPILE_MODES:
            compiled = self._compiled_reference(provider)

            def run(x, p, lengths, fisher):
                lengths = validate_inputs(x, p, lengths, TAU, fisher, "torch", False)
                if fisher is not None and provider in self.full_pass_fallback:
                    return self._full_pass_fallback(provider)(x, p, lengths, fisher)
                try:
                    return compiled(x, p, lengths, TAU, fisher)
                except Exception as error:  # noqa: BLE001 - the compiler's errors have many types
                    if fisher is None or not x.requires_grad:
                        raise
                    # torch 2.11's Inductor rejects the reference's Fisher hook on an intermediate
                    # ("Argument 'p_norm' ... used before it has been defined"); 2.13 accepts it.
                    self.full_pass_fallback[provider] = f"{type(error).__name__}: {error}"[:200]
                    return self._full_pass_fallback(provider)(x, p, lengths, fisher)

            return run
        raise ValueError(f"unknown provider {provider!r}")

    def _full_pass_fallback(self, provider: str):
        """The full pass compiled the way older torch accepts: the reference in two compiled halves
        (similarities; softmax and maxima), each with its backward compiled, and eq. (4)'s Fisher
        reduction as a hook on the similarities between them (eager, a few ops), where the
        reference registers it inside its one graph. Raises NotImplementedError, which skips the
        case with the reason, when this fails too."""
        key = f"{provider}-fallback"
        if key not in self._compiled:
            mode = COMPILE_MODES[provider]
            self._compiled[key] = (torch.compile(_similarities, mode=mode, dynamic=False),
                                   torch.compile(_pooled, mode=mode, dynamic=False))
        first, second = self._compiled[key]

        def run(x, p, lengths, fisher):
            try:
                cos, valid, weight, inv_p_sq = first(x, p, lengths)
                if cos.requires_grad:
                    def hook(grad: torch.Tensor) -> None:
                        fisher.add_(((grad.detach() ** 2 * weight).sum(dim=(0, 1)) * inv_p_sq).to(fisher.dtype))

                    cos.register_hook(hook)
                return PrototypeMILOutput(*second(cos, valid, TAU, x.dtype))
            except Exception as error:  # noqa: BLE001
                raise NotImplementedError(
                    f"torch.compile of the full pass unavailable on torch {torch.__version__}: "
                    f"{self.full_pass_fallback[provider]}; the hook-free formulation failed too: "
                    f"{type(error).__name__}: {error}"[:400]) from error

        return run

    def _compiled_reference(self, provider: str):
        mode = COMPILE_MODES[provider]
        if provider not in self._compiled:
            if self._compiled and self._compile_mode != mode:
                # One code object holds one compile cache; start afresh when the mode changes.
                torch._dynamo.reset()
                self._compiled.clear()
            self._compiled[provider] = torch.compile(prototype_mil_reference, mode=mode, dynamic=False)
            self._compile_mode = mode
        return self._compiled[provider]


def _stats(benchmark) -> dict | None:
    """pytest-benchmark's statistics of the timed rounds (None under --benchmark-disable)."""
    if benchmark.stats is None:
        return None
    s = benchmark.stats.stats
    return {k: getattr(s, k) for k in ("median", "q1", "q3", "iqr", "min", "max", "mean", "stddev", "rounds")}


def run_case(benchmark, env, case, setup, target, **extra):
    """Measure ``target`` and record the case; failures are recorded too, then raised.

    A NotImplementedError (a backend that does not cover this case yet) skips the case with its message.
    """
    try:
        _measure(benchmark, env, case, setup, target, **extra)
    except NotImplementedError as e:
        env.skip(case, f"not implemented: {e}")
    except Exception as e:
        env.record(case, status="failed", reason=f"{type(e).__name__}: {e}"[:300])
        raise


def _measure(benchmark, env, case, setup, target, **extra):
    """First call (compile, autotune), a sizing call, the timed rounds, then one call under peak memory."""
    first_s, _ = timed_call(target, *setup()[0])
    warm_s, _ = timed_call(target, *setup()[0])
    rounds = choose_rounds(warm_s, env.profile.target_s, env.profile.rounds)
    benchmark.group = f"{case.kind} {case.mode} {case.dtype} B{case.B} T{case.T} C{case.C} K{case.K}"
    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=1)
    args, kwargs = setup()
    with peak_memory(env.device) as mem:
        result = target(*args, **kwargs)
    del result
    stats = _stats(benchmark)
    fields = dict(status="ok" if stats else "untimed", time_s=stats, first_call_s=first_s, peak_mem_bytes=mem["bytes"],
                  memory_note=mem["note"], **extra)
    benchmark.extra_info.update({k: v for k, v in fields.items() if k != "time_s"})
    env.record(case, **fields)
