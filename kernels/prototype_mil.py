"""Triton kernels of the prototype-MIL op (paper eq. 2 + MIL max over time) and their autotune configs.

Ships as ``lpmn_fast.kernels.prototype_mil``; launched by ``lpmn_fast.ops.triton_op``, which holds
the shape checks, the launches and the autograd wiring. No kernel ever writes a (B, T, K)
tensor: similarity tiles live in registers and are recomputed where needed.

* ``_prototype_mil_fwd``: per (utterance, frame tile), two sweeps over the K prototypes. Sweep 1: the
  online log-sum-exp over K of cos / tau and the running argmax over k of cos (``nearest``).
  Sweep 2: s = exp(cos / tau - lse), then the max over the tile's valid frames of a packed
  (s, frame) key, merged across T-tiles by an integer atomic max (order-independent, so exact and
  deterministic: larger s wins, ties go to the smallest t).
* ``_prototype_mil_bwd_dcos``: per tile of active frames (those that win some max; compacted on the
  device, their count read by the kernels, never by the host), the row weights
  r[b, t] = sum over k with frame_index[b, k] = t of dY[b, k] * Y[b, k], then per K tile: recompute
  cos and s, dcos = s * ([frame_index = t] dY - r) / tau, write D = S * dcos / max(|p_k|, eps) once
  in x's dtype, and sum radial_x[r] = sum_k dcos * cos (registers), radial_p[k] = sum_r dcos * cos
  (per-row-tile partials) and the Fisher term of eq. (4) (atomics, or partials if deterministic).
* ``_prototype_mil_bwd_dx``: GEMM D @ P on the raw prototypes; epilogue
  dx = acc / (S max(|x|, eps)) - radial_x x / |x|^2, stored straight into the frame's row of dx.
* ``_prototype_mil_bwd_dp``: GEMM D^T @ xh (unit frames formed in registers from the raw rows);
  epilogue dp = acc / S - radial_p p / |p|^2 on the last chunk.
* ``_prototype_mil_bwd_zero_rows``: zeroes the dx rows of the frames that win no max.

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

def _precision_family_configs(keys, interpreter_row, sixteen_bit_rows, tf32_rows, fma_rows):
    """triton.Configs in three families, and the pruner that keeps the one matching the launch.

    16-bit inputs take the wgmma tiles; fp32 inputs at "high"/"medium" (tf32x3/tf32 dots) smaller
    tensor-core tiles, as fp32 operand tiles take twice the registers and shared memory; fp32 at
    "highest" ("ieee") the FMA tiles. The input dtype is read from the launch's ``x_ptr``. One
    config when interpreting.
    """

    def make(rows):
        return [triton.Config(dict(zip(keys, row[:-2])), num_warps=row[-2], num_stages=row[-1]) for row in rows]

    if INTERPRET:
        return make([interpreter_row]), None
    families = {"16-bit": make(sixteen_bit_rows), "tf32": make(tf32_rows), "ieee": make(fma_rows)}
    ids = {name: {id(c) for c in configs} for name, configs in families.items()}

    def prune(configs, named_args, **kwargs):
        if kwargs.get("DOT_PRECISION") == "ieee":
            family = "ieee"
        else:
            x = named_args.get("x_ptr")
            family = "tf32" if x is not None and x.dtype.itemsize == 4 else "16-bit"
        return [c for c in configs if id(c) in ids[family]] or configs

    return [c for configs in families.values() for c in configs], {"early_config_prune": prune}


# Backward. Every kernel's grid is fixed by the shapes (B, T, K, C and the chunk size), never by the
# number of active frames, which only the device knows: programs past it exit at once. So nothing in
# the backward waits for the host, and forward + backward can be captured in a CUDA graph.
#
# Rows are (BLOCK_R, BLOCK_K, BLOCK_C, num_warps, num_stages), in three families (16-bit, fp32 on
# tensor cores, fp32 "ieee" on FMA). Every GPU row was compiled offline for sm_90a at the paper
# shape (Triton 3.9, `ptxas -v`, chunk of 8192 frames) in each dtype / dot precision of its family:
# none spills and none needs more than 192 KB of shared memory. Rows dropped for spilling: dcos
# (128, 128, 64, 8, 3) in 16-bit (~600 B); at tf32x3 every 16-bit dcos row (36 B to 1.5 KB), dx
# (128, 64, 64, 4, 3) and dp (64, 128, 128, 8, 3), (64, 64, 128, 4, 3); for "ieee" the dcos rows
# (64, 64, 32, 4, 3), (64, 64, 16, 4, 3), (64, 128, 16, 8, 3) (20-44 B). The kernels hold 214-231
# registers per thread in the dcos 16-bit rows (no spill). Autotuning picks within a family per
# (K, C, rows bucket = next power of two of the chunk's frames, HAS_FISHER for dcos, dtype, precision).
#
# The dcos kernel: per tile of BLOCK_R active frames, a loop over all K prototypes (GEMM tile over C
# plus an elementwise epilogue), so the per-frame sum radial_x is complete in registers.
BWD_DCOS_CONFIGS, BWD_DCOS_PRUNE = _precision_family_configs(
    ("BLOCK_R", "BLOCK_K", "BLOCK_C"),
    (16, 16, 32, 4, 1),
    [(64, 64, 64, 4, 3), (64, 64, 32, 4, 4), (128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (128, 64, 32, 8, 4)],
    [(64, 64, 32, 8, 3), (64, 64, 64, 8, 3), (64, 32, 32, 4, 3), (32, 64, 32, 4, 3)],
    [(32, 64, 32, 4, 3), (32, 64, 16, 4, 3), (64, 64, 16, 8, 3), (64, 64, 32, 8, 3), (32, 32, 32, 4, 3)],
)

# dx = D @ P over a chunk of active frames: output tile BLOCK_R frames x BLOCK_C features, reduction
# over K in steps of BLOCK_K.
BWD_DX_CONFIGS, BWD_DX_PRUNE = _precision_family_configs(
    ("BLOCK_R", "BLOCK_K", "BLOCK_C"),
    (16, 16, 32, 4, 1),
    [(128, 64, 128, 8, 3), (128, 64, 64, 4, 3), (64, 64, 128, 4, 3), (64, 64, 64, 4, 4), (128, 32, 128, 8, 4)],
    [(128, 64, 128, 8, 3), (64, 64, 128, 4, 3), (64, 64, 64, 4, 4), (128, 32, 128, 8, 4)],
    [(64, 16, 64, 4, 3), (32, 32, 64, 4, 3), (64, 32, 32, 4, 3)],
)

# dp = D^T @ xh over a chunk: output tile BLOCK_K prototypes x BLOCK_C features, reduction over the
# chunk's active frames in steps of BLOCK_R.
BWD_DP_CONFIGS, BWD_DP_PRUNE = _precision_family_configs(
    ("BLOCK_R", "BLOCK_K", "BLOCK_C"),
    (16, 16, 32, 4, 1),
    [(64, 128, 128, 8, 3), (64, 64, 128, 4, 3), (32, 128, 128, 8, 4), (64, 64, 64, 4, 3), (32, 64, 64, 4, 4)],
    [(32, 128, 128, 8, 4), (64, 64, 64, 4, 3), (32, 64, 64, 4, 4)],
    [(16, 64, 64, 4, 3), (32, 32, 64, 4, 3), (32, 64, 32, 4, 3)],
)

# Zeroing the rows of dx that win no max only streams stores; one config.
ZERO_ROWS_BLOCK_R = 16 if INTERPRET else 32
ZERO_ROWS_BLOCK_C = 32 if INTERPRET else 256

# Smallest row tile of any dcos config. The host sizes the per-row-tile partial sums (radial_p,
# deterministic Fisher) in slots of MIN_BLOCK_R frames, cdiv(R, MIN_BLOCK_R) per chunk, so whichever
# config autotuning picks writes inside its chunk's slots (unwritten slots stay zero).
MIN_BLOCK_R = min(c.kwargs["BLOCK_R"] for c in BWD_DCOS_CONFIGS)
_MIN_BLOCK_R = tl.constexpr(MIN_BLOCK_R)


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
def _active_chunk_rows(count_ptr, start, R):
    """Active frames in the chunk [start, start + R) of the compacted list, read on the device."""
    return tl.minimum(tl.maximum(tl.load(count_ptr) - start, 0), R)


@triton.autotune(configs=BWD_DCOS_CONFIGS, key=["K", "C", "rows_bucket", "HAS_FISHER", "DOT_PRECISION"],
                 prune_configs_by=BWD_DCOS_PRUNE, reset_to_zero=["fisher_ptr", "radial_p_ptr"])
@triton.jit
def _prototype_mil_bwd_dcos(
    x_ptr,
    stride_xb,
    stride_xt,
    stride_xc,
    p_ptr,
    stride_pk,
    stride_pc,
    rows_ptr,  # (>= start + R,) int64 active frames b * T + t, increasing; entries past count unused
    count_ptr,  # (1,) int64 number of active frames
    x_norm_ptr,  # (B, T) fp32, contiguous
    p_norm_ptr,  # (K,) fp32
    lse2_ptr,  # (B, T) fp32, contiguous, from the forward
    frame_index_ptr,  # (B, K) int64, contiguous
    dpooled_ptr,
    stride_gb,
    stride_gk,
    pooled_ptr,  # (B, K) fp32 pooled, contiguous
    scale_ptr,  # (1,) fp32 power-of-two scale S of D (1 but for float16)
    d_ptr,  # out (R, K), contiguous, x's dtype: D = S * dcos / max(|p_k|, eps)
    radial_x_ptr,  # out (R,) fp32: sum over k of dcos * cos
    radial_p_ptr,  # out (n_slots, K) fp32 zeroed: per row tile, sum over its frames of dcos * cos
    fisher_ptr,  # out: (K,) fp32 zeroed, atomically added to; or (n_slots, K) fp32 zeroed partials if DETERMINISTIC
    start,  # index of the chunk's first frame in the compacted list
    R,  # frames per chunk
    slot0,  # the chunk's first partial-sum slot: chunk index * cdiv(R, MIN_BLOCK_R)
    rows_bucket,  # next power of two of R: an autotuning key only
    T,
    K,
    C,
    scale2,  # log2(e) / tau
    inv_tau,
    eps,
    HAS_FISHER: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    NEED_DX: tl.constexpr,
    NEED_DP: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grid (cdiv(R, BLOCK_R),): dcos of BLOCK_R active frames x all K prototypes, and its row/column sums.

    Per program: a prologue over K reads the (B, K) tables (frame_index, dY, pooled) for its frames
    to form r; then per K tile it recomputes cos (C / BLOCK_C dots of a BLOCK_R x BLOCK_C tile of
    x with a BLOCK_C x BLOCK_K tile of P) and s, and writes D (BLOCK_R x BLOCK_K, x's dtype).
    Reads: x rows (BLOCK_R x C) once per K tile, all of P, the tables; writes D, radial_x, and one
    K-row of radial_p / Fisher partials (or K atomics). Programs past the active count exit.
    The re-reads of a program's own x tile (BLOCK_R x C, 128 KB at 64 x 1024 bf16) on each of its
    K / BLOCK_K steps follow each other closely: the 132 programs in flight hold about 17 MB of x
    tiles plus P (2 MB) in the 50 MB L2, so x crosses HBM about once (modelled, not measured).
    """
    pid = tl.program_id(0)
    n = _active_chunk_rows(count_ptr, start, R)
    row0 = pid.to(tl.int64) * BLOCK_R
    if row0 < n:
        i = row0 + tl.arange(0, BLOCK_R)  # frame within the chunk (int64)
        row_mask = i < n
        row = tl.load(rows_ptr + start + i, mask=row_mask, other=0)
        b = row // T
        t = row - b * T
        bK = b * K  # int64: B * K may pass 2**31
        x_norm = tl.load(x_norm_ptr + row, mask=row_mask, other=1.0)
        inv_x = 1.0 / tl.maximum(x_norm, eps)
        lse2 = tl.load(lse2_ptr + row, mask=row_mask, other=0.0)
        scale = tl.load(scale_ptr)

        # r[b, t] = sum over the prototypes frame t wins of dY * Y, in fixed order
        r = tl.zeros((BLOCK_R,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            mask = row_mask[:, None] & (k < K)[None, :]
            wins = tl.load(frame_index_ptr + bK[:, None] + k[None, :], mask=mask, other=-1) == t[:, None]
            dy = tl.load(dpooled_ptr + b[:, None] * stride_gb + k[None, :] * stride_gk, mask=mask & wins, other=0.0)
            y = tl.load(pooled_ptr + bK[:, None] + k[None, :], mask=mask & wins, other=0.0)
            r += tl.sum(dy.to(tl.float32) * y, axis=1)

        radial_x = tl.zeros((BLOCK_R,), tl.float32)
        # partial-sum slot of this row tile, in units of the smallest row tile of any config
        slot = slot0 + row0 // _MIN_BLOCK_R
        if HAS_FISHER:
            # eq. (4): ||dcos * d cos / d p_k||^2 = dcos^2 (|xh|^2 - cos^2) / max(|p_k|, eps)^2
            xh_sq = x_norm * inv_x
            xh_sq = xh_sq * xh_sq
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_mask = k < K
            mask = row_mask[:, None] & k_mask[None, :]
            inv_p = 1.0 / tl.maximum(tl.load(p_norm_ptr + k, mask=k_mask, other=1.0), eps)
            cos = _cosine_tile(x_ptr + b * stride_xb + t * stride_xt, stride_xc, row_mask, inv_x, p_ptr, stride_pk,
                               stride_pc, k, k_mask, inv_p, C, BLOCK_C, UPCAST, DOT_PRECISION)
            s = tl.exp2(cos * scale2 - lse2[:, None])
            # d pooled[b, j] / d cos[b, t, k] = [f[b, j] = t] s_j (delta_jk - s_k) / tau, summed over j:
            # dcos = s * ([f[b, k] = t] dY[b, k] - r[b, t]) / tau
            wins = tl.load(frame_index_ptr + bK[:, None] + k[None, :], mask=mask, other=-1) == t[:, None]
            dy = tl.load(dpooled_ptr + b[:, None] * stride_gb + k[None, :] * stride_gk, mask=mask & wins, other=0.0)
            dcos = s * (dy.to(tl.float32) - r[:, None]) * inv_tau
            dcos = tl.where(mask, dcos, 0.0)
            if NEED_DX or NEED_DP:
                d = dcos * (inv_p * scale)[None, :]
                tl.store(d_ptr + i[:, None] * K + k[None, :], d.to(d_ptr.dtype.element_ty), mask=mask)
            if NEED_DX:
                radial_x += tl.sum(dcos * cos, axis=1)
            if NEED_DP:
                tl.store(radial_p_ptr + slot * K + k, tl.sum(dcos * cos, axis=0), mask=k_mask)
            if HAS_FISHER:
                term = tl.sum(dcos * dcos * (xh_sq[:, None] - cos * cos), axis=0) * inv_p * inv_p
                if DETERMINISTIC:
                    tl.store(fisher_ptr + slot * K + k, term, mask=k_mask)
                else:
                    tl.atomic_add(fisher_ptr + k, term, mask=k_mask, sem="relaxed")
        if NEED_DX:
            tl.store(radial_x_ptr + i, radial_x, mask=row_mask)


@triton.autotune(configs=BWD_DX_CONFIGS, key=["K", "C", "rows_bucket", "DOT_PRECISION"], prune_configs_by=BWD_DX_PRUNE)
@triton.jit
def _prototype_mil_bwd_dx(
    d_ptr,  # (R, K), contiguous, from the dcos kernel
    p_ptr,
    stride_pk,
    stride_pc,
    x_ptr,
    stride_xb,
    stride_xt,
    stride_xc,
    rows_ptr,  # as in the dcos kernel
    count_ptr,
    x_norm_ptr,  # (B, T) fp32, contiguous
    radial_x_ptr,  # (R,) fp32
    scale_ptr,  # (1,) fp32 S
    dx_ptr,  # out (B, T, C), contiguous, x's dtype: the chunk's rows
    start,
    R,
    rows_bucket,
    T,
    K,
    C,
    eps,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grid (cdiv(C, BLOCK_C), cdiv(R, BLOCK_R)): dx rows = (D @ P) / (S max(|x|, eps)) - radial_x x / |x|^2.

    The feature tile varies fastest, so the programs sharing a row tile of D run together and D
    comes from HBM about once. Reads: a BLOCK_R x K row tile of D and a K x BLOCK_C column tile of
    P (K / BLOCK_K steps), then the BLOCK_R x BLOCK_C tile of x for the epilogue; writes that tile of
    dx straight into its (b, t) row. Programs past the active count exit.
    """
    pid_c = tl.program_id(0)
    pid_r = tl.program_id(1)
    n = _active_chunk_rows(count_ptr, start, R)
    row0 = pid_r.to(tl.int64) * BLOCK_R
    if row0 < n:
        i = row0 + tl.arange(0, BLOCK_R)
        row_mask = i < n
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        c_mask = c < C
        acc = tl.zeros((BLOCK_R, BLOCK_C), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_mask = k < K
            d = tl.load(d_ptr + i[:, None] * K + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            pt = tl.load(p_ptr + k[:, None] * stride_pk + c[None, :] * stride_pc,
                         mask=k_mask[:, None] & c_mask[None, :], other=0.0)
            if UPCAST:
                d = d.to(tl.float32)
                pt = pt.to(tl.float32)
            acc = tl.dot(d, pt, acc, input_precision=DOT_PRECISION)

        # epilogue: d(x / max(|x|, eps)) = (I - xh xh^T) / |x| above eps, I / eps at or below (clamped)
        row = tl.load(rows_ptr + start + i, mask=row_mask, other=0)
        b = row // T
        t = row - b * T
        x_norm = tl.load(x_norm_ptr + row, mask=row_mask, other=1.0)
        inv_x = 1.0 / tl.maximum(x_norm, eps)
        radial = tl.load(radial_x_ptr + i, mask=row_mask, other=0.0)
        radial = tl.where(x_norm >= eps, radial * inv_x * inv_x, 0.0)
        mask = row_mask[:, None] & c_mask[None, :]
        xt = tl.load(x_ptr + (b * stride_xb + t * stride_xt)[:, None] + c[None, :] * stride_xc, mask=mask, other=0.0)
        dx = acc * (inv_x / tl.load(scale_ptr))[:, None] - radial[:, None] * xt.to(tl.float32)
        tl.store(dx_ptr + row[:, None] * C + c[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=BWD_DP_CONFIGS, key=["K", "C", "rows_bucket", "DOT_PRECISION"], prune_configs_by=BWD_DP_PRUNE,
                 restore_value=["g_ptr"])
@triton.jit
def _prototype_mil_bwd_dp(
    d_ptr,  # (R, K), contiguous, from the dcos kernel
    x_ptr,
    stride_xb,
    stride_xt,
    stride_xc,
    p_ptr,
    stride_pk,
    stride_pc,
    rows_ptr,  # as in the dcos kernel
    count_ptr,
    x_norm_ptr,  # (B, T) fp32, contiguous
    p_norm_ptr,  # (K,) fp32
    radial_p_ptr,  # (K,) fp32 sum over all active frames of dcos * cos (read if LAST)
    scale_ptr,  # (1,) fp32 S
    g_ptr,  # in/out (K, C) fp32, contiguous: D^T xh summed over the previous chunks (unused with one chunk)
    dp_ptr,  # out (K, C), contiguous, the prototypes' dtype (written if LAST)
    start,
    R,
    rows_bucket,
    T,
    K,
    C,
    eps,
    ACCUMULATE: tl.constexpr,  # add g (earlier chunks) to this chunk's sum
    LAST: tl.constexpr,  # last chunk: finish dp, else store the running sum in g
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grid (cdiv(K, BLOCK_K), cdiv(C, BLOCK_C)): dp = (D^T @ xh) / S - radial_p p / |p|^2 over a chunk.

    The unit frames xh = x / max(|x|, eps) are formed in registers from the raw rows (|xh| <= 1, in
    float16's range whatever |x| is), never stored. Reads per program: a BLOCK_R x BLOCK_K tile of D
    and a BLOCK_R x BLOCK_C tile of x per step over the chunk's active frames (a loop with a
    device-side trip count), then g or P; writes one BLOCK_K x BLOCK_C tile of g (fp32) or dp.
    """
    pid_k = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = _active_chunk_rows(count_ptr, start, R)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = k < K
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    acc = tl.zeros((BLOCK_K, BLOCK_C), tl.float32)
    for r0 in range(0, n, BLOCK_R):
        i = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        row_mask = i < n
        row = tl.load(rows_ptr + start + i, mask=row_mask, other=0)
        b = row // T
        t = row - b * T
        inv_x = 1.0 / tl.maximum(tl.load(x_norm_ptr + row, mask=row_mask, other=1.0), eps)
        d = tl.load(d_ptr + i[:, None] * K + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        xt = tl.load(x_ptr + (b * stride_xb + t * stride_xt)[:, None] + c[None, :] * stride_xc,
                     mask=row_mask[:, None] & c_mask[None, :], other=0.0)
        xh = xt.to(tl.float32) * inv_x[:, None]
        if UPCAST:
            d = d.to(tl.float32)
        else:
            xh = xh.to(d_ptr.dtype.element_ty)
        acc = tl.dot(tl.trans(d), xh, acc, input_precision=DOT_PRECISION)

    offsets = k[:, None].to(tl.int64) * C + c[None, :]
    mask = k_mask[:, None] & c_mask[None, :]
    if ACCUMULATE:
        acc += tl.load(g_ptr + offsets, mask=mask, other=0.0)
    if LAST:
        # d(p / max(|p|, eps)): (I - ph ph^T) / |p| above eps, I / eps at or below (clamped)
        p_norm = tl.load(p_norm_ptr + k, mask=k_mask, other=1.0)
        inv_p = 1.0 / tl.maximum(p_norm, eps)
        radial = tl.load(radial_p_ptr + k, mask=k_mask, other=0.0)
        radial = tl.where(p_norm >= eps, radial * inv_p * inv_p, 0.0)
        pt = tl.load(p_ptr + k[:, None] * stride_pk + c[None, :] * stride_pc, mask=mask, other=0.0)
        dp = acc / tl.load(scale_ptr) - radial[:, None] * pt.to(tl.float32)
        tl.store(dp_ptr + offsets, dp.to(dp_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(g_ptr + offsets, acc, mask=mask)


@triton.jit
def _prototype_mil_bwd_zero_rows(
    active_ptr,  # (B * T,) uint8: 1 where the frame wins some max
    dx_ptr,  # out (B * T, C), contiguous
    BT,
    C,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grid (cdiv(B * T, BLOCK_R), cdiv(C, BLOCK_C)): zero the dx rows of frames that win no max.

    Reads B * T flags, writes only the inactive rows (padding included): dx needs no full-size memset.
    """
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_rows = r < BT
    idle = tl.load(active_ptr + r, mask=in_rows, other=1) == 0
    mask = (in_rows & idle)[:, None] & (c < C)[None, :]
    tl.store(dx_ptr + r[:, None] * C + c[None, :], tl.zeros((BLOCK_R, BLOCK_C), dx_ptr.dtype.element_ty), mask=mask)
