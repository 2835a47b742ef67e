"""Triton kernels of the prototype-MIL op (paper eq. 2 + MIL max over time) and their autotune configs.

Ships as ``lpmn_fast.kernels.prototype_mil``; launched by ``lpmn_fast.ops.triton_op``, which holds
the shape checks, the host-side GEMMs and the autograd wiring. No kernel ever writes a (B, T, K)
tensor: similarity tiles live in registers and are recomputed where needed.

* ``_prototype_mil_fwd``: per (utterance, frame tile), two sweeps over the K prototypes. Sweep 1: the
  online log-sum-exp over K of cos / tau and the running argmax over k of cos (``nearest``).
  Sweep 2: s = exp(cos / tau - lse), then the max over the tile's valid frames of a packed
  (s, frame) key, merged across T-tiles by an integer atomic max (order-independent, so exact and
  deterministic: larger s wins, ties go to the smallest t).
* ``_prototype_mil_bwd_row_weight``: r[b, t] = sum over k with frame_index[b, k] = t of
  dY[b, k] * Y[b, k] for the active frames (those that win some max); fixed summation order.
* ``_prototype_mil_bwd_dcos``: over a chunk of active frames x K, recompute cos and s and write
  dcos = s * ([frame_index = t] dY - r) / tau, the gradient at the similarities; the Fisher
  term of eq. (4) is summed from the same tile (atomically, or into per-tile partials).

Every kernel computes the cosine as (x . p) / (max(|x|, eps) max(|p|, eps)) from fp32 norms, with
an fp32 accumulator whatever the input dtype.

Interpreter notes (TRITON_INTERPRET=1, CPU): only one autotune config (benchmarking needs a GPU),
and the host passes UPCAST=True because the interpreter's bfloat16 ``tl.dot`` is wrong: tiles are
cast to fp32 before the dot, which is exact for 16-bit products.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

try:  # how triton itself decides, at decoration time, whether kernels are interpreted
    from triton import knobs as _knobs

    INTERPRET = bool(_knobs.runtime.interpret)
except (ImportError, AttributeError):  # older triton
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# s = exp(cos/tau - lse) is computed as exp2((cos/tau - lse) * log2(e)) (ex2 is the native op).
LOG2E = 1.4426950408889634

# Frames are packed below the similarity bits as (INT32_MAX - t): the larger key has the larger s,
# and among equal s the smaller t. (Kernels read globals only as tl.constexpr; the host the int.)
INT32_MAX = 2147483647
_FRAME_CODE_BASE = tl.constexpr(INT32_MAX)


def _configs(keys, interpreter_row, tensor_core_rows, fma_rows):
    """triton.Configs from rows (block sizes..., num_warps, num_stages), and their pruner.

    Two families on a GPU: tensor-core tiles (16-bit inputs, TF32) and smaller FMA tiles for
    full-precision fp32 dots (DOT_PRECISION="ieee"), whose operands live in registers; the pruner
    keeps the family matching the launch. One config when interpreting.
    """

    def make(rows):
        return [triton.Config(dict(zip(keys, row[:-2])), num_warps=row[-2], num_stages=row[-1]) for row in rows]

    if INTERPRET:
        return make([interpreter_row]), None
    tensor_core, fma = make(tensor_core_rows), make(fma_rows)
    fma_ids = {id(c) for c in fma}

    def prune(configs, named_args, **kwargs):
        want_fma = kwargs.get("DOT_PRECISION") == "ieee"
        return [c for c in configs if (id(c) in fma_ids) == want_fma] or configs

    return tensor_core + fma, {"early_config_prune": prune}


# Rows are (block sizes..., num_warps, num_stages). The interpreter's tiles (16 frames x 16
# prototypes x 32 features) keep the CPU interpreter tolerable while still spanning several tiles
# at the test shapes (T = 23, K = 37, C = 33), so every merge and mask runs. The GPU rows were
# checked offline for sm_90 (Triton 3.9: pipelined loads, wgmma for 16-bit tiles, no register
# spills, shared memory within 228 KB); autotuning picks among them per (K, C, dtype, precision).
FWD_CONFIGS, FWD_PRUNE = _configs(
    ("BLOCK_T", "BLOCK_K", "BLOCK_C"),
    (16, 16, 32, 4, 1),
    [(64, 64, 64, 4, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 3), (128, 128, 64, 8, 3), (128, 128, 32, 8, 4),
     (64, 128, 32, 4, 4)],
    [(64, 64, 16, 4, 3), (64, 64, 32, 4, 3), (128, 64, 16, 8, 3), (64, 128, 16, 8, 3), (32, 64, 32, 4, 3)],
)

# The dcos kernel: a GEMM tile (active frames x prototypes) with an elementwise epilogue.
BWD_DCOS_CONFIGS, BWD_DCOS_PRUNE = _configs(
    ("BLOCK_R", "BLOCK_K", "BLOCK_C"),
    (16, 16, 32, 4, 1),
    [(64, 64, 64, 4, 3), (64, 64, 32, 4, 4), (128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (128, 128, 64, 8, 3),
     (128, 128, 32, 8, 4)],
    [(64, 64, 32, 4, 3), (64, 64, 16, 4, 3), (64, 128, 16, 8, 3), (32, 64, 32, 4, 3), (64, 128, 64, 8, 3)],
)

# The row-weight kernel only streams (B, K) tables; one config.
ROW_WEIGHT_BLOCK_R = 16 if INTERPRET else 32
ROW_WEIGHT_BLOCK_K = 32 if INTERPRET else 128

# Smallest row tile of any dcos config: the host sizes the deterministic Fisher partials for it, so
# whichever config autotuning picks writes inside them (unwritten rows stay zero).
MIN_BLOCK_R = min(c.kwargs["BLOCK_R"] for c in BWD_DCOS_CONFIGS)


@triton.jit
def _cosine_tile(
    x_rows,  # (BLOCK_R,) pointers to the first feature of each frame
    stride_xc,
    row_mask,
    inv_x,  # (BLOCK_R,) fp32 1 / max(|x|, eps)
    p_ptr,
    stride_pk,
    stride_pc,
    k,  # (BLOCK_K,) prototype indices
    k_mask,
    inv_p,  # (BLOCK_K,) fp32 1 / max(|p|, eps)
    C,
    BLOCK_C: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """cos (BLOCK_R, BLOCK_K) fp32 between the given frames and prototypes, eq. (2)."""
    acc = tl.zeros((x_rows.shape[0], k.shape[0]), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_mask = c < C
        xt = tl.load(x_rows[:, None] + c[None, :] * stride_xc, mask=row_mask[:, None] & c_mask[None, :], other=0.0)
        # prototypes loaded as a (BLOCK_C, BLOCK_K) tile: the dot's right operand, no transpose
        pt = tl.load(
            p_ptr + k[None, :] * stride_pk + c[:, None] * stride_pc,
            mask=k_mask[None, :] & c_mask[:, None],
            other=0.0,
        )
        if UPCAST:
            xt = xt.to(tl.float32)
            pt = pt.to(tl.float32)
        acc = tl.dot(xt, pt, acc, input_precision=DOT_PRECISION)
    return acc * inv_x[:, None] * inv_p[None, :]


# reset_to_zero: autotuning launches every config many times into the same keys, and an atomic max
# keeps the largest of their (differently rounded) keys unless keys are zeroed before each launch.
@triton.autotune(configs=FWD_CONFIGS, key=["K", "C", "DOT_PRECISION"], prune_configs_by=FWD_PRUNE,
                 reset_to_zero=["keys_ptr"])
@triton.jit
def _prototype_mil_fwd(
    x_ptr,
    stride_xb,
    stride_xt,
    stride_xc,
    p_ptr,
    stride_pk,
    stride_pc,
    lengths_ptr,  # (B,) int64
    x_norm_ptr,  # (B, T) fp32 |x|, contiguous
    p_norm_ptr,  # (K,) fp32 |p|
    lse2_ptr,  # out (B, T) fp32, contiguous: log2-sum-exp2 over k of cos * log2(e) / tau (0 on padding)
    nearest_ptr,  # out (B, T) int64, contiguous
    keys_ptr,  # in/out (B, K) int64, contiguous, zero-initialised: packed (s, frame) maxima
    T,
    K,
    C,
    scale2,  # log2(e) / tau
    eps,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grid (B, cdiv(T, BLOCK_T)): lse and nearest of BLOCK_T frames, then their share of the max over t."""
    b = tl.program_id(0).to(tl.int64)  # axis 0: up to 2**31 - 1 utterances
    pid_t = tl.program_id(1)
    length = tl.load(lengths_ptr + b)
    t = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    in_T = t < T
    valid = t < length
    stat_offsets = b * T + t
    if pid_t * BLOCK_T >= length:
        # A tile of padding only: no similarity is computed, nothing in it can win a max.
        tl.store(nearest_ptr + stat_offsets, tl.full((BLOCK_T,), -1, tl.int64), mask=in_T)
        tl.store(lse2_ptr + stat_offsets, tl.zeros((BLOCK_T,), tl.float32), mask=in_T)
    else:
        x_rows = x_ptr + b * stride_xb + t * stride_xt
        x_norm = tl.load(x_norm_ptr + stat_offsets, mask=valid, other=1.0)
        inv_x = 1.0 / tl.maximum(x_norm, eps)

        # Sweep 1: online log-sum-exp over K (base 2) and the first argmax of cos.
        m = tl.full((BLOCK_T,), float("-inf"), tl.float32)
        l = tl.zeros((BLOCK_T,), tl.float32)
        best = tl.full((BLOCK_T,), float("-inf"), tl.float32)
        best_k = tl.zeros((BLOCK_T,), tl.int64)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_mask = k < K
            inv_p = 1.0 / tl.maximum(tl.load(p_norm_ptr + k, mask=k_mask, other=1.0), eps)
            cos = _cosine_tile(x_rows, stride_xc, valid, inv_x, p_ptr, stride_pk, stride_pc, k, k_mask, inv_p, C,
                               BLOCK_C, UPCAST, DOT_PRECISION)
            cos = tl.where(k_mask[None, :], cos, float("-inf"))
            z = cos * scale2
            m_new = tl.maximum(m, tl.max(z, axis=1))
            l = l * tl.exp2(m - m_new) + tl.sum(tl.exp2(z - m_new[:, None]), axis=1)
            m = m_new
            tile_best = tl.max(cos, axis=1)
            tile_arg = tl.argmax(cos, axis=1, tie_break_left=True).to(tl.int64) + k0
            # strict >: on a tie the earlier tile, i.e. the smaller k, keeps it
            better = tile_best > best
            best = tl.where(better, tile_best, best)
            best_k = tl.where(better, tile_arg, best_k)
        lse2 = m + tl.log2(l)
        tl.store(lse2_ptr + stat_offsets, tl.where(valid, lse2, 0.0), mask=in_T)
        tl.store(nearest_ptr + stat_offsets, tl.where(valid, best_k, -1), mask=in_T)

        # Sweep 2: s = softmax over K (eq. 2), then this tile's max over valid frames per prototype.
        frame_code = (-t + _FRAME_CODE_BASE)[:, None]  # tensor + constexpr: a tensor, also when interpreted
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_mask = k < K
            inv_p = 1.0 / tl.maximum(tl.load(p_norm_ptr + k, mask=k_mask, other=1.0), eps)
            cos = _cosine_tile(x_rows, stride_xc, valid, inv_x, p_ptr, stride_pk, stride_pc, k, k_mask, inv_p, C,
                               BLOCK_C, UPCAST, DOT_PRECISION)
            s = tl.exp2(cos * scale2 - lse2[:, None])
            # s >= 0, so its fp32 bits order like the values; padding gets key 0, below every frame.
            key = (s.to(tl.int32, bitcast=True).to(tl.int64) << 32) | frame_code
            key = tl.where(valid[:, None], key, 0)
            tl.atomic_max(keys_ptr + b * K + k, tl.max(key, axis=0), mask=k_mask)


@triton.jit
def _prototype_mil_bwd_row_weight(
    rows_ptr,  # (N,) int64 active frames as b * T + t, increasing
    r_ptr,  # out (N,) fp32
    frame_index_ptr,  # (B, K) int32, contiguous
    dpooled_ptr,
    stride_gb,
    stride_gk,
    pooled_ptr,  # (B, K) fp32 pooled, contiguous
    N,
    T,
    K,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Grid (cdiv(N, BLOCK_R),): r = sum over the prototypes frame t wins of dY * Y, in fixed order."""
    i = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = i < N
    row = tl.load(rows_ptr + i, mask=row_mask, other=0)
    b = row // T
    t = (row - b * T).to(tl.int32)
    bk = (b * K).to(tl.int32)
    r = tl.zeros((BLOCK_R,), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mask = row_mask[:, None] & (k < K)[None, :]
        wins = tl.load(frame_index_ptr + bk[:, None] + k[None, :], mask=mask, other=-1) == t[:, None]
        dy = tl.load(dpooled_ptr + b[:, None] * stride_gb + k[None, :] * stride_gk, mask=mask & wins, other=0.0)
        y = tl.load(pooled_ptr + bk[:, None] + k[None, :], mask=mask & wins, other=0.0)
        r += tl.sum(dy.to(tl.float32) * y, axis=1)
    tl.store(r_ptr + i, r, mask=row_mask)


@triton.autotune(configs=BWD_DCOS_CONFIGS, key=["K", "C", "DOT_PRECISION"], prune_configs_by=BWD_DCOS_PRUNE,
                 reset_to_zero=["fisher_ptr"])
@triton.jit
def _prototype_mil_bwd_dcos(
    x_ptr,
    stride_xb,
    stride_xt,
    stride_xc,
    p_ptr,
    stride_pk,
    stride_pc,
    rows_ptr,  # (n,) int64 active frames b * T + t of this chunk
    r_ptr,  # (n,) fp32 row weights of this chunk
    x_norm_ptr,  # (B, T) fp32, contiguous
    p_norm_ptr,  # (K,) fp32
    lse2_ptr,  # (B, T) fp32, contiguous, from the forward
    frame_index_ptr,  # (B, K) int32, contiguous
    dpooled_ptr,
    stride_gb,
    stride_gk,
    dcos_ptr,  # out (n, K), contiguous, in the dtype of the GEMMs that consume it
    fisher_ptr,  # out: (K,) fp32 zeroed, atomically added to; or (n_row_tiles, K) fp32 partials if DETERMINISTIC
    n,
    T,
    K,
    C,
    scale2,  # log2(e) / tau
    inv_tau,
    eps,
    HAS_FISHER: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grid (cdiv(n, BLOCK_R), cdiv(K, BLOCK_K)): dcos of BLOCK_R active frames x BLOCK_K prototypes."""
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
    # int32 offsets into the small tables (chunk x K, B x K); int64 ones into x (B*T*C may pass 2**31)
    i = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = i < n
    row = tl.load(rows_ptr + i, mask=row_mask, other=0)
    b = row // T
    t = row - b * T
    bk = (b * K).to(tl.int32)
    t32 = t.to(tl.int32)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = k < K
    mask = row_mask[:, None] & k_mask[None, :]

    x_norm = tl.load(x_norm_ptr + row, mask=row_mask, other=1.0)
    inv_x = 1.0 / tl.maximum(x_norm, eps)
    inv_p = 1.0 / tl.maximum(tl.load(p_norm_ptr + k, mask=k_mask, other=1.0), eps)
    cos = _cosine_tile(x_ptr + b * stride_xb + t * stride_xt, stride_xc, row_mask, inv_x, p_ptr, stride_pk,
                       stride_pc, k, k_mask, inv_p, C, BLOCK_C, UPCAST, DOT_PRECISION)
    lse2 = tl.load(lse2_ptr + row, mask=row_mask, other=0.0)
    s = tl.exp2(cos * scale2 - lse2[:, None])

    # d pooled[b, j] / d cos[b, t, k] = [f[b, j] = t] s_j (delta_jk - s_k) / tau, summed over j:
    # dcos = s * ([f[b, k] = t] dY[b, k] - r[b, t]) / tau
    wins = tl.load(frame_index_ptr + bk[:, None] + k[None, :], mask=mask, other=-1) == t32[:, None]
    dy = tl.load(dpooled_ptr + b[:, None] * stride_gb + k[None, :] * stride_gk, mask=mask & wins, other=0.0)
    r = tl.load(r_ptr + i, mask=row_mask, other=0.0)
    dcos = s * (dy.to(tl.float32) - r[:, None]) * inv_tau
    dcos = tl.where(mask, dcos, 0.0)
    tl.store(dcos_ptr + i[:, None] * K + k[None, :], dcos.to(dcos_ptr.dtype.element_ty), mask=mask)

    if HAS_FISHER:
        # eq. (4): ||dcos * d cos / d p_k||^2 = dcos^2 (|xh|^2 - cos^2) / max(|p_k|, eps)^2
        xh_sq = x_norm * inv_x
        xh_sq = xh_sq * xh_sq
        term = tl.sum(dcos * dcos * (xh_sq[:, None] - cos * cos), axis=0) * inv_p * inv_p
        if DETERMINISTIC:
            tl.store(fisher_ptr + pid_r * K + k, term, mask=k_mask)
        else:
            tl.atomic_add(fisher_ptr + k, term, mask=k_mask)
