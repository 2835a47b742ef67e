"""sm_90 compile gate: compile every autotune config of every fused kernel for Hopper, on a CPU.

    python -m benchmarks.compile_report [--out benchmarks/results/sm90-compile.md] [--jobs N]
                                        [--kernel NAME] [--dtype bf16] [--first-only]

Triton's wheel ships ``ptxas``, so each config compiles for sm_90a without a GPU:
``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` on the signature the JIT
would specialise for a paper-shape launch (the JIT's own binder, given that target), then
``ptxas -v --gpu-name=sm_90a`` on the PTX for registers, spills and stack; shared memory is the
compiled kernel's own figure. Every kernel object of ``lpmn_fast.kernels.prototype_mil`` is
discovered (autotuned ones with their config lists, plain jitted ones launched from the host
with the block sizes the host passes); each needs a sample-argument builder below, or the report
fails (a new kernel cannot slip past the gate).

Variants: bfloat16 and float16 (tensor cores), and float32 at each dot precision the host maps
torch's matmul precision to ("ieee" for "highest", "tf32x3" for "high", "tf32" for "medium"),
each with the configs the autotuner's pruner keeps for that launch.

The gate (``check``): no config fails to compile, none needs more than 227 KB of shared memory,
and no 16-bit config spills registers. float32 configs may spill (reported, not failed).

The kernels module must hold its GPU config lists: run this with TRITON_INTERPRET unset (the
interpreter keeps a single config). ``tests/test_compile_report.py`` runs it in a subprocess.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
DEFAULT_OUT = RESULTS / "sm90-compile.md"
SHARED_LIMIT = 227 * 1024  # bytes of shared memory a block may use on sm_90 (opt-in maximum)
REGISTER_CAP = 255
# Sizes the sample launches specialise on: the paper shape (B 128, T 300, C 1024, K 1024).
B, T, C, K = 128, 300, 1024, 1024
# (label, torch dtype name, DOT_PRECISION the host passes)
VARIANTS = [("bf16", "bfloat16", "tf32"), ("fp16", "float16", "tf32"), ("fp32 ieee", "float32", "ieee"),
            ("fp32 tf32x3", "float32", "tf32x3"), ("fp32 tf32", "float32", "tf32")]


@dataclass
class Result:
    kernel: str
    variant: str
    config: str
    num_warps: int
    num_stages: int
    ok: bool = False
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    shared: int | None = None
    wgmma: bool | None = None
    seconds: float = 0.0
    error: str = ""

    @property
    def sixteen_bit(self) -> bool:
        return self.variant in ("bf16", "fp16")

    def problems(self) -> list[str]:
        """What fails the gate for this config."""
        where = f"{self.kernel} [{self.variant}] {self.config}"
        if not self.ok:
            return [f"{where}: does not compile: {self.error}"]
        out = []
        if self.shared is not None and self.shared > SHARED_LIMIT:
            out.append(f"{where}: needs {self.shared} B of shared memory (> {SHARED_LIMIT} B)")
        if self.sixteen_bit and (self.spill_stores or self.spill_loads):
            out.append(f"{where}: spills ({self.spill_stores} B stores, {self.spill_loads} B loads)")
        return out


# ---- sample arguments per kernel ------------------------------------------------------------------

def _tensor(dtype):
    import torch

    return torch.empty(64, dtype=dtype)  # never read: only its dtype and alignment reach the compiler


def _x_args(dtype):
    """x (B, T, C) contiguous and the prototypes (K, C): pointers and strides as the host passes them."""
    return dict(x_ptr=_tensor(dtype), stride_xb=T * C, stride_xt=C, stride_xc=1, p_ptr=_tensor(dtype), stride_pk=C,
                stride_pc=1)


def _fwd_args(dtype, precision):
    import torch

    f32, i64 = torch.float32, torch.int64
    return dict(
        **_x_args(dtype), offsets_ptr=_tensor(i64), x_norm_ptr=_tensor(f32), p_norm_ptr=_tensor(f32),
        lse2_ptr=_tensor(f32), nearest_ptr=_tensor(i64), keys_ptr=_tensor(i64), B=B, T=T, K=K, C=C,
        scale2=1.4426950408889634, eps=1e-12, ROWS_BUCKET=65536, SEARCH_STEPS=B.bit_length(), UPCAST=False,
        DOT_PRECISION=precision,
    )


# split-K at its use case (B = 1, T = 1500, K = 2048: 24 frame tiles, 6 slices of 384 prototypes)
SPLIT = dict(B=1, T=1500, K=2048, K_SLICE=384, S=6)


def _split_lse_args(dtype, precision):
    import torch

    f32, i64 = torch.float32, torch.int64
    return dict(
        x_ptr=_tensor(dtype), stride_xb=SPLIT["T"] * C, stride_xt=C, stride_xc=1, p_ptr=_tensor(dtype), stride_pk=C,
        stride_pc=1, lengths_ptr=_tensor(i64), x_norm_ptr=_tensor(f32), p_norm_ptr=_tensor(f32),
        part_ptr=_tensor(f32), part_k_ptr=_tensor(i64), B=SPLIT["B"], T=SPLIT["T"], K=SPLIT["K"], C=C,
        K_SLICE=SPLIT["K_SLICE"], scale2=1.4426950408889634, eps=1e-12, ROWS_BUCKET=2048, UPCAST=False,
        DOT_PRECISION=precision,
    )


def _split_max_args(dtype, precision):
    import torch

    f32, i64 = torch.float32, torch.int64
    args = _split_lse_args(dtype, precision)
    tail = {k: args.pop(k) for k in ("B", "T", "K", "C", "K_SLICE", "scale2", "eps", "ROWS_BUCKET", "UPCAST",
                                      "DOT_PRECISION")}
    return dict(**args, lse2_ptr=_tensor(f32), nearest_ptr=_tensor(i64), keys_ptr=_tensor(i64),
                **{k: tail[k] for k in ("B", "T", "K", "C", "K_SLICE")}, S=SPLIT["S"],
                **{k: tail[k] for k in ("scale2", "eps", "ROWS_BUCKET", "UPCAST", "DOT_PRECISION")})


# backward chunk of the paper shape: R = 8192 frames, the second chunk (start 8192)
R, START = 8192, 8192


def _dcos_args(dtype, precision):
    import torch

    f32, i64 = torch.float32, torch.int64
    return dict(
        **_x_args(dtype), rows_ptr=_tensor(i64), count_ptr=_tensor(i64), x_norm_ptr=_tensor(f32),
        p_norm_ptr=_tensor(f32), lse2_ptr=_tensor(f32), frame_index_ptr=_tensor(i64), dpooled_ptr=_tensor(dtype),
        stride_gb=K, stride_gk=1, row_weight_ptr=_tensor(f32), scale_ptr=_tensor(f32), d_ptr=_tensor(dtype),
        radial_x_parts_ptr=_tensor(f32), radial_p_ptr=_tensor(f32), fisher_ptr=_tensor(f32), start=START, R=R,
        slot0=START // 16, rows_bucket=R, T=T, K=K, C=C, scale2=1.4426950408889634, inv_tau=1.0, eps=1e-12,
        HAS_FISHER=True, DETERMINISTIC=False, NEED_DX=True, NEED_DP=True, UPCAST=False, DOT_PRECISION=precision,
    )


def _row_weights_args(dtype, precision):
    import torch

    from lpmn_fast.kernels import prototype_mil as kernels

    f32, i64 = torch.float32, torch.int64
    return dict(rows_ptr=_tensor(i64), count_ptr=_tensor(i64), frame_index_ptr=_tensor(i64),
                dpooled_ptr=_tensor(dtype), stride_gb=K, stride_gk=1, pooled_ptr=_tensor(f32),
                row_weight_ptr=_tensor(f32), start=START, R=R, T=T, K=K,
                BLOCK_R=kernels.ROW_WEIGHTS_BLOCK_R, BLOCK_K=kernels.ROW_WEIGHTS_BLOCK_K)


def _dx_args(dtype, precision):
    import torch

    f32, i64 = torch.float32, torch.int64
    x = _x_args(dtype)
    return dict(
        d_ptr=_tensor(dtype), p_ptr=x["p_ptr"], stride_pk=C, stride_pc=1, x_ptr=x["x_ptr"], stride_xb=T * C,
        stride_xt=C, stride_xc=1, rows_ptr=_tensor(i64), count_ptr=_tensor(i64), x_norm_ptr=_tensor(f32),
        radial_x_parts_ptr=_tensor(f32), scale_ptr=_tensor(f32), dx_ptr=_tensor(dtype), start=START, R=R, rows_bucket=R,
        T=T, K=K, C=C, eps=1e-12, UPCAST=False, DOT_PRECISION=precision,
    )


def _dp_args(dtype, precision):
    import torch

    f32, i64 = torch.float32, torch.int64
    return dict(
        d_ptr=_tensor(dtype), **_x_args(dtype), rows_ptr=_tensor(i64), count_ptr=_tensor(i64),
        x_norm_ptr=_tensor(f32), p_norm_ptr=_tensor(f32), radial_p_ptr=_tensor(f32), scale_ptr=_tensor(f32),
        g_ptr=_tensor(f32), dp_ptr=_tensor(dtype), start=START, R=R, rows_bucket=R, T=T, K=K, C=C, eps=1e-12,
        ACCUMULATE=True, LAST=True, UPCAST=False, DOT_PRECISION=precision,
    )


def _zero_rows_args(dtype, precision):
    import torch

    from lpmn_fast.kernels import prototype_mil as kernels

    return dict(active_ptr=_tensor(torch.uint8), dx_ptr=_tensor(dtype), BT=B * T, C=C,
                BLOCK_R=kernels.ZERO_ROWS_BLOCK_R, BLOCK_C=kernels.ZERO_ROWS_BLOCK_C)


# Kernel name -> (dtype, DOT_PRECISION) -> every argument but the config's block sizes, in the
# kernel's order (the flags at their heaviest: Fisher, both gradients, a middle chunk). A new
# kernel needs an entry here (and a cost function in lpmn_fast/ops/triton_cost.py).
SAMPLE_ARGS = {
    "_prototype_mil_fwd": _fwd_args,
    "_prototype_mil_fwd_split_lse": _split_lse_args,
    "_prototype_mil_fwd_split_max": _split_max_args,
    "_prototype_mil_bwd_row_weights": _row_weights_args,
    "_prototype_mil_bwd_dcos": _dcos_args,
    "_prototype_mil_bwd_dx": _dx_args,
    "_prototype_mil_bwd_dp": _dp_args,
    "_prototype_mil_bwd_zero_rows": _zero_rows_args,
}
# Kernels without a tl.dot: compiled once per input dtype, whatever the dot precision.
NO_DOT = {"_prototype_mil_bwd_zero_rows", "_prototype_mil_bwd_row_weights"}


# ---- discovery ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    kernel: str
    variant: str
    dtype: str
    precision: str
    config_index: int | None  # index into the autotuner's configs; None: a plain jitted kernel


def _kernel_module():
    from lpmn_fast.kernels import prototype_mil as kernels

    if kernels.INTERPRET:
        raise RuntimeError("the kernels module was imported under TRITON_INTERPRET=1, which keeps one config; "
                           "run `env -u TRITON_INTERPRET python -m benchmarks.compile_report`")
    return kernels


def discover() -> tuple[dict, list[str]]:
    """(name -> kernel object) of every launchable kernel, and the helper functions left out."""
    import triton

    kernels = _kernel_module()
    called = set()
    found, helpers = {}, []
    for name, obj in vars(kernels).items():
        if isinstance(obj, triton.runtime.Autotuner):
            found[name] = obj
            called.add(id(obj.fn))
    for name, obj in vars(kernels).items():
        if isinstance(obj, triton.runtime.JITFunction) and id(obj) not in called:
            # a plain @triton.jit: a host-launched kernel if it has a builder, else a device helper
            (found.__setitem__(name, obj) if name in SAMPLE_ARGS else helpers.append(name))
    return found, helpers


def jobs(only_kernel: str | None = None, only_variant: str | None = None, first_only: bool = False) -> list[Job]:
    import torch
    import triton

    found, _ = discover()
    out = []
    for name, obj in found.items():
        if only_kernel and name != only_kernel:
            continue
        if name not in SAMPLE_ARGS:
            raise KeyError(f"kernel {name!r} has no sample-argument builder in benchmarks/compile_report.SAMPLE_ARGS")
        seen_dtypes = set()
        for label, dtype, precision in VARIANTS:
            if only_variant and label != only_variant:
                continue
            if name in NO_DOT:
                if dtype in seen_dtypes:
                    continue
                seen_dtypes.add(dtype)
                label = dtype.replace("bfloat16", "bf16").replace("float16", "fp16").replace("float32", "fp32")
            if isinstance(obj, triton.runtime.Autotuner):
                args = SAMPLE_ARGS[name](getattr(torch, dtype), precision)
                configs = list(obj.configs)
                if getattr(obj, "early_config_prune", None):
                    configs = obj.early_config_prune(configs, args, **args)
                indices = [obj.configs.index(c) for c in configs]
                out += [Job(name, label, dtype, precision, i) for i in (indices[:1] if first_only else indices)]
            else:
                out.append(Job(name, label, dtype, precision, None))
    return out


# ---- compiling ------------------------------------------------------------------------------------

def _ptxas() -> list[str]:
    """The ptxas command Triton itself uses for sm_90 (its wheel ships it), with Triton's register option."""
    import triton

    try:
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            path = get_ptxas(90).path
        except TypeError:  # older triton: get_ptxas() takes no architecture
            path = get_ptxas().path
    except (ImportError, AttributeError):
        path = str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas")
    if not Path(path).exists():
        raise FileNotFoundError(f"no ptxas at {path}: this triton cannot compile for sm_90 offline")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    # Triton passes --regAllocOptLevel=2 to ptxas 13.x (a ptxas bug work-around): read the same code
    extra = ["--regAllocOptLevel=2"] if re.search(r"release 1[3-9]\.", version) else []
    return [path, *extra]


def _ptxas_stats(ptx: str) -> dict:
    """Registers, spill bytes and stack of the PTX's kernel, from ``ptxas -v``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run([*_ptxas(), "-v", "--gpu-name=sm_90a", str(src), "-o", str(Path(tmp) / "k.cubin")],
                              capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(f"ptxas failed: {text.strip()[-300:]}")

    def grab(pattern):
        m = re.search(pattern, text)
        return int(m.group(1)) if m else None

    return {"registers": grab(r"Used (\d+) registers"), "spill_stores": grab(r"(\d+) bytes spill stores"),
            "spill_loads": grab(r"(\d+) bytes spill loads"), "stack": grab(r"(\d+) bytes stack frame")}


def _launch(job: Job):
    """(JITFunction, arguments, config block sizes, num_warps, num_stages, description) of a job."""
    import torch

    found, _ = discover()
    obj = found[job.kernel]
    args = SAMPLE_ARGS[job.kernel](getattr(torch, job.dtype), job.precision)
    if job.config_index is None:  # a plain kernel: the block sizes the host passes, Triton's default warps/stages
        blocks = {k: v for k, v in args.items() if k.startswith("BLOCK_")}
        return obj, args, {}, 4, 3, describe_blocks(blocks)
    config = obj.configs[job.config_index]
    return obj.fn, args, dict(config.kwargs), config.num_warps, config.num_stages, describe_blocks(config.kwargs)


def describe_blocks(blocks: dict) -> str:
    return " ".join(f"{k.replace('BLOCK_', '')}{v}" for k, v in blocks.items())


def describe(job: Job) -> tuple[str, str, str, int, int]:
    """(kernel, variant, config, warps, stages): a job's row key in the report, without compiling."""
    _, _, _, warps, stages, desc = _launch(job)
    return job.kernel, job.variant, desc, warps, stages


def _pack(fn, backend, bound: dict, specialization: list) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for ASTSource from the JIT binder's output, as JITFunction.run makes them
    (for a triton without ``JITFunction._pack_args``; the same up to empty attribute lists).

    Flat arguments only (these kernels take no tuples): constexprs and attributes keyed by (index,).
    """
    names = [p.name for p in fn.params]
    kinds = [s[0] for s in specialization]
    values = list(bound.values())
    signature = dict(zip(names, kinds))
    constexprs = {(i,): values[i] for i, kind in enumerate(kinds) if kind == "constexpr"}
    attrs = {(i,): backend.parse_attr(s[1]) for i, s in enumerate(specialization)
             if s[0] != "constexpr" and isinstance(s[1], str)}
    return signature, constexprs, attrs


def compile_one(job: Job) -> Result:
    """Compile one (kernel, variant, config) for sm_90a and read its resource use."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn, args, config_kwargs, warps, stages, desc = _launch(job)
    result = Result(job.kernel, job.variant, desc, warps, stages)
    start = time.perf_counter()
    try:
        target = GPUTarget("cuda", 90, 32)
        backend = make_backend(target)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        launch_options = {"num_warps": warps, "num_stages": stages}
        bound, specialization, options = binder(**args, **config_kwargs, **launch_options)
        if hasattr(fn, "_pack_args"):  # the JIT's own packing, where this triton has it
            options, signature, constexprs, attrs = fn._pack_args(backend, launch_options, bound, specialization,
                                                                  options)
        else:
            signature, constexprs, attrs = _pack(fn, backend, bound, specialization)
            options = backend.parse_options(launch_options)
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
        stats = _ptxas_stats(compiled.asm["ptx"])
        result.__dict__.update(stats)
        result.shared = compiled.metadata.shared
        result.wgmma = "wgmma.mma_async" in compiled.asm["ptx"]
        result.ok = True
    except Exception as e:  # reported per config; the gate fails on it
        result.error = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
    result.seconds = time.perf_counter() - start
    return result


def run(job_list: list[Job], workers: int = 1, progress=None) -> list[Result]:
    if workers <= 1:
        results = []
        for job in job_list:
            results.append(compile_one(job))
            if progress:
                progress(results[-1])
        return results
    with ProcessPoolExecutor(workers) as pool:
        results = []
        for r in pool.map(compile_one, job_list):
            results.append(r)
            if progress:
                progress(r)
        return results


def check(results: list[Result]) -> list[str]:
    """Every gate failure, one line each (empty: the gate is green)."""
    return [p for r in results for p in r.problems()]


# ---- report ------------------------------------------------------------------------------------

def to_markdown(results: list[Result], helpers: list[str]) -> str:
    import torch
    import triton

    problems = check(results)
    at_cap = [r for r in results if r.ok and r.registers is not None and r.registers >= REGISTER_CAP]
    spilling = [r for r in results if r.ok and (r.spill_stores or r.spill_loads)]
    lines = [
        "# sm_90a compile report of the fused kernels",
        "",
        f"Written by `python -m benchmarks.compile_report` (issue 11's compile gate) with triton {triton.__version__}, "
        f"torch {torch.__version__}, on a CPU: Triton's own `ptxas -v --gpu-name=sm_90a` reads registers, spills "
        "and stack; shared memory is the compiled kernel's. Sample launches specialise like a paper-shape launch "
        f"(T {T}, K {K}, C {C}, unit feature stride). Limits: {REGISTER_CAP} registers per thread, "
        f"{SHARED_LIMIT // 1024} KB shared memory per block.",
        "",
        f"**Gate: {'green' if not problems else 'RED'}** — {len(results)} configs compiled "
        f"({sum(r.ok for r in results)} ok), {len(spilling)} spill (16-bit: "
        f"{sum(r.sixteen_bit for r in spilling)}), {len(at_cap)} at the {REGISTER_CAP}-register cap.",
        "",
    ]
    lines += [f"* {p}" for p in problems]
    if problems:
        lines.append("")
    if helpers:
        lines += [f"Device helpers, compiled inside the kernels above: {', '.join(helpers)}.", ""]
    for title, group in (("Spilling", spilling), (f"At the {REGISTER_CAP}-register cap", at_cap)):
        if group:
            lines.append(f"{title}: " + "; ".join(f"{r.kernel} [{r.variant}] {r.config} w{r.num_warps} s{r.num_stages}"
                                                  + (f" ({r.spill_stores}/{r.spill_loads} B)" if group is spilling else "")
                                                  for r in group) + ".")
            lines.append("")
    lines += ["| kernel | variant | config | warps | stages | registers | spill stores B | spill loads B | "
              "stack B | shared KB | wgmma | problem |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(v):
        return "—" if v is None else str(v)

    for r in results:
        shared = "—" if r.shared is None else f"{r.shared / 1024:.1f}"
        problem = "; ".join(p.split(": ", 1)[1] for p in r.problems())
        lines.append(f"| {r.kernel} | {r.variant} | {r.config} | {r.num_warps} | {r.num_stages} | {cell(r.registers)} "
                     f"| {cell(r.spill_stores)} | {cell(r.spill_loads)} | {cell(r.stack)} | {shared} "
                     f"| {cell(r.wgmma)} | {problem.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="Markdown report (default benchmarks/results/sm90-compile.md); '-' for none")
    parser.add_argument("--jobs", type=int, default=1, help="compile in this many processes (default 1)")
    parser.add_argument("--kernel", help="only this kernel (by name)")
    parser.add_argument("--variant", choices=[v[0] for v in VARIANTS], help="only this dtype / precision")
    parser.add_argument("--first-only", action="store_true", help="only the first config of each kernel and variant")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")

    job_list = jobs(args.kernel, args.variant, args.first_only)
    if not job_list:
        parser.error("no kernel and variant match --kernel / --variant")
    _, helpers = discover()
    from tqdm import tqdm

    bar = tqdm(total=len(job_list), desc="sm_90a compiles", unit="config", file=sys.stderr)
    results = run(job_list, args.jobs, progress=lambda r: bar.update(1))
    bar.close()
    text = to_markdown(results, helpers)
    if str(args.out) != "-":
        from lpmn_fast.data.atomic import write_text_atomic

        write_text_atomic(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    problems = check(results)
    for p in problems:
        print(f"GATE: {p}", file=sys.stderr)
    print(f"{len(results)} configs, {len(problems)} gate problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
