"""Fused Triton backend of the prototype-MIL op: host functions, custom ops and autograd.

Forward (``prototype_mil_forward``): one kernel, two similarity sweeps per frame tile (the
log-sum-exp over K must be known before the max over t), no (B, T, K) tensor anywhere; at small
batches a split-K variant in two launches. No host synchronisation: the host glue decides the
schedule from shapes alone and launches on x's device (``launch_device``). Saves for backward
only O(B*T + B*K + K) statistics: per-frame |x| and log-sum-exp, per-prototype |p|, the fp32
pooled values and frame_index.

Backward (``prototype_mil_backward``): the gradient at the similarities,
dcos[b,t,k] = s[b,t,k] * ([frame_index[b,k] = t] dY[b,k] - r[b,t]) / tau, vanishes on every frame
that wins no max, so only the active frames (at most min(T, K) per utterance) are touched. They
are processed in chunks of a fixed number of rows: a Triton kernel recomputes s and writes dcos
(chunk x K; the Fisher term of eq. (4) is summed from the same tile), then two GEMMs (cuBLAS)
give the gradients at the unit vectors, dxh = dcos @ ph and dph += dcos^T @ xh, and the
normalisation backward d(v / |v|) = (I - vh vh^T) / |v| finishes on the host. Counting the active
frames is the op's one device-to-host synchronisation.

Both directions are ``torch.library`` custom ops (with fake implementations), so ``torch.compile``
keeps the op as one opaque node, including the Fisher accumulator the backward mutates.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch
import triton
from torch import Tensor

from ..kernels import prototype_mil as kernels
from .output import PrototypeMILOutput
from .reference import EPS

# Rows per backward chunk: R * (K + C) <= 2**23 elements, so the dcos tile (R, K) and the gathered
# unit frames (R, C) take at most 32 MB (fp32; half that for bf16 dcos) whatever B and T are.
CHUNK_ELEMENTS = 1 << 23


def launch_device(x: Tensor):
    """Context in which to launch kernels on x's device: Triton launches on the current CUDA device,
    so a tensor on cuda:1 needs torch.cuda.device(1) around the launch (no-op off CUDA)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _alloc(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, zero: bool = False) -> Tensor:
    """Every buffer a kernel writes into is allocated here (the tests poison and guard them)."""
    return torch.zeros(shape, dtype=dtype, device=device) if zero else torch.empty(shape, dtype=dtype, device=device)


def check_fused_device(x: Tensor) -> None:
    """Raise a RuntimeError naming the fix when the kernels cannot run on ``x``'s device."""
    if x.device.type == "cuda" or kernels.INTERPRET:
        return
    raise RuntimeError(
        f"backend='triton' runs the fused kernels on CUDA tensors, got tensors on {x.device}. "
        "Move x, prototypes and lengths to a CUDA device, use backend='torch' (or 'auto') on the CPU, "
        "or, for testing only, set the environment variable TRITON_INTERPRET=1 before importing "
        "lpmn_fast to run the kernels through Triton's (slow) CPU interpreter."
    )


def _dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for fp32 tiles, following torch.set_float32_matmul_precision.

    "highest" (PyTorch's default) keeps full fp32 products, like the reference's matmul; "high"
    uses 3xTF32 and "medium" TF32 tensor cores. 16-bit tiles always use their native tensor-core path.
    """
    if dtype != torch.float32:
        return "tf32"  # ignored by tl.dot for 16-bit operands
    return {"highest": "ieee", "high": "tf32x3", "medium": "tf32"}[torch.get_float32_matmul_precision()]


def _gemm_dtype(dtype: torch.dtype) -> torch.dtype:
    """Operand dtype of the backward GEMMs (fp32 accumulation and output in every case).

    16-bit inputs use bfloat16 operands: dcos can be far below float16's smallest normal number
    (s ~ 1/K times an upstream gradient ~ 1/B), while bfloat16 has float32's range.
    """
    return torch.float32 if dtype == torch.float32 else torch.bfloat16


@functools.cache
def _mm_has_out_dtype(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch.mm(a, b, out_dtype=torch.float32) works for ``dtype`` operands on ``device``.

    Probed once per (device, dtype), so that a real error of a later call (out of memory, a CUDA
    fault) is raised, never mistaken for a missing feature.
    """
    probe = torch.ones(1, 1, dtype=dtype, device=device)
    try:
        return torch.mm(probe, probe, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def _mm_f32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b with fp32 accumulation and an fp32 result, the operands in their own dtype."""
    if a.dtype == torch.float32:
        return a @ b
    if a.is_cuda and _mm_has_out_dtype(a.device, a.dtype):
        return torch.mm(a, b, out_dtype=torch.float32)
    # Without out_dtype (and on the CPU, for the interpreter's tests): fp32 operands. Products of
    # bfloat16 values are exact in fp32, so this equals cuBLAS's fp32-accumulated bf16 GEMM.
    return a.float() @ b.float()


def _unpack_maxima(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Packed (ordered u bits << 32 | INT32_MAX - t) keys (B, K) -> pooled fp32 (B, K), frame_index int64 (B, K).

    Undoes the kernels' order-preserving map (negative floats have their magnitude bits flipped)
    to get u = log2 s back bit for bit, then pooled = exp2(u) in torch, which keeps subnormal s.
    """
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
    pooled = torch.exp2(bits.view(torch.float32))
    frame_index = kernels.INT32_MAX - (keys & 0xFFFFFFFF)
    return pooled, frame_index


def _rows_bucket(rows: int) -> int:
    """Next power of two of the row count: the autotune key, so that a tiny first call does not pick
    the config of every later size, while varying lengths do not retune every call."""
    return 1 << max(0, rows - 1).bit_length()


@functools.cache
def _multiprocessor_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _split_slices(B: int, T: int, K: int, device: torch.device) -> int:
    """Prototype slices for the forward: 1 (one fused launch) unless the frame-tile grid would leave
    SMs idle (small batches: inference, streaming), then enough slices of SPLIT_K_GRANULE-multiple
    width to give every SM a program. Decided from shapes and the device's SM count, no sync; the
    CPU interpreter never splits on its own (tests force it through this function)."""
    if device.type != "cuda":
        return 1
    sms = _multiprocessor_count(device)
    programs = B * triton.cdiv(T, kernels.SPLIT_BLOCK_T)
    if programs >= sms:
        return 1
    want = triton.cdiv(sms, programs)
    return triton.cdiv(K, _slice_width(K, want))


def _slice_width(K: int, slices: int) -> int:
    """Width of each of (at most) ``slices`` prototype slices, rounded up to SPLIT_K_GRANULE."""
    granule = kernels.SPLIT_K_GRANULE
    return triton.cdiv(triton.cdiv(K, slices), granule) * granule


def prototype_mil_forward(
    x: Tensor, prototypes: Tensor, lengths: Tensor, tau: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused forward on validated inputs, with no host synchronisation.

    x: (B, T, C) frame features (any strides); prototypes: (K, C); lengths: (B,) int64 in [1, T]
    (the kernels clamp to that range: on CUDA the check is asynchronous); dtypes
    float16/bfloat16/float32. Returns pooled (B, K) in x's dtype, frame_index (B, K) int64,
    nearest (B, T) int64, and the statistics the backward reads: pooled fp32 (B, K), lse2 (B, T)
    fp32 (log2-sum-exp2 over k of cos * log2(e) / tau), |x| (B, T) fp32 (0 on padding) and
    |p| (K,) fp32.

    One launch; two (split-K: partial log-sum-exps per prototype slice, then the merge and the
    max) when the frame tiles alone would leave SMs idle, see :func:`_split_slices`.
    """
    B, T, C = x.shape
    K = prototypes.shape[0]
    device = x.device
    lengths = lengths.contiguous()
    p_norm = torch.linalg.vector_norm(prototypes, dim=-1, dtype=torch.float32).contiguous()
    # |x| is written by the kernel (fused into sweep 1); the one-launch kernel visits valid frames
    # only, so padding's statistics (0, 0, -1) are set here
    x_norm = _alloc((B, T), torch.float32, device, zero=True)
    lse2 = _alloc((B, T), torch.float32, device, zero=True)
    nearest = _alloc((B, T), torch.int64, device)
    nearest.fill_(-1)
    keys = _alloc((B, K), torch.int64, device)
    keys.fill_(kernels.INT64_MIN)  # below every real frame's key
    common = dict(UPCAST=kernels.INTERPRET, DOT_PRECISION=_dot_precision(x.dtype))
    scale2, rows_bucket = kernels.LOG2E / tau, _rows_bucket(B * T)
    slices = _split_slices(B, T, K, device)
    with launch_device(x):
        if slices <= 1:
            # valid frames packed utterance after utterance: offsets = 0, cumulative clamped lengths
            offsets = torch.zeros(B + 1, dtype=torch.int64, device=device)
            torch.cumsum(lengths.clamp(1, T), 0, out=offsets[1:])
            kernels._prototype_mil_fwd[lambda meta: (triton.cdiv(B * T, meta["BLOCK_T"]),)](
                x, *x.stride(), prototypes, *prototypes.stride(), offsets, x_norm, p_norm, lse2, nearest, keys,
                B, T, K, C, scale2, EPS, rows_bucket, B.bit_length(), **common,
            )
        else:
            width = _slice_width(K, slices)
            slices = triton.cdiv(K, width)
            part = _alloc((slices, 3, B, T), torch.float32, device)
            part_k = _alloc((slices, B, T), torch.int64, device)
            grid = lambda meta: (B, triton.cdiv(T, meta["BLOCK_T"]), slices)  # noqa: E731
            kernels._prototype_mil_fwd_split_lse[grid](
                x, *x.stride(), prototypes, *prototypes.stride(), lengths, x_norm, p_norm, part, part_k,
                B, T, K, C, width, scale2, EPS, rows_bucket, **common,
            )
            kernels._prototype_mil_fwd_split_max[grid](
                x, *x.stride(), prototypes, *prototypes.stride(), lengths, x_norm, p_norm, part, part_k, lse2,
                nearest, keys, B, T, K, C, width, slices, scale2, EPS, rows_bucket, **common,
            )
    pooled32, frame_index = _unpack_maxima(keys)
    pooled = pooled32.to(x.dtype, copy=True)  # never an alias of pooled32 (a custom op may not return one)
    return pooled, frame_index, nearest, pooled32, lse2, x_norm, p_norm


def _chunk_rows(K: int, C: int) -> int:
    """Active frames per backward chunk: a multiple of 128 with rows * (K + C) <= CHUNK_ELEMENTS."""
    return max(128, CHUNK_ELEMENTS // (K + C) // 128 * 128)


def prototype_mil_backward(
    grad_pooled: Tensor,
    x: Tensor,
    prototypes: Tensor,
    frame_index: Tensor,
    pooled32: Tensor,
    lse2: Tensor,
    x_norm: Tensor,
    p_norm: Tensor,
    tau: float,
    fisher: Optional[Tensor],
    deterministic: bool,
    need_dx: bool,
    need_dp: bool,
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Gradients of the pooled output; adds eq. (4)'s squared prototype gradients to ``fisher``.

    grad_pooled: (B, K) dY (any strides); the rest as saved by :func:`prototype_mil_forward`.
    Returns dx (B, T, C) in x's dtype (zero on frames that win no max) and dp (K, C) in the
    prototypes' dtype, None where not needed. ``deterministic``: Fisher partial sums per row
    tile added in a fixed order instead of atomics (every other step is deterministic anyway).
    """
    B, T, C = x.shape
    K = prototypes.shape[0]
    device = x.device
    # Active frames: those that win some prototype's max; increasing b * T + t.
    flat_winner = (torch.arange(B, device=device)[:, None] * T + frame_index).flatten()
    active = torch.zeros(B * T, dtype=torch.bool, device=device)
    active[flat_winner] = True
    rows = torch.nonzero(active).flatten()  # (N,), N <= B * min(T, K); one device sync
    N = rows.numel()

    frame_index32 = frame_index.to(torch.int32)  # the kernels compare it per (frame, prototype)
    r = _alloc((N,), torch.float32, device)
    kernels._prototype_mil_bwd_row_weight[(triton.cdiv(N, kernels.ROW_WEIGHT_BLOCK_R),)](
        rows, r, frame_index32, grad_pooled, *grad_pooled.stride(), pooled32, N, T, K,
        BLOCK_R=kernels.ROW_WEIGHT_BLOCK_R, BLOCK_K=kernels.ROW_WEIGHT_BLOCK_K,
    )

    gemm_dtype = _gemm_dtype(x.dtype)
    inv_p = 1.0 / p_norm.clamp_min(EPS)
    ph = prototypes.float() * inv_p[:, None]  # (K, C) unit prototypes, fp32
    ph_gemm = ph.to(gemm_dtype)
    dph = torch.zeros(K, C, dtype=torch.float32, device=device) if need_dp else None
    dx = torch.zeros(B * T, C, dtype=x.dtype, device=device) if need_dx else None
    has_fisher = fisher is not None
    fisher_sum = torch.zeros(K, dtype=torch.float32, device=device) if has_fisher else None
    placeholder = torch.zeros(1, dtype=torch.float32, device=device)

    chunk = min(_chunk_rows(K, C), N)
    dcos = _alloc((chunk, K), gemm_dtype, device)
    scale2, inv_tau = kernels.LOG2E / tau, 1.0 / tau
    for start in range(0, N, chunk):
        rows_c = rows[start : start + chunk]
        n = rows_c.numel()
        if has_fisher and deterministic:
            fisher_out = _alloc((triton.cdiv(n, kernels.MIN_BLOCK_R), K), torch.float32, device, zero=True)
        elif has_fisher:
            fisher_out = _alloc((K,), torch.float32, device, zero=True)
        else:
            fisher_out = placeholder

        def grid(meta):
            return (triton.cdiv(n, meta["BLOCK_R"]), triton.cdiv(K, meta["BLOCK_K"]))

        kernels._prototype_mil_bwd_dcos[grid](
            x, *x.stride(), prototypes, *prototypes.stride(), rows_c, r[start : start + n], x_norm, p_norm, lse2,
            frame_index32, grad_pooled, *grad_pooled.stride(), dcos, fisher_out,
            n, T, K, C, scale2, inv_tau, EPS,
            HAS_FISHER=has_fisher, DETERMINISTIC=deterministic,
            UPCAST=kernels.INTERPRET, DOT_PRECISION=_dot_precision(x.dtype),
        )
        if has_fisher:
            fisher_sum += fisher_out.sum(dim=0) if deterministic else fisher_out
        if not (need_dx or need_dp):
            continue

        w = dcos[:n]
        b_idx, t_idx = rows_c // T, rows_c % T
        x_norm_rows = x_norm[b_idx, t_idx]
        inv_x = 1.0 / x_norm_rows.clamp_min(EPS)
        xh = x[b_idx, t_idx].float().mul_(inv_x[:, None])  # (n, C) unit frames
        if need_dp:
            dph += _mm_f32(w.t(), xh.to(gemm_dtype))
        if need_dx:
            dxh = _mm_f32(w, ph_gemm)  # (n, C) gradient at the unit frames
            # d(x / max(|x|, eps)): (I - xh xh^T) / |x| above eps, 1 / eps at or below (clamped)
            radial = torch.where(x_norm_rows >= EPS, torch.einsum("rc,rc->r", dxh, xh), 0.0)
            dxh.addcmul_(xh, radial[:, None], value=-1.0).mul_(inv_x[:, None])
            dx.index_copy_(0, rows_c, dxh.to(x.dtype))

    if has_fisher:
        fisher.add_(fisher_sum)
    dp = None
    if need_dp:
        radial = torch.where(p_norm >= EPS, torch.einsum("kc,kc->k", dph, ph), 0.0)
        dp = dph.addcmul_(ph, radial[:, None], value=-1.0).mul_(inv_p[:, None]).to(prototypes.dtype)
    return (dx.view(B, T, C) if need_dx else None), dp


# --- torch.library custom ops: opaque to torch.compile (fake tensors give the shapes) ---------


@torch.library.custom_op("lpmn_fast::prototype_mil_fused", mutates_args=())
def _fused_forward_op(
    x: Tensor, prototypes: Tensor, lengths: Tensor, tau: float, fisher: Optional[Tensor], deterministic: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    # fisher and deterministic are only read by the backward (see _setup_context)
    return prototype_mil_forward(x, prototypes, lengths, tau)


@_fused_forward_op.register_fake
def _(x, prototypes, lengths, tau, fisher, deterministic):
    B, T, _ = x.shape
    K = prototypes.shape[0]
    f32, i64 = torch.float32, torch.int64
    return (
        x.new_empty((B, K)), x.new_empty((B, K), dtype=i64), x.new_empty((B, T), dtype=i64),
        x.new_empty((B, K), dtype=f32), x.new_empty((B, T), dtype=f32), x.new_empty((B, T), dtype=f32),
        x.new_empty((K,), dtype=f32),
    )


# The backward synchronises once with the host (the number of active frames sizes its loop), which
# a CUDA graph cannot capture: the tag asks torch.compile to keep the op out of its CUDA graphs.
_BACKWARD_TAGS = {"tags": (torch.Tag.cudagraph_unsafe,)} if hasattr(torch.Tag, "cudagraph_unsafe") else {}


@torch.library.custom_op("lpmn_fast::prototype_mil_fused_backward", mutates_args=("fisher",), **_BACKWARD_TAGS)
def _fused_backward_op(
    grad_pooled: Tensor,
    x: Tensor,
    prototypes: Tensor,
    frame_index: Tensor,
    pooled32: Tensor,
    lse2: Tensor,
    x_norm: Tensor,
    p_norm: Tensor,
    tau: float,
    fisher: Optional[Tensor],
    deterministic: bool,
    need_dx: bool,
    need_dp: bool,
) -> tuple[Tensor, Tensor]:
    dx, dp = prototype_mil_backward(
        grad_pooled, x, prototypes, frame_index, pooled32, lse2, x_norm, p_norm, tau, fisher, deterministic,
        need_dx, need_dp,
    )
    # a custom op returns tensors: empty ones stand for "not needed"
    return (dx if need_dx else x.new_empty(0)), (dp if need_dp else prototypes.new_empty(0))


@_fused_backward_op.register_fake
def _(grad_pooled, x, prototypes, frame_index, pooled32, lse2, x_norm, p_norm, tau, fisher, deterministic,
      need_dx, need_dp):
    return (x.new_empty(x.shape) if need_dx else x.new_empty(0)), (
        prototypes.new_empty(prototypes.shape) if need_dp else prototypes.new_empty(0)
    )


def _setup_context(ctx, inputs, output):
    x, prototypes, lengths, tau, fisher, deterministic = inputs
    _, frame_index, _, pooled32, lse2, x_norm, p_norm = output
    ctx.save_for_backward(x, prototypes, frame_index, pooled32, lse2, x_norm, p_norm)
    # An attribute, not a saved tensor: the accumulator may legitimately be added to (by another
    # call's backward) between this forward and its backward.
    ctx.fisher = fisher
    ctx.tau = tau
    ctx.deterministic = deterministic


def _backward(ctx, grad_pooled, *unused_grads):
    need_dx, need_dp = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad_pooled is None or not (need_dx or need_dp or ctx.fisher is not None):
        return None, None, None, None, None, None
    x, prototypes, frame_index, pooled32, lse2, x_norm, p_norm = ctx.saved_tensors
    dx, dp = _fused_backward_op(
        grad_pooled, x, prototypes, frame_index, pooled32, lse2, x_norm, p_norm, ctx.tau, ctx.fisher,
        ctx.deterministic, need_dx, need_dp,
    )
    return (dx if need_dx else None), (dp if need_dp else None), None, None, None, None


_fused_forward_op.register_autograd(_backward, setup_context=_setup_context)


def prototype_mil_fused(
    x: Tensor,
    prototypes: Tensor,
    lengths: Tensor,
    tau: float,
    fisher: Optional[Tensor] = None,
    deterministic: bool = False,
) -> PrototypeMILOutput:
    """The fused op on validated inputs (see :func:`lpmn_fast.prototype_mil`), differentiable in x and prototypes.

    x: (B, T, C) float16/bfloat16/float32; prototypes: (K, C) same dtype; lengths: (B,) int64 on
    x's device; fisher: optional float32 (K,) accumulator added to by backward.
    """
    check_fused_device(x)
    pooled, frame_index, nearest, *_ = _fused_forward_op(x, prototypes, lengths, float(tau), fisher, bool(deterministic))
    return PrototypeMILOutput(pooled, frame_index, nearest)


__all__ = [
    "check_fused_device",
    "prototype_mil_backward",
    "prototype_mil_forward",
    "prototype_mil_fused",
]
