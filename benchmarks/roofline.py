"""Byte-and-FLOP ledger of the prototype-MIL op: every launch of each provider's forward, backward
and full pass, with its FLOPs, memory bytes and modelled time on an H100 and an H200.

    python -m benchmarks.roofline [--shape paper|B,T,C,K] [--dtype bf16] [--md FILE --section TITLE]

How it counts (no GPU, no memory: every tensor is a meta tensor, so the paper shape is free):

* PyTorch ops (the eager reference, and the host-side glue around the fused kernels) are
  recorded by a ``TorchDispatchMode``: each op's input and output tensor sizes give its bytes
  (gathers and scatters count the rows they touch, views and allocations count nothing), and
  ``torch.utils.flop_counter``'s formulas its matmul FLOPs. Composite ops are decomposed first,
  and the op's own ``torch.library`` custom ops are expanded into their Python implementation.
* Triton kernels cannot run on meta tensors: their launches are intercepted and priced by the
  analytic cost functions of ``lpmn_fast.ops.triton_cost`` (grid and block sizes of the config
  that would run; the autotuner's pruned list, the config with the least modelled time chosen).
* Modelled time of a launch = max(FLOPs / peak, bytes / bandwidth), divided by the share of the
  132 SMs a smaller Triton grid can occupy; a pass is the sum of its launches (launch latency,
  wave quantisation and overlap ignored). Peaks below; bf16 ones are measured ceilings.
* Data-dependent sizes are modelled: the lengths are the benchmark suite's ragged lengths, and
  the backward's active frames are the expected number of distinct winners when each
  prototype's winning frame is uniform over its utterance (random inputs, as benchmarked).

``torch.compile`` of the reference is not visible to the dispatch mode (Inductor's generated
kernels run below it, and meta tensors cannot run them): its row is an estimate, the eager
reference's GEMMs with every elementwise op fused into a consumer that reads each GEMM result once.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from lpmn_fast.ops.triton_cost import KernelCost, LaunchData, launch_cost

from .cases import DTYPES, PAPER_SHAPE, utterance_lengths

aten = torch.ops.aten

TAU = 1.0
SM_COUNT = 132  # H100 SXM and H200: 132 SMs


@dataclass(frozen=True)
class Machine:
    """Ceilings of one GPU: FLOP/s per math path and DRAM bandwidth (B/s)."""

    name: str
    peaks: dict  # math path -> FLOP/s
    bandwidth: float
    sms: int = SM_COUNT


# bf16/fp16 dense and bandwidth: the measured ceilings issue 12 gives (H200's also seen on the
# lent machines: 788 TFLOP/s, 4.3 TB/s). tf32 and fp32 (CUDA-core FMA): NVIDIA's spec sheet for
# the SXM parts, not measured here. 3xTF32 ("high" in the fused kernels) does three TF32 products.
MACHINES = {
    "H100": Machine("H100", {"bf16": 798e12, "tf32": 494.7e12, "tf32x3": 494.7e12 / 3, "fp32": 66.9e12}, 3.0e12),
    "H200": Machine("H200", {"bf16": 788e12, "tf32": 494.7e12, "tf32x3": 494.7e12 / 3, "fp32": 66.9e12}, 4.3e12),
}
PEAK_SOURCES = "bf16/fp16 and bandwidth: measured ceilings (issue 12); tf32, 3xTF32 (a third of tf32) and fp32 FMA: spec sheet"

SHORT = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass
class Launch:
    """One kernel launch: a PyTorch op or a Triton kernel."""

    name: str
    kind: str  # "torch" | "triton"
    flops: int = 0
    hbm_bytes: int = 0
    issued_bytes: int = 0
    path: str = "bf16"  # which peak the FLOPs run at
    programs: int | None = None
    config: str = ""
    sync: bool = False  # the host waits for the device (a data-dependent size or a scalar read)
    note: str = ""
    written: int = 0  # bytes of the op's outputs (torch ops)
    x_rereads: int = 0  # of hbm_bytes: x rows re-read per K tile (Triton kernels, triton_cost's rule 1)

    def share(self, machine: Machine) -> float:
        """Fraction of the GPU a launch can use: a Triton grid of n < SMs programs runs on n SMs."""
        return 1.0 if self.programs is None else min(1.0, self.programs / machine.sms)

    def time(self, machine: Machine) -> float:
        return max(self.flops / machine.peaks[self.path], self.hbm_bytes / machine.bandwidth) / self.share(machine)

    def bound(self, machine: Machine) -> str:
        return "compute" if self.flops / machine.peaks[self.path] >= self.hbm_bytes / machine.bandwidth else "memory"


@dataclass
class PassLedger:
    provider: str
    mode: str
    launches: list[Launch]
    useful_flops: int
    note: str = ""

    @property
    def flops(self) -> int:
        return sum(l.flops for l in self.launches)

    @property
    def hbm_bytes(self) -> int:
        return sum(l.hbm_bytes for l in self.launches)

    @property
    def issued_bytes(self) -> int:
        return sum(l.issued_bytes for l in self.launches)

    @property
    def x_rereads(self) -> int:
        return sum(l.x_rereads for l in self.launches)

    def time(self, machine: Machine) -> float:
        return sum(l.time(machine) for l in self.launches)

    def summary(self) -> dict:
        return {
            "provider": self.provider, "mode": self.mode, "launches": len(self.launches),
            "triton_launches": sum(l.kind == "triton" for l in self.launches),
            "syncs": sum(l.sync for l in self.launches), "flops": self.flops, "useful_flops": self.useful_flops,
            "hbm_bytes": self.hbm_bytes, "issued_bytes": self.issued_bytes, "x_rereads": self.x_rereads,
            "modelled_s": {m: self.time(machine) for m, machine in MACHINES.items()}, "note": self.note,
        }


# ---- PyTorch ops ------------------------------------------------------------------------------

# Allocations and metadata: no kernel runs, no byte moves.
_FREE = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default, aten.new_empty.default,
         aten.detach.default, aten.alias.default, aten.lift_fresh.default, aten._unsafe_view.default,
         aten.set_.source_Storage_storage_offset}
# Reads the rows its index selects (output-sized), not the whole source.
_GATHERS = {aten.index.Tensor, aten.index_select.default, aten.gather.default, aten.take.default}
# Writes (and reads) only the rows of its source: the destination is touched where indexed.
_SCATTERS = {aten.index_copy_.default, aten.index_copy.default, aten.index_put_.default, aten.index_put.default,
             aten._index_put_impl_.default, aten.scatter_.src, aten.scatter_add_.default, aten.index_add_.default,
             aten.scatter.src, aten.scatter_add.default, aten.index_add.default}
_WRITE_ONLY = {aten.fill_.Scalar, aten.zero_.default, aten.zeros.default, aten.ones.default, aten.full.default,
               aten.arange.default, aten.arange.start, aten.arange.start_step, aten.zeros_like.default,
               aten.ones_like.default, aten.full_like.default}
# The host reads a device value: a synchronisation (and on meta tensors, a size the ledger models).
_SYNCS = {aten.nonzero.default, aten._local_scalar_dense.default, aten.masked_select.default}


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a view spans (broadcast dimensions, stride 0, count once)."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size() if t.numel() else 0


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _matmul_path(dtype: torch.dtype) -> str:
    if dtype in (torch.float16, torch.bfloat16):
        return "bf16"
    # torch.matmul in float32: cuBLAS uses TF32 under "high"/"medium", full FP32 under "highest"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


class OpLedger(TorchDispatchMode):
    """Records every PyTorch op (and, through :class:`TritonLaunches`, every kernel launch) in order.

    ``data.active_rows`` stands for the size of a ``nonzero`` (meta tensors hold no values).
    """

    def __init__(self, data: LaunchData):
        super().__init__()
        self.data = data
        self.launches: list[Launch] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "lpmn_fast":  # the op's own custom ops: count what their implementation runs
            impl = _custom_op_impl(func)
            if impl is not None:
                with self:
                    return impl(*args, **kwargs)
        if func.namespace == "prim" or func in _FREE or getattr(func, "is_view", False):
            return func(*args, **kwargs)
        with self:
            out = func.decompose(*args, **kwargs)
        if out is not NotImplemented:
            return out
        if func is aten.nonzero.default:
            if self.data.active_rows is None:
                raise RuntimeError("the ledger met a nonzero (a data-dependent size) but no active_rows was modelled")
            out = torch.empty((self.data.active_rows, args[0].dim()), dtype=torch.int64, device=args[0].device)
        else:
            out = func(*args, **kwargs)
        self.launches.append(self._price(func, args, kwargs, out))
        return out

    def _price(self, func, args, kwargs, out) -> Launch:
        ins, outs = _tensors((args, kwargs)), _tensors(out)
        name = str(func).replace("aten.", "").replace(".default", "")
        if func in _GATHERS:
            index = sum(tensor_bytes(t) for t in ins[1:] if not t.is_floating_point())
            read, write = sum(map(tensor_bytes, outs)) + index, sum(map(tensor_bytes, outs))
        elif func in _SCATTERS:
            read, write = _scatter_bytes(func, args)
        elif func is aten.copy_.default:
            read, write = tensor_bytes(ins[1]), tensor_bytes(ins[0])
        elif func in _WRITE_ONLY:
            read, write = 0, sum(map(tensor_bytes, outs))
        else:
            read, write = sum(map(tensor_bytes, ins)), sum(map(tensor_bytes, outs))
        flops, path = 0, "bf16"
        if func._overloadpacket in flop_registry:
            flops = int(flop_registry[func._overloadpacket](*args, **kwargs, out_val=out))
            path = _matmul_path(ins[0].dtype)
        return Launch(name, "torch", flops, read + write, read + write, path, sync=func in _SYNCS,
                      note="host sync" if func in _SYNCS else "", written=write)


def _scatter_bytes(func, args) -> tuple[int, int]:
    """(read, written) bytes of an indexed write: only the destination elements its index selects."""
    self_t = args[0]
    if func._overloadpacket in (aten.index_put_, aten.index_put, aten._index_put_impl_):
        indices = [i for i in args[1] if i is not None]
        values = args[2]
        rows = max(i.numel() for i in indices)  # indices broadcast together
        written = rows * math.prod(self_t.shape[len(args[1]):]) * self_t.element_size()
        return tensor_bytes(values) + sum(map(tensor_bytes, indices)), written
    # index_copy/index_add (self, dim, index, source) and scatter/scatter_add (self, dim, index, src)
    index, src = args[2], args[3]
    if func._overloadpacket in (aten.scatter_, aten.scatter, aten.scatter_add_, aten.scatter_add):
        written = index.numel() * self_t.element_size()
    else:
        written = tensor_bytes(src)
    extra = written if "add" in func._schema.name else 0  # adds read the destination too
    return tensor_bytes(src) + tensor_bytes(index) + extra, written


def _custom_op_impl(func):
    """The Python implementation of a ``torch.library.custom_op``, or None."""
    try:
        from torch._library.custom_ops import OPDEFS
    except ImportError:  # pragma: no cover - older torch
        return None
    opdef = OPDEFS.get(f"{func.namespace}::{func._schema.name.split('::')[-1]}")
    return getattr(opdef, "_init_fn", None)


# ---- Triton launches --------------------------------------------------------------------------

def _unwrap(kernel):
    """(autotuner or None, heuristics [(name, fn)], JITFunction) of a launchable Triton kernel."""
    import triton

    autotuner, heuristics, fn = None, [], kernel
    while True:
        if isinstance(fn, triton.runtime.Autotuner):
            autotuner, fn = fn, fn.fn
        elif isinstance(fn, triton.runtime.Heuristics):
            heuristics += list(fn.values.items())
            fn = fn.fn
        else:
            return autotuner, heuristics, fn


def _describe(config) -> str:
    blocks = " ".join(f"{k.replace('BLOCK_', '')}{v}" for k, v in config.kwargs.items())
    return f"{blocks} w{config.num_warps} s{config.num_stages}"


def _dot_path(args: dict) -> str:
    x = next(v for v in args.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
    if x.dtype != torch.float32:
        return "bf16"
    return {"ieee": "fp32", "tf32x3": "tf32x3", "tf32": "tf32"}.get(args.get("DOT_PRECISION", "ieee"), "fp32")


class _Recorder:
    """Stands in for a Triton kernel: ``kernel[grid](*args, **kwargs)`` prices the launch instead of running it."""

    def __init__(self, name: str, kernel, ledger: OpLedger, machine: Machine):
        self.name, self.kernel, self.ledger, self.machine = name, kernel, ledger, machine

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid, args, kwargs):
        autotuner, heuristics, fn = _unwrap(self.kernel)
        bound = inspect.signature(fn.fn).bind_partial(*args, **kwargs)
        bound.apply_defaults()
        named = dict(bound.arguments)
        for key, h in heuristics:
            named[key] = h(named)
        if autotuner is None:
            choices = [(None, named)]
        else:
            configs = autotuner.configs
            if getattr(autotuner, "early_config_prune", None):
                configs = autotuner.early_config_prune(configs, named, **kwargs)
            choices = [(c, {**named, **c.kwargs}) for c in configs]
        priced = []
        for config, meta in choices:
            g = grid(meta) if callable(grid) else grid
            g = tuple(g) + (1,) * (3 - len(tuple(g)))
            cost = launch_cost(self.name, meta, g, self.ledger.data)
            launch = self._launch(cost, meta, config)
            priced.append((launch.time(self.machine), launch))
        best = min(priced, key=lambda p: p[0])[1]  # the autotuner's pick, if it picks by speed as modelled
        if len(priced) > 1:
            lo, hi = min(p[0] for p in priced), max(p[0] for p in priced)
            best.note = f"best modelled of {len(priced)} configs ({_us(lo)}–{_us(hi)} µs on {self.machine.name})"
        self.ledger.launches.append(best)

    def _launch(self, cost: KernelCost, meta: dict, config) -> Launch:
        return Launch(self.name, "triton", cost.flops, cost.hbm_bytes, cost.issued_bytes, _dot_path(meta),
                      programs=cost.programs, config=_describe(config) if config is not None else "fixed",
                      x_rereads=cost.x_rereads)


def _launchable(obj) -> bool:
    """A Triton kernel object: autotuned, with heuristics, jitted, or jitted under the interpreter."""
    import triton

    kinds = (triton.runtime.Autotuner, triton.runtime.Heuristics, triton.runtime.JITFunction)
    return isinstance(obj, kinds) or type(obj).__name__ == "InterpretedFunction"


@contextlib.contextmanager
def triton_launches(ledger: OpLedger, machine: Machine):
    """Replace every launchable kernel of lpmn_fast.kernels.prototype_mil with a :class:`_Recorder`,
    wherever lpmn_fast's modules hold it; and let the host code run on meta tensors."""
    from lpmn_fast.kernels import prototype_mil as kernel_module
    from lpmn_fast.ops import triton_op

    kernels = {name: obj for name, obj in vars(kernel_module).items() if _launchable(obj)}
    patches = []
    for module in [m for name, m in list(sys.modules.items()) if name.startswith("lpmn_fast") and m is not None]:
        for attr, value in list(vars(module).items()):
            for name, kernel in kernels.items():
                if value is kernel:
                    patches.append((module, attr, value))
                    setattr(module, attr, _Recorder(name, kernel, ledger, machine))
    # Meta tensors are not CUDA tensors: take the CUDA branches of the host code, on a GPU of
    # ``machine.sms`` SMs (the split-K forward is chosen from the SM count).
    host = [(triton_op, "check_fused_device", lambda x: None)]
    if hasattr(triton_op, "_split_slices") and hasattr(triton_op, "_multiprocessor_count"):
        split = triton_op._split_slices
        host.append((triton_op, "_multiprocessor_count", lambda device: machine.sms))
        host.append((triton_op, "_split_slices", lambda B, T, K, device: split(B, T, K, torch.device("cuda"))))
    for module, attr, value in host:
        patches.append((module, attr, getattr(module, attr)))
        setattr(module, attr, value)
    try:
        yield
    finally:
        for module, attr, value in reversed(patches):
            setattr(module, attr, value)


# ---- providers --------------------------------------------------------------------------------

def expected_active_rows(lengths: list[int], K: int) -> int:
    """Distinct winning frames when each of K prototypes wins a uniform frame of its utterance."""
    return round(sum(n * (1.0 - (1.0 - 1.0 / n) ** K) for n in lengths))


def _inputs(shape, dtype, fisher: bool):
    B, T, C, K = shape
    x = torch.empty(B, T, C, device="meta", dtype=dtype, requires_grad=True)
    p = torch.empty(K, C, device="meta", dtype=dtype, requires_grad=True)
    lengths = torch.empty(B, device="meta", dtype=torch.int64)
    grad = torch.empty(B, K, device="meta", dtype=dtype)
    f = torch.zeros(K, device="meta", dtype=torch.float32) if fisher else None
    return x, p, lengths, grad, f


def _run(provider: str, mode: str, shape, dtype, data: LaunchData, machine: Machine) -> list[Launch]:
    """Launches of one provider's pass: forward (no Fisher), backward (of that forward), full (with Fisher)."""
    x, p, lengths, grad, fisher = _inputs(shape, dtype, fisher=(mode == "full"))
    if provider == "triton":
        from lpmn_fast.ops import triton_op

        def forward():
            return triton_op.prototype_mil_fused(x, p, lengths, TAU, fisher, False)
    else:
        from lpmn_fast.ops.reference import prototype_mil_reference

        def forward():
            return prototype_mil_reference(x, p, lengths, TAU, fisher)

    ledger = OpLedger(data)
    with triton_launches(ledger, machine):
        if mode == "backward":
            out = forward()
            ledger.launches.clear()
            with ledger:
                out.pooled.backward(grad)
        else:
            with ledger:
                out = forward()
                if mode == "full":
                    out.pooled.backward(grad)
    return ledger.launches


PASSES = {"forward": 1, "backward": 2, "full": 3}


def build_ledger(shape=PAPER_SHAPE, dtype: torch.dtype = torch.bfloat16, lengths: list[int] | None = None,
                 providers=("triton", "eager", "compile"), modes=tuple(PASSES), machine: str = "H100"
                 ) -> list[PassLedger]:
    """Every (provider, mode) pass at ``shape`` (B, T, C, K); lengths default to the benchmarks' ragged ones."""
    B, T, C, K = shape
    lengths = [int(v) for v in (utterance_lengths(B, T, hash(tuple(shape)) % 2**31) if lengths is None else lengths)]
    data = LaunchData(tuple(lengths), expected_active_rows(lengths, K))
    useful = 2 * sum(lengths) * K * C
    out, eager = [], {}
    for mode in modes:
        for provider in providers:
            if provider.startswith("compile"):
                continue
            passes = _run(provider, mode, shape, dtype, data, MACHINES[machine])
            ledger = PassLedger(provider, mode, passes, PASSES[mode] * useful)
            if provider == "eager":
                eager[mode] = ledger
            out.append(ledger)
        for provider in providers:
            if provider.startswith("compile") and mode in eager:
                out.append(_compile_from(eager[mode], provider))
    return out


def _compile_from(eager: PassLedger, provider: str) -> PassLedger:
    launches = []
    for l in eager.launches:
        if not l.flops:
            continue
        gemm = replace(l, note="GEMM, as eager")
        launches.append(gemm)
        # Inductor fuses the elementwise work around the GEMM into one consumer that reads its result once
        launches.append(Launch(f"consumer of {l.name}", "torch", 0, l.written, l.written,
                               note="fused elementwise work: reads the GEMM's result once"))
    return PassLedger(provider, eager.mode, launches, eager.useful_flops,
                      note="estimate: Inductor's kernels are not visible to the dispatch mode")


# ---- output -----------------------------------------------------------------------------------

def _group(launches: list[Launch]) -> list[tuple[Launch, int]]:
    """Identical launches (the backward's chunks repeat theirs) as (launch, count), in order of first launch."""
    out: dict[tuple, list] = {}
    for l in launches:
        key = (l.name, l.config, l.flops, l.hbm_bytes, l.issued_bytes, l.programs, l.path)
        if key in out:
            out[key][1] += 1
        else:
            out[key] = [l, 1]
    return [(l, n) for l, n in out.values()]


def _g(n: float) -> str:
    return f"{n / 1e9:.3g}"


def _us(s: float) -> str:
    return f"{s * 1e6:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows])


def describe_inputs(shape, dtype: torch.dtype, lengths: list[int], active_rows: int) -> list[str]:
    B, T, C, K = shape
    import triton

    precision = (f", float32 matmul precision `{torch.get_float32_matmul_precision()}`"
                 if dtype == torch.float32 else "")
    from lpmn_fast.kernels import prototype_mil as kernel_module

    configs = ("the interpreter's single config (TRITON_INTERPRET=1: not what a GPU runs)" if kernel_module.INTERPRET
               else "the GPU autotune lists")
    return [
        f"Shape B={B}, T={T}, C={C}, K={K}, {dtype}{precision}, tau={TAU}; torch {torch.__version__}, "
        f"triton {triton.__version__}; Triton configs priced from {configs}.",
        f"Lengths: {sum(lengths)} valid frames of {B * T} ({100 * sum(lengths) / (B * T):.1f}%), "
        f"{min(lengths)}–{max(lengths)} per utterance (the benchmark suite's ragged lengths); "
        f"active (winning) frames modelled: {active_rows}.",
        "Useful FLOPs: 2·(valid frames)·K·C per similarity GEMM (forward 1, backward 2: dx and dp, full 3).",
        "Peaks: " + ", ".join(f"{m.name} bf16 {m.peaks['bf16'] / 1e12:.0f} TFLOP/s, {m.bandwidth / 1e12:.1f} TB/s"
                              for m in MACHINES.values())
        + f" ({PEAK_SOURCES}). Time per launch = max(FLOPs/peak, HBM bytes/bandwidth), over the share of the "
        "132 SMs its grid fills (Triton launches of fewer programs), summed over a pass.",
    ]


def to_markdown(ledgers: list[PassLedger], shape, dtype, lengths, active_rows, detail: bool = True) -> str:
    lines = describe_inputs(shape, dtype, lengths, active_rows)
    lines = ["* " + l for l in lines] + [""]
    rows = []
    for p in ledgers:
        s = p.summary()
        h100, h200 = s["modelled_s"]["H100"], s["modelled_s"]["H200"]
        programs = [l.programs for l in p.launches if l.programs is not None]
        fewest = f"{min(programs)} ({min(programs) / SM_COUNT:.2f})" if programs else "—"
        rows.append([p.provider, p.mode, f"{s['launches']} ({s['triton_launches']})", str(s["syncs"]), fewest,
                     _g(p.flops), _g(p.useful_flops), f"{p.flops / p.useful_flops:.2f}" if p.useful_flops else "—",
                     _g(p.hbm_bytes), _g(p.hbm_bytes - p.x_rereads), _g(p.issued_bytes), _us(h100), _us(h200),
                     f"{p.useful_flops / h100 / 1e12:.0f}", p.note])
    lines += _table(["provider", "pass", "launches (Triton)", "host syncs", "fewest programs (/132 SMs)",
                     "GFLOP executed", "GFLOP useful",
                     "executed / useful", "GB HBM", "GB HBM if L2 served x re-reads", "GB issued", "H100 µs",
                     "H200 µs",
                     "useful TFLOP/s (H100 model)", "note"], rows)
    if not detail:
        return "\n".join(lines)
    for p in ledgers:
        lines += ["", f"#### {p.provider} {p.mode}: per launch (identical launches counted once, × times)", ""]
        rows = []
        h100, h200 = MACHINES["H100"], MACHINES["H200"]
        for i, (l, n) in enumerate(_group(p.launches), 1):
            programs = "—" if l.programs is None else f"{l.programs} ({l.programs / SM_COUNT:.2f} waves)"
            rows.append([str(i), l.name, str(n), l.config or "—", programs, _g(l.flops), f"{l.hbm_bytes / 1e6:.4g}",
                         f"{l.issued_bytes / 1e6:.4g}", _us(l.time(h100)), _us(l.time(h200)), _us(n * l.time(h100)),
                         _us(n * l.time(h200)), l.bound(h100), l.note])
        lines += _table(["#", "launch", "×", "config", "programs (/132 SMs)", "GFLOP", "MB HBM", "MB issued",
                         "H100 µs", "H200 µs", "× · H100 µs", "× · H200 µs", "bound (H100)", "note"], rows)
    return "\n".join(lines)


def replace_section(path: Path, title: str, body: str) -> str:
    """``path``'s text with the section ``## title`` (up to the next ``## ``) replaced by ``body``, or appended."""
    text = path.read_text() if path.exists() else "# Roofline ledger at the paper shape\n"
    block = f"## {title}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda m: block + "\n", text, count=1).rstrip() + "\n"
    return text.rstrip() + "\n\n" + block


# ---- the benchmark suite's modelled figures ---------------------------------------------------

_CACHE: dict[tuple, dict] = {}


def modelled(kind: str, provider: str, mode: str, shape, dtype: str, seed: int) -> dict | None:
    """Modelled figures of one benchmark case ({"flops", "hbm_bytes", "s": {machine: seconds}}), or None.

    Op cases use the same ragged lengths as the benchmark (``utterance_lengths(B, T, seed)``); the
    compile providers share the compile estimate; the matmul case is one dense GEMM.
    """
    key = (kind, provider, mode, tuple(shape), dtype, seed, torch.get_float32_matmul_precision())
    if key in _CACHE:
        return _CACHE[key]
    B, T, C, K = shape
    torch_dtype = DTYPES[dtype]
    result = None
    if kind == "matmul":
        isz = torch_dtype.itemsize
        path = _matmul_path(torch_dtype) if mode == "default" else "tf32"
        l = Launch("mm", "torch", 2 * B * T * C * K, (B * T * C + C * K) * isz + B * T * K * isz,
                   path=path)
        result = {"flops": l.flops, "hbm_bytes": l.hbm_bytes, "s": {m: l.time(mc) for m, mc in MACHINES.items()}}
    elif kind == "op" and mode in PASSES:
        base = "compile" if provider.startswith("compile") else provider
        lengths = [int(v) for v in utterance_lengths(B, T, seed)]
        passes = build_ledger(shape, torch_dtype, lengths, providers=(base,) if base != "compile" else ("eager", "compile"),
                              modes=(mode,))
        p = next(x for x in passes if x.provider == base)
        result = {"flops": p.flops, "hbm_bytes": p.hbm_bytes, "s": {m: p.time(mc) for m, mc in MACHINES.items()},
                  "estimate": base == "compile"}
    _CACHE[key] = result
    return result


# ---- command line -----------------------------------------------------------------------------

def _shape(text: str) -> tuple[int, int, int, int]:
    if text == "paper":
        return PAPER_SHAPE
    try:
        B, T, C, K = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape takes 'paper' or B,T,C,K (four integers), got {text!r}") from None
    if min(B, T, C, K) < 1:
        raise argparse.ArgumentTypeError(f"--shape sizes must be >= 1, got {text!r}")
    return B, T, C, K


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roofline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=_shape, default=PAPER_SHAPE,
                        help="'paper' (B=128, T=300, C=1024, K=1024; the default) or B,T,C,K")
    parser.add_argument("--dtype", choices=sorted(SHORT), default="bf16", help="input dtype (default bf16)")
    parser.add_argument("--precision", choices=("highest", "high", "medium"), default=None,
                        help="torch.set_float32_matmul_precision for fp32 (default: torch's, 'highest')")
    parser.add_argument("--provider", action="append", choices=("triton", "eager", "compile"),
                        help="provider(s) to count (repeatable; default all three)")
    parser.add_argument("--mode", action="append", choices=tuple(PASSES), help="pass(es) (repeatable; default all)")
    parser.add_argument("--full-lengths", action="store_true",
                        help="every utterance T frames long instead of the benchmark suite's ragged lengths")
    parser.add_argument("--summary", action="store_true", help="the summary table only, no per-launch tables")
    parser.add_argument("--md", type=Path, help="also write the Markdown into this file, as section --section")
    parser.add_argument("--section", default="Ledger", help="section title in --md, replaced if present (default: Ledger)")
    args = parser.parse_args(argv)

    if args.precision:
        torch.set_float32_matmul_precision(args.precision)
    B, T, C, K = args.shape
    lengths = [T] * B if args.full_lengths else [int(v) for v in utterance_lengths(B, T, hash(args.shape) % 2**31)]
    dtype = DTYPES[SHORT[args.dtype]]
    ledgers = build_ledger(args.shape, dtype, lengths, providers=tuple(args.provider or ("triton", "eager", "compile")),
                           modes=tuple(args.mode or PASSES))
    text = to_markdown(ledgers, args.shape, dtype, lengths, expected_active_rows(lengths, K), detail=not args.summary)
    print(text)
    if args.md:
        from lpmn_fast.data.atomic import write_text_atomic

        write_text_atomic(args.md, replace_section(args.md, args.section, text))
        print(f"\nwrote section '{args.section}' of {args.md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
