"""Fused Triton backend of the prototype-MIL op: host functions, custom ops and autograd.

Forward (``prototype_mil_forward``): one kernel, two similarity sweeps per frame tile (the
log-sum-exp over K must be known before the max over t), no (B, T, K) tensor anywhere; at small
batches a split-K variant in two launches. No host synchronisation: the host glue decides the
schedule from shapes alone and launches on x's device (``launch_device``). Saves for backward
only O(B*T + B*K + K) statistics: per-frame |x| and log-sum-exp, per-prototype |p|, the fp32
pooled values and frame_index.

Backward (``prototype_mil_backward``): the gradient at the similarities,
dcos[b,t,k] = s[b,t,k] * ([frame_index[b,k] = t] dY[b,k] - r[b,t]) / tau, vanishes on every frame
that wins no max, so only the active frames (at most min(T, K) per utterance) are touched. They are
compacted on the device (a cumulative sum over B*T flags) and processed in a fixed number of chunks
of R frames (worst case B*min(T, K) frames); kernels read the active count on the device and their
programs past it exit, so there is no host synchronisation and the backward captures in a CUDA graph.
Per chunk, with inv_x = 1 / max(|x|, eps), inv_p = 1 / max(|p|, eps) and D = S * dcos * inv_p
(S a power of two, 1 but for float16, where it lifts D into float16's range):

* row-weight kernel: r[b, t] = sum over the prototypes frame t wins of dY Y, per active frame;
* dcos kernel, one program per (row tile, K tile), the K tile fastest: D (R, K) written once in x's
  dtype, the K tile's partials of radial_x[r] = sum_k dcos cos (fixed slots), radial_p[k] =
  sum_r dcos cos and the Fisher term of eq. (4), all from the recomputed tile;
* dx kernel: dx_r = inv_x / S * sum_k D[r,k] P_k - radial_x[r] inv_x^2 x_r (radial_x summed from
  the slots in a fixed order; the radial term only where |x_r| >= eps: a clamped norm has no
  derivative), stored straight into row (b, t) of dx;
* dp kernel: dp_k = 1 / S * sum_r D[r,k] inv_x[r] x_r - radial_p[k] inv_p^2 P_k (same eps rule), the
  unit rows inv_x x formed in registers (|.| <= 1, so float16 holds them), the sum carried across
  chunks in one fp32 (K, C) buffer;
* a last kernel zeroes the dx rows that win no max (padding included).

Both GEMMs run on the raw x rows and P in the input's dtype (fp32 accumulation); no fp32 copy of
x, P or their unit vectors exists. The inv_x factor is kept out of D so that a frame with a tiny norm
(1 / eps = 1e12) cannot push D out of float16's range.

HBM bytes at the paper shape (B 128, T 300, C = K = 1024, bf16, lengths 150-300: N <= 28,800 active
frames, their mean total; R = 8192, 5 chunks), counting each tensor once per kernel that reads or
writes it (re-reads of a tile by the programs that run together are served by the 50 MB L2: the
dcos kernel's x row tile by its K-tile programs, which have neighbouring ids, and P, 2.1 MB, across
programs): row weights: tables 1 MB, rows and r < 1 MB; dcos: x rows N*C*2 = 59 MB, D N*K*2 = 59 MB,
radial_p partials (zeroed, written, summed) 16 MB, radial_x partials (32 slots x R fp32 per chunk)
4 MB, tables 3 MB; dx: D 59 + x 59 + dx 59 MB, radial_x partials 4 MB; zero rows: (B*T - N)*C*2 =
20 MB; dp: D 59 + x 59 MB, fp32 running sum 4 writes + 4 reads of 4.2 MB = 34 MB, P and dp 4 MB;
compaction and scale < 3 MB. Total about 0.51 GB (deterministic Fisher partials add 16 MB), against
about 2 GB for the earlier host-side glue. ``python -m benchmarks.roofline`` models 0.47 GB at the
benchmark suite's ragged lengths (25,239 active frames); benchmarks/results/roofline-paper.md.

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

# Active frames per backward chunk: R * K <= 2**23 elements, so the chunk's D (R, K) takes at most
# 32 MB (fp32; half that for 16-bit inputs) whatever B and T are.
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
    """Active frames per backward chunk: a multiple of 128 with rows * K <= CHUNK_ELEMENTS."""
    return max(128, CHUNK_ELEMENTS // K // 128 * 128)


def _active_frames(frame_index: Tensor, T: int) -> tuple[Tensor, Tensor, Tensor]:
    """The frames that win some prototype's max, compacted on the device (no host synchronisation).

    frame_index: (B, K) int64 in [0, T). Returns active (B * T,) bool; rows (B * min(T, K) + 1,)
    int64 whose first ``count`` entries are the active frames b * T + t in increasing order (the
    rest is unused); count (1,) int64.
    """
    B, K = frame_index.shape
    device = frame_index.device
    n_max = B * min(T, K)  # an utterance has at most min(T, K) distinct winners
    winners = (frame_index + torch.arange(B, device=device)[:, None] * T).flatten()
    active = torch.zeros(B * T, dtype=torch.bool, device=device).index_fill_(0, winners, True)
    position = torch.cumsum(active, 0)  # inclusive count of active frames up to each frame
    count = position[-1:]
    # active frame -> its place in the list; inactive ones all go to the spare last entry
    place = torch.where(active, position - 1, n_max)
    rows = _alloc((n_max + 1,), torch.int64, device)
    rows.scatter_(0, place, torch.arange(B * T, device=device))
    return active, rows, count


def _d_scale(grad_pooled: Tensor, p_norm: Tensor, tau: float, dtype: torch.dtype) -> Tensor:
    """(1,) fp32 power of two S by which D = S * dcos / max(|p|, eps) is stored, computed on the device.

    float16 only (1 otherwise): dcos ~ s * dY / tau is often far below float16's smallest normal
    number (s ~ 1/K, dY ~ 1/B), so D is scaled to put its bound near 2**14. |dcos| <= 2 max|dY| /
    tau, since s <= 1 and |r| <= max|dY| (the pooled values of one frame sum to at most 1).
    """
    if dtype != torch.float16:
        return torch.ones(1, dtype=torch.float32, device=grad_pooled.device)
    bound = grad_pooled.detach().abs().amax().float() * (2.0 / tau) / p_norm.clamp_min(EPS).amin()
    # all-zero dY: bound 0, exponent +inf -> clamped; NaN in dY stays NaN (and so do the gradients)
    exponent = torch.floor(torch.log2(2.0**14 / bound)).clamp(-100.0, 100.0)
    return torch.exp2(exponent).reshape(1)


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
    No host synchronisation: the launches depend on the shapes only. Launches on x's device.
    """
    with launch_device(x):
        return _backward_launches(grad_pooled, x, prototypes, frame_index, pooled32, lse2, x_norm, p_norm, tau,
                                  fisher, deterministic, need_dx, need_dp)


def _backward_launches(grad_pooled, x, prototypes, frame_index, pooled32, lse2, x_norm, p_norm, tau, fisher,
                       deterministic, need_dx, need_dp):
    """The body of :func:`prototype_mil_backward`, run with x's device current."""
    B, T, C = x.shape
    K = prototypes.shape[0]
    device = x.device
    active, rows, count = _active_frames(frame_index, T)
    n_max = rows.numel() - 1
    R = min(_chunk_rows(K, C), n_max)
    n_chunks = triton.cdiv(n_max, R)
    chunk_slots = triton.cdiv(R, kernels.MIN_BLOCK_R)  # per-row-tile partial sums, a disjoint range per chunk
    n_slots = n_chunks * chunk_slots
    rows_bucket = triton.next_power_of_2(R)

    f32 = torch.float32
    has_fisher = fisher is not None
    placeholder = torch.zeros(1, dtype=f32, device=device)
    d = _alloc((R, K), x.dtype, device) if (need_dx or need_dp) else placeholder
    # per-K-tile partials of radial_x; the dcos kernel writes every slot of its chunk's rows (no memset)
    radial_x = _alloc((kernels.radial_x_slots(K), R), f32, device) if need_dx else placeholder
    row_weight = _alloc((R,), f32, device)
    radial_parts = _alloc((n_slots, K), f32, device, zero=True) if need_dp else placeholder
    if has_fisher:
        fisher_out = _alloc((n_slots, K) if deterministic else (K,), f32, device, zero=True)
    else:
        fisher_out = placeholder
    dx = _alloc((B, T, C), x.dtype, device) if need_dx else None
    dp = _alloc((K, C), prototypes.dtype, device) if need_dp else None
    g = _alloc((K, C), f32, device) if (need_dp and n_chunks > 1) else placeholder
    radial_p = placeholder
    scale = _d_scale(grad_pooled, p_norm, tau, x.dtype)
    upcast, precision = kernels.INTERPRET, _dot_precision(x.dtype)

    for chunk in range(n_chunks):
        start, last = chunk * R, chunk == n_chunks - 1
        kernels._prototype_mil_bwd_row_weights[(triton.cdiv(R, kernels.ROW_WEIGHTS_BLOCK_R),)](
            rows, count, frame_index, grad_pooled, *grad_pooled.stride(), pooled32, row_weight, start, R, T, K,
            BLOCK_R=kernels.ROW_WEIGHTS_BLOCK_R, BLOCK_K=kernels.ROW_WEIGHTS_BLOCK_K,
        )
        # one program per (row tile, K tile), the K tile fastest: a row tile's programs share its x rows in L2
        dcos_grid = lambda meta: (triton.cdiv(K, meta["BLOCK_K"]) * triton.cdiv(R, meta["BLOCK_R"]),)  # noqa: E731
        kernels._prototype_mil_bwd_dcos[dcos_grid](
            x, *x.stride(), prototypes, *prototypes.stride(), rows, count, x_norm, p_norm, lse2, frame_index,
            grad_pooled, *grad_pooled.stride(), row_weight, scale, d, radial_x, radial_parts, fisher_out,
            start, R, chunk * chunk_slots, rows_bucket, T, K, C, kernels.LOG2E / tau, 1.0 / tau, EPS,
            HAS_FISHER=has_fisher, DETERMINISTIC=deterministic, NEED_DX=need_dx, NEED_DP=need_dp,
            UPCAST=upcast, DOT_PRECISION=precision,
        )
        if need_dx:
            kernels._prototype_mil_bwd_dx[lambda meta: (triton.cdiv(C, meta["BLOCK_C"]), triton.cdiv(R, meta["BLOCK_R"]))](
                d, prototypes, *prototypes.stride(), x, *x.stride(), rows, count, x_norm, radial_x, scale, dx,
                start, R, rows_bucket, T, K, C, EPS,
                UPCAST=upcast, DOT_PRECISION=precision,
            )
        if need_dp:
            if last:  # every chunk's dcos is written: the column sums are complete
                radial_p = radial_parts.sum(dim=0)
            kernels._prototype_mil_bwd_dp[lambda meta: (triton.cdiv(K, meta["BLOCK_K"]), triton.cdiv(C, meta["BLOCK_C"]))](
                d, x, *x.stride(), prototypes, *prototypes.stride(), rows, count, x_norm, p_norm, radial_p, scale, g,
                dp, start, R, rows_bucket, T, K, C, EPS,
                ACCUMULATE=chunk > 0, LAST=last, UPCAST=upcast, DOT_PRECISION=precision,
            )
    if need_dx:
        grid = (triton.cdiv(B * T, kernels.ZERO_ROWS_BLOCK_R), triton.cdiv(C, kernels.ZERO_ROWS_BLOCK_C))
        kernels._prototype_mil_bwd_zero_rows[grid](
            active.view(torch.uint8), dx, B * T, C,
            BLOCK_R=kernels.ZERO_ROWS_BLOCK_R, BLOCK_C=kernels.ZERO_ROWS_BLOCK_C,
        )
    if has_fisher:
        fisher.add_(fisher_out.sum(dim=0) if deterministic else fisher_out)
    return dx, dp


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


# The backward never synchronises with the host (its launches depend on the shapes only), so it
# needs no cudagraph_unsafe tag: torch.compile's CUDA graphs may capture it.
@torch.library.custom_op("lpmn_fast::prototype_mil_fused_backward", mutates_args=("fisher",))
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
