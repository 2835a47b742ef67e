"""Triton kernels of the prototype-MIL op (paper eq. 2 + MIL max over time) and their autotune configs.

Ships as ``lpmn_fast.kernels.prototype_mil``; launched by ``lpmn_fast.ops.triton_op``, which holds
the shape checks, the launches and the autograd wiring. No kernel ever writes a (B, T, K)
tensor: similarity tiles live in registers and are recomputed where needed.

* ``_prototype_mil_fwd``: per (utterance, frame tile): |x| of the tile's frames (no separate norm
  pass), then two sweeps over the K prototypes, each one flat loop over (K tile, C tile) so the
  software pipeline never drains between K tiles. Sweep 1: the online log-sum-exp over K of
  cos / tau and the running argmax over k of cos (``nearest``). Sweep 2: u = log2 s = cos log2(e)
  / tau - lse2 (<= 0), then the max over the tile's valid frames of a packed (u, frame) key,
  merged across T-tiles by a relaxed integer atomic max (order-independent, so exact and
  deterministic: larger u wins, ties go to the smallest t). The max is taken on u, not on
  s = exp2(u): the GPU's exp2 flushes s < 2**-126 to zero, which would tie all such maxima.
* ``_prototype_mil_fwd_split_lse`` / ``_prototype_mil_fwd_split_max``: the same forward in two
  launches for small batches, the grid extended by prototype slices: partial log-sum-exps (and
  argmaxes) per slice, then each program merges the slices' partials and takes the max over its
  own slice (the flash-decoding scheme).
* ``_prototype_mil_bwd_row_weights``: per tile of active frames (those that win some max; compacted
  on the device, their count read by the kernels, never by the host), the row weights
  r[b, t] = sum over k with frame_index[b, k] = t of dY[b, k] * Y[b, k].
* ``_prototype_mil_bwd_dcos``: per (tile of active frames, K tile), the K tile fastest:
  recompute cos and s, dcos = s * ([frame_index = t] dY - r) / tau, write D = S * dcos / max(|p_k|, eps)
  once in x's dtype, and the per-K-tile partials of radial_x[r] = sum_k dcos * cos (summed in fixed
  order by the dx kernel), radial_p[k] = sum_r dcos * cos (per-row-tile partials) and the Fisher term
  of eq. (4) (atomics, or partials if deterministic).
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

# Frames are packed below the bits of u = log2 s as (INT32_MAX - t): the larger key has the larger
# s, and among equal s the smaller t. (Kernels read globals only as tl.constexpr; the host the int.)
INT32_MAX = 2147483647
_FRAME_CODE_BASE = tl.constexpr(INT32_MAX)
# Keys (B, K) start at INT64_MIN, below the key of any real frame; padding frames offer INT64_MIN.
INT64_MIN = -(2**63)
_KEY_INIT = tl.constexpr(INT64_MIN)


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
        kept = [c for c in configs if id(c) in ids[family]] or configs
        # LPMN_AUTOTUNE_TOP=N: tune only the family's first N rows (a GPU run's test stage, where
        # compiling every config on a cold cache costs more than the checks; read at each tuning)
        top = int(os.environ.get("LPMN_AUTOTUNE_TOP", "0") or 0)
        return kept[:top] if top > 0 else kept

    return [c for configs in families.values() for c in configs], {"early_config_prune": prune}


# Rows are (BLOCK_T, BLOCK_K, BLOCK_C, num_warps, num_stages). The interpreter's tiles (16 frames x
# 16 prototypes x 32 features) keep the CPU interpreter tolerable while still spanning several
# tiles at the test shapes (T = 23, K = 37, C = 33), so every merge and mask runs. The GPU rows
# were compiled offline for sm_90a at the paper shape (Triton 3.9, `ptxas -v`): every row listed
# compiles without register spills and within 227 KB of shared memory in every dtype and dot
# precision its family serves (16-bit rows with wgmma). Rows dropped for spilling: (128, 128, 32,
# 8, 4) in 16-bit (72 B), (64, 64, 32, 4, 3) for "ieee" and tf32x3 (24 B, 4 B), and every 16-bit
# row at tf32x3 (20 B to 2 KB), hence the separate fp32 tensor-core family. Autotuning picks among
# a family per (K, C, bucketed B * T, dtype, precision).
FWD_CONFIGS, FWD_PRUNE = _precision_family_configs(
    ("BLOCK_T", "BLOCK_K", "BLOCK_C"),
    (16, 16, 32, 4, 1),
    [(64, 64, 64, 4, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 3), (128, 128, 64, 8, 3), (64, 128, 32, 4, 4),
     (64, 256, 64, 8, 3)],
    [(64, 64, 64, 8, 3), (64, 128, 32, 8, 3), (128, 64, 32, 8, 3)],
    [(64, 64, 16, 4, 3), (128, 64, 16, 8, 3), (64, 128, 16, 8, 3), (32, 64, 32, 4, 3)],
)

# Split-K forward (small batches): a fixed frame tile, so that the host can count the programs
# from the shapes alone, and prototype slices a multiple of SPLIT_K_GRANULE wide. Both launches'
# rows checked like the above ((64, 128, 64, 4, 3) spills at tf32x3, so it serves 16-bit only).
SPLIT_BLOCK_T = 16 if INTERPRET else 64
SPLIT_K_GRANULE = 16 if INTERPRET else 128
FWD_SPLIT_CONFIGS, FWD_SPLIT_PRUNE = _precision_family_configs(
    ("BLOCK_T", "BLOCK_K", "BLOCK_C"),
    (SPLIT_BLOCK_T, 16, 32, 4, 1),
    [(SPLIT_BLOCK_T, 64, 64, 4, 3), (SPLIT_BLOCK_T, 128, 64, 4, 3), (SPLIT_BLOCK_T, 128, 32, 4, 4)],
    [(SPLIT_BLOCK_T, 64, 64, 4, 3), (SPLIT_BLOCK_T, 128, 32, 4, 4)],
    [(SPLIT_BLOCK_T, 64, 16, 4, 3), (SPLIT_BLOCK_T, 64, 32, 4, 3)],
)

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
# (64, 64, 32, 4, 3), (64, 64, 16, 4, 3), (64, 128, 16, 8, 3) (20-44 B); with the dcos kernel's 2-D
# grid and the dx kernel's summing of radial_x partials, the "ieee" dcos row (32, 64, 32, 4, 3) (8 B)
# and the tf32 dx row (64, 64, 128, 4, 3) at tf32x3 (4 B). The dcos 16-bit rows hold 165-176
# registers per thread (no spill). Autotuning picks within a family per
# (K, C, rows bucket = next power of two of the chunk's frames, HAS_FISHER for dcos, dtype, precision).
#
# The dcos kernel: one program per (tile of BLOCK_R active frames, tile of BLOCK_K prototypes), the K
# tile varying fastest, so the programs sharing a row tile of x run together and read it from L2
# (x crosses HBM about once per chunk). The per-frame sum radial_x is left in per-K-tile partials.
BWD_DCOS_CONFIGS, BWD_DCOS_PRUNE = _precision_family_configs(
    ("BLOCK_R", "BLOCK_K", "BLOCK_C"),
    (16, 16, 32, 4, 1),
    [(64, 64, 64, 4, 3), (64, 64, 32, 4, 4), (128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (128, 64, 32, 8, 4)],
    [(64, 64, 32, 8, 3), (64, 64, 64, 8, 3), (64, 32, 32, 4, 3), (32, 64, 32, 4, 3)],
    [(32, 64, 16, 4, 3), (64, 64, 16, 8, 3), (64, 64, 32, 8, 3), (32, 32, 32, 4, 3)],
)

# dx = D @ P over a chunk of active frames: output tile BLOCK_R frames x BLOCK_C features, reduction
# over K in steps of BLOCK_K.
BWD_DX_CONFIGS, BWD_DX_PRUNE = _precision_family_configs(
    ("BLOCK_R", "BLOCK_K", "BLOCK_C"),
    (16, 16, 32, 4, 1),
    [(128, 64, 128, 8, 3), (128, 64, 64, 4, 3), (64, 64, 128, 4, 3), (64, 64, 64, 4, 4), (128, 32, 128, 8, 4)],
    [(128, 64, 128, 8, 3), (64, 64, 64, 4, 4), (128, 32, 128, 8, 4)],
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

# The row weights r stream the (B, K) tables of a tile of frames; one config. 8 frames per program
# on a GPU: 188 programs for the 1500 frames of one 30 s utterance, more than the 132 SMs.
ROW_WEIGHTS_BLOCK_R = 16 if INTERPRET else 8
ROW_WEIGHTS_BLOCK_K = 16 if INTERPRET else 256

# Zeroing the rows of dx that win no max only streams stores; one config.
ZERO_ROWS_BLOCK_R = 16 if INTERPRET else 32
ZERO_ROWS_BLOCK_C = 32 if INTERPRET else 256

# Smallest row tile of any dcos config. The host sizes the per-row-tile partial sums (radial_p,
# deterministic Fisher) in slots of MIN_BLOCK_R frames, cdiv(R, MIN_BLOCK_R) per chunk, so whichever
# config autotuning picks writes inside its chunk's slots (unwritten slots stay zero).
MIN_BLOCK_R = min(c.kwargs["BLOCK_R"] for c in BWD_DCOS_CONFIGS)
_MIN_BLOCK_R = tl.constexpr(MIN_BLOCK_R)
# Smallest prototype tile of any dcos config. The per-frame partials radial_x_parts (radial_x_slots(K),
# R) fp32 have one slot per MIN_BLOCK_K prototypes; a program with a wider tile writes its partial in
# its first slot and zeros in the others, so every slot is written whichever config runs (no memset).
MIN_BLOCK_K = min(c.kwargs["BLOCK_K"] for c in BWD_DCOS_CONFIGS)
_MIN_BLOCK_K = tl.constexpr(MIN_BLOCK_K)


def radial_x_slots(K: int) -> int:
    """Rows of the dcos kernel's radial_x partials for K prototypes: one per MIN_BLOCK_K of them."""
    return triton.cdiv(K, MIN_BLOCK_K)


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


@triton.jit
def _max_key(u, t):
    """Packed int64 max-over-t key of u (fp32, any shape) at frames t (int64, broadcastable).

    High word: u's fp32 bits mapped to an int32 that orders like the floats (negative floats have
    their magnitude bits flipped), so the comparison never depends on exp2 and survives the GPU's
    flush-to-zero. Low word: INT32_MAX - t, so that among equal u the smaller frame wins. Every key
    of a real frame is above INT64_MIN, the value keys and padding start at.
    """
    u = tl.where(u == 0.0, 0.0, u)  # -0.0 ties with +0.0 (s = 1 either way), as in the reference's max
    bits = u.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (ordered.to(tl.int64) << 32) | (-t + _FRAME_CODE_BASE)


@triton.jit
def _fwd_row_norm(x_rows, stride_xc, row_mask, C, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """|x| (BLOCK_T,) fp32 of the tile's frames: the x-norm of eq. (2), computed where x is read anyway."""
    sq = tl.zeros((BLOCK_T,), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        xt = tl.load(x_rows[:, None] + c[None, :] * stride_xc, mask=row_mask[:, None] & (c < C)[None, :], other=0.0)
        xt = xt.to(tl.float32)
        sq += tl.sum(xt * xt, axis=1)
    return tl.sqrt_rn(sq)


@triton.jit
def _fwd_dot_step(acc, x_rows, stride_xc, row_mask, p_cols, stride_pc, k_mask, c0, C,
                  BLOCK_C: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc += x[rows, c0:c0+BLOCK_C] @ p[k, c0:c0+BLOCK_C]^T, fp32 accumulation (masked, int64 offsets)."""
    c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
    c_mask = c < C
    xt = tl.load(x_rows[:, None] + c[None, :] * stride_xc, mask=row_mask[:, None] & c_mask[None, :], other=0.0)
    # prototypes as a (BLOCK_C, BLOCK_K) tile: the dot's right operand, no transpose
    pt = tl.load(p_cols[None, :] + c[:, None] * stride_pc, mask=k_mask[None, :] & c_mask[:, None], other=0.0)
    if UPCAST:
        xt = xt.to(tl.float32)
        pt = pt.to(tl.float32)
    return tl.dot(xt, pt, acc, input_precision=DOT_PRECISION)


@triton.jit
def _fwd_lse_sweep(x_rows, stride_xc, row_mask, inv_x, p_ptr, stride_pk, stride_pc, p_norm_ptr, k_lo, k_hi, C,
                   scale2, eps, BLOCK_T: tl.constexpr,
                   BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Sweep 1 over prototypes [k_lo, k_hi): online log2-sum-exp2 of cos * scale2 and first argmax of cos.

    Returns m, l (lse2 = m + log2(l)), best cos and its k, each (BLOCK_T,). The (K tile, C tile)
    loop nest is one flat loop, so that the software pipeline keeps loading across K tiles.
    """
    m = tl.full((BLOCK_T,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_T,), tl.float32)
    best = tl.full((BLOCK_T,), float("-inf"), tl.float32)
    best_k = tl.zeros((BLOCK_T,), tl.int64)
    acc = tl.zeros((BLOCK_T, BLOCK_K), tl.float32)
    n_c = tl.cdiv(C, BLOCK_C)
    for i in range(0, tl.cdiv(k_hi - k_lo, BLOCK_K) * n_c):
        kt = i // n_c
        k0 = k_lo + kt * BLOCK_K
        k = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        k_mask = k < k_hi
        acc = _fwd_dot_step(acc, x_rows, stride_xc, row_mask, p_ptr + k * stride_pk, stride_pc, k_mask,
                            (i - kt * n_c) * BLOCK_C, C, BLOCK_C, UPCAST, DOT_PRECISION)
        if i - kt * n_c == n_c - 1:  # last C tile: the K tile's cosines are complete
            inv_p = 1.0 / tl.maximum(tl.load(p_norm_ptr + k, mask=k_mask, other=1.0), eps)
            cos = acc * inv_x[:, None] * inv_p[None, :]
            cos = tl.where(k_mask[None, :], cos, float("-inf"))
            z = cos * scale2
            m_new = tl.maximum(m, tl.max(z, axis=1))
            l = l * tl.exp2(m - m_new) + tl.sum(tl.exp2(z - m_new[:, None]), axis=1)
            m = m_new
            tile_best = tl.max(cos, axis=1)
            tile_arg = tl.argmax(cos, axis=1, tie_break_left=True).to(tl.int64) + k0
            better = tile_best > best  # strict: on a tie the earlier tile, i.e. the smaller k, keeps it
            best = tl.where(better, tile_best, best)
            best_k = tl.where(better, tile_arg, best_k)
            acc = tl.zeros((BLOCK_T, BLOCK_K), tl.float32)
    return m, l, best, best_k


@triton.jit
def _fwd_max_sweep(x_rows, stride_xc, row_mask, inv_x, p_ptr, stride_pk, stride_pc, p_norm_ptr, k_lo, k_hi, C,
                   scale2, eps, lse2, t, b_row, b_lo, b_hi, keys_ptr, K, BLOCK_T: tl.constexpr,
                   BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Sweep 2 over prototypes [k_lo, k_hi): this tile's max over its valid frames t of the packed
    (u = log2 s, frame) key per prototype, merged into keys (B, K) by atomic maxima.

    The tile's rows may span utterances b_row (increasing, b_lo to b_hi): each gets one masked max
    over the tile. Utterances between the first and the last (whole ones, shorter than a tile) are
    rare in speech batches and merged in a loop: per-element atomics would need a (BLOCK_T,
    BLOCK_K) pointer tile, which spills registers on sm_90.
    """
    acc = tl.zeros((BLOCK_T, BLOCK_K), tl.float32)
    n_c = tl.cdiv(C, BLOCK_C)
    for i in range(0, tl.cdiv(k_hi - k_lo, BLOCK_K) * n_c):
        kt = i // n_c
        k = (k_lo + kt * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
        k_mask = k < k_hi
        acc = _fwd_dot_step(acc, x_rows, stride_xc, row_mask, p_ptr + k * stride_pk, stride_pc, k_mask,
                            (i - kt * n_c) * BLOCK_C, C, BLOCK_C, UPCAST, DOT_PRECISION)
        if i - kt * n_c == n_c - 1:
            inv_p = 1.0 / tl.maximum(tl.load(p_norm_ptr + k, mask=k_mask, other=1.0), eps)
            # u = log2 s = cos * log2(e) / tau - lse2 <= 0: the max is taken on u, never on exp2(u)
            u = acc * inv_x[:, None] * inv_p[None, :] * scale2 - lse2[:, None]
            key = tl.where(row_mask[:, None], _max_key(u, t[:, None]), _KEY_INIT)
            first = tl.max(tl.where((b_row == b_lo)[:, None], key, _KEY_INIT), axis=0)
            tl.atomic_max(keys_ptr + b_lo * K + k, first, mask=k_mask, sem="relaxed")
            if b_hi != b_lo:
                last = tl.max(tl.where((b_row == b_hi)[:, None], key, _KEY_INIT), axis=0)
                tl.atomic_max(keys_ptr + b_hi * K + k, last, mask=k_mask, sem="relaxed")
                for bb in range(b_lo + 1, b_hi):  # whole utterances inside the tile (shorter than it)
                    mid = tl.max(tl.where((b_row == bb)[:, None], key, _KEY_INIT), axis=0)
                    tl.atomic_max(keys_ptr + bb * K + k, mid, mask=k_mask, sem="relaxed")
            acc = tl.zeros((BLOCK_T, BLOCK_K), tl.float32)


@triton.jit
def _fwd_tile(b, pid_t, lengths_ptr, T, BLOCK_T: tl.constexpr):
    """Frames t (int64) of tile pid_t of utterance b, their valid mask, and whether any is valid.

    The length is clamped to [1, T] here: on CUDA the host checks lengths without a sync
    (torch._assert_async), so a bad length must not lead any index out of range before that fires.
    """
    length = tl.minimum(tl.maximum(tl.load(lengths_ptr + b), 1), T)
    t = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    return t, t < length, pid_t * BLOCK_T < length


# restore_value: autotuning launches every config many times into the same keys, and an atomic max
# keeps the largest of their (differently rounded) keys unless the INT64_MIN start is restored
# before each launch (reset_to_zero would restore 0, which is above many real keys).
@triton.autotune(configs=FWD_CONFIGS, key=["K", "C", "ROWS_BUCKET", "DOT_PRECISION"], prune_configs_by=FWD_PRUNE,
                 restore_value=["keys_ptr"])
@triton.jit
def _prototype_mil_fwd(
    x_ptr,
    stride_xb,
    stride_xt,
    stride_xc,
    p_ptr,
    stride_pk,
    stride_pc,
    offsets_ptr,  # (B + 1,) int64: 0, then the cumulative (clamped) lengths; offsets[B] valid frames in all
    x_norm_ptr,  # out (B, T) fp32, contiguous: |x| on valid frames (the host zeroes padding)
    p_norm_ptr,  # (K,) fp32 |p|
    lse2_ptr,  # out (B, T) fp32, contiguous: log2-sum-exp2 over k of cos * log2(e) / tau (host: 0 on padding)
    nearest_ptr,  # out (B, T) int64, contiguous (host: -1 on padding)
    keys_ptr,  # in/out (B, K) int64, contiguous, INT64_MIN-initialised: packed (u, frame) maxima
    B,
    T,
    K,
    C,
    scale2,  # log2(e) / tau
    eps,
    ROWS_BUCKET,  # next power of two of B * T: an autotune key only
    SEARCH_STEPS,  # binary-search steps to find a row's utterance: B.bit_length()
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grid (cdiv(B * T, BLOCK_T),): BLOCK_T consecutive valid frames of the packed batch (valid
    frames of utterance 0, then of 1, ...): |x|, lse and nearest, then their share of the max over t.

    Packing the valid frames leaves no padding row inside a tile but in the batch's last one; the
    grid is the worst case (every frame valid) and the programs past the valid frames exit at once.
    """
    total = tl.load(offsets_ptr + B)
    r = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    if tl.program_id(0).to(tl.int64) * BLOCK_T < total:
        valid = r < total
        # each row's utterance b: offsets[b] <= r < offsets[b + 1] (lengths >= 1: offsets increase)
        lo = tl.zeros((BLOCK_T,), tl.int64)
        hi = tl.zeros((BLOCK_T,), tl.int64) + B
        for _ in range(SEARCH_STEPS):
            mid = (lo + hi) // 2
            right = tl.load(offsets_ptr + mid) <= r
            lo = tl.where(right, mid, lo)
            hi = tl.where(right, hi, mid)
        b_row = lo
        t = r - tl.load(offsets_ptr + b_row)
        b_lo = tl.min(b_row, axis=0)  # rows past the last valid frame search to b <= B - 1, like the last row
        b_hi = tl.max(tl.where(valid, b_row, 0), axis=0)
        stat_offsets = b_row * T + t
        x_rows = x_ptr + b_row * stride_xb + t * stride_xt
        x_norm = _fwd_row_norm(x_rows, stride_xc, valid, C, BLOCK_T, BLOCK_C)
        tl.store(x_norm_ptr + stat_offsets, x_norm, mask=valid)
        inv_x = 1.0 / tl.maximum(x_norm, eps)
        m, l, best, best_k = _fwd_lse_sweep(x_rows, stride_xc, valid, inv_x, p_ptr, stride_pk, stride_pc, p_norm_ptr,
                                            0, K, C, scale2, eps, BLOCK_T, BLOCK_K, BLOCK_C, UPCAST, DOT_PRECISION)
        lse2 = m + tl.log2(l)
        tl.store(lse2_ptr + stat_offsets, lse2, mask=valid)
        tl.store(nearest_ptr + stat_offsets, best_k, mask=valid)
        _fwd_max_sweep(x_rows, stride_xc, valid, inv_x, p_ptr, stride_pk, stride_pc, p_norm_ptr, 0, K, C, scale2, eps,
                       lse2, t, b_row, b_lo, b_hi, keys_ptr, K, BLOCK_T, BLOCK_K, BLOCK_C, UPCAST, DOT_PRECISION)


@triton.autotune(configs=FWD_SPLIT_CONFIGS, key=["K", "C", "K_SLICE", "ROWS_BUCKET", "DOT_PRECISION"],
                 prune_configs_by=FWD_SPLIT_PRUNE)
@triton.jit
def _prototype_mil_fwd_split_lse(
    x_ptr,
    stride_xb,
    stride_xt,
    stride_xc,
    p_ptr,
    stride_pk,
    stride_pc,
    lengths_ptr,  # (B,) int64
    x_norm_ptr,  # out (B, T) fp32, contiguous (written by slice 0)
    p_norm_ptr,  # (K,) fp32
    part_ptr,  # out (S, 3, B, T) fp32, contiguous: per slice m, l and the best cos
    part_k_ptr,  # out (S, B, T) int64, contiguous: per slice the first argmax of cos
    B,
    T,
    K,
    C,
    K_SLICE,  # prototypes per slice
    scale2,
    eps,
    ROWS_BUCKET,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Split-K launch 1, grid (B, cdiv(T, BLOCK_T), S): sweep 1 over one slice of K_SLICE prototypes."""
    b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    s = tl.program_id(2).to(tl.int64)
    t, valid, live = _fwd_tile(b, pid_t, lengths_ptr, T, BLOCK_T)
    stat_offsets = b * T + t
    if live:  # tiles of padding only: nothing to do (the host set padding's statistics)
        x_rows = x_ptr + b * stride_xb + t * stride_xt
        x_norm = _fwd_row_norm(x_rows, stride_xc, valid, C, BLOCK_T, BLOCK_C)
        if s == 0:
            tl.store(x_norm_ptr + stat_offsets, x_norm, mask=valid)
        inv_x = 1.0 / tl.maximum(x_norm, eps)
        k_lo = s * K_SLICE
        m, l, best, best_k = _fwd_lse_sweep(x_rows, stride_xc, valid, inv_x, p_ptr, stride_pk, stride_pc, p_norm_ptr,
                                            k_lo, tl.minimum(k_lo + K_SLICE, K), C, scale2, eps,
                                            BLOCK_T, BLOCK_K, BLOCK_C, UPCAST, DOT_PRECISION)
        BT = B * T
        part = part_ptr + s * 3 * BT + stat_offsets
        tl.store(part, m, mask=valid)
        tl.store(part + BT, l, mask=valid)
        tl.store(part + 2 * BT, best, mask=valid)
        tl.store(part_k_ptr + s * BT + stat_offsets, best_k, mask=valid)


@triton.autotune(configs=FWD_SPLIT_CONFIGS, key=["K", "C", "K_SLICE", "ROWS_BUCKET", "DOT_PRECISION"],
                 prune_configs_by=FWD_SPLIT_PRUNE, restore_value=["keys_ptr"])
@triton.jit
def _prototype_mil_fwd_split_max(
    x_ptr,
    stride_xb,
    stride_xt,
    stride_xc,
    p_ptr,
    stride_pk,
    stride_pc,
    lengths_ptr,  # (B,) int64
    x_norm_ptr,  # (B, T) fp32, contiguous, from launch 1
    p_norm_ptr,  # (K,) fp32
    part_ptr,  # (S, 3, B, T) fp32 from launch 1
    part_k_ptr,  # (S, B, T) int64 from launch 1
    lse2_ptr,  # out (B, T) fp32, contiguous (written by slice 0)
    nearest_ptr,  # out (B, T) int64, contiguous (written by slice 0)
    keys_ptr,  # in/out (B, K) int64, contiguous, INT64_MIN-initialised
    B,
    T,
    K,
    C,
    K_SLICE,
    S,  # number of slices
    scale2,
    eps,
    ROWS_BUCKET,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Split-K launch 2, grid (B, cdiv(T, BLOCK_T), S): merge the slices' partial log-sum-exps (as
    flash-decoding does), then sweep 2 over one slice. Slices merge in order, so ties keep the smaller k."""
    b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    s = tl.program_id(2).to(tl.int64)
    t, valid, live = _fwd_tile(b, pid_t, lengths_ptr, T, BLOCK_T)
    stat_offsets = b * T + t
    if live:
        BT = B * T
        m = tl.full((BLOCK_T,), float("-inf"), tl.float32)
        l = tl.zeros((BLOCK_T,), tl.float32)
        best = tl.full((BLOCK_T,), float("-inf"), tl.float32)
        best_k = tl.zeros((BLOCK_T,), tl.int64)
        for j in range(0, S):
            part = part_ptr + j * 3 * BT + stat_offsets
            m_j = tl.load(part, mask=valid, other=0.0)
            l_j = tl.load(part + BT, mask=valid, other=1.0)
            best_j = tl.load(part + 2 * BT, mask=valid, other=0.0)
            k_j = tl.load(part_k_ptr + j * BT + stat_offsets, mask=valid, other=0)
            m_new = tl.maximum(m, m_j)
            l = l * tl.exp2(m - m_new) + l_j * tl.exp2(m_j - m_new)
            m = m_new
            better = best_j > best
            best = tl.where(better, best_j, best)
            best_k = tl.where(better, k_j, best_k)
        lse2 = m + tl.log2(l)
        if s == 0:
            tl.store(lse2_ptr + stat_offsets, lse2, mask=valid)
            tl.store(nearest_ptr + stat_offsets, best_k, mask=valid)
        x_rows = x_ptr + b * stride_xb + t * stride_xt
        x_norm = tl.load(x_norm_ptr + stat_offsets, mask=valid, other=1.0)
        inv_x = 1.0 / tl.maximum(x_norm, eps)
        k_lo = s * K_SLICE
        _fwd_max_sweep(x_rows, stride_xc, valid, inv_x, p_ptr, stride_pk, stride_pc, p_norm_ptr,
                       k_lo, tl.minimum(k_lo + K_SLICE, K), C, scale2, eps, lse2, t, t * 0 + b, b, b, keys_ptr, K,
                       BLOCK_T, BLOCK_K, BLOCK_C, UPCAST, DOT_PRECISION)


@triton.jit
def _active_chunk_rows(count_ptr, start, R):
    """Active frames in the chunk [start, start + R) of the compacted list, read on the device."""
    return tl.minimum(tl.maximum(tl.load(count_ptr) - start, 0), R)


@triton.jit
def _prototype_mil_bwd_row_weights(
    rows_ptr,  # as in the dcos kernel
    count_ptr,
    frame_index_ptr,  # (B, K) int64, contiguous
    dpooled_ptr,
    stride_gb,
    stride_gk,
    pooled_ptr,  # (B, K) fp32 pooled, contiguous
    row_weight_ptr,  # out (R,) fp32
    start,
    R,
    T,
    K,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Grid (cdiv(R, BLOCK_R),): r[b, t] = sum over the prototypes k frame t wins of dY[b, k] * Y[b, k].

    The row weight of dcos = s * ([f[b, k] = t] dY - r) / tau, summed over K in a fixed order (one
    pass over each frame's (B, K) table rows, shared in L2 by the frames of one utterance), once per
    chunk, for the dcos kernel's K-tile programs to read. Programs past the active count exit.
    """
    n = _active_chunk_rows(count_ptr, start, R)
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    if row0 < n:
        i = row0 + tl.arange(0, BLOCK_R)
        row_mask = i < n
        row = tl.load(rows_ptr + start + i, mask=row_mask, other=0)
        b = row // T
        t = row - b * T
        bK = b * K  # int64: B * K may pass 2**31
        r = tl.zeros((BLOCK_R,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            mask = row_mask[:, None] & (k < K)[None, :]
            wins = tl.load(frame_index_ptr + bK[:, None] + k[None, :], mask=mask, other=-1) == t[:, None]
            dy = tl.load(dpooled_ptr + b[:, None] * stride_gb + k[None, :] * stride_gk, mask=mask & wins, other=0.0)
            y = tl.load(pooled_ptr + bK[:, None] + k[None, :], mask=mask & wins, other=0.0)
            r += tl.sum(dy.to(tl.float32) * y, axis=1)
        tl.store(row_weight_ptr + i, r, mask=row_mask)


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
    row_weight_ptr,  # (R,) fp32 r of the chunk's frames, from _prototype_mil_bwd_row_weights
    scale_ptr,  # (1,) fp32 power-of-two scale S of D (1 but for float16)
    d_ptr,  # out (R, K), contiguous, x's dtype: D = S * dcos / max(|p_k|, eps)
    radial_x_parts_ptr,  # out (radial_x_slots(K), R) fp32: per slot of MIN_BLOCK_K prototypes, sum of dcos * cos
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
    """Grid (cdiv(K, BLOCK_K) * cdiv(R, BLOCK_R),): dcos of BLOCK_R active frames x BLOCK_K prototypes.

    Program id = row tile * cdiv(K, BLOCK_K) + K tile: the K tile varies fastest, so the programs
    sharing a row tile of x (BLOCK_R x C, 128 KB at 64 x 1024 bf16) run next to each other and all
    but the first read it from L2 (modelled, not measured). Per program: it reads its frames' row
    weights r (one launch before computes them, so that no K tile's program redoes that pass over
    the (B, K) tables) and its K tile's frame_index and dY; then it recomputes cos (C / BLOCK_C
    dots of a BLOCK_R x BLOCK_C tile of x with a BLOCK_C x BLOCK_K tile of P) and s, and writes its
    BLOCK_R x BLOCK_K tile of D (x's dtype), its rows' partial of radial_x (fixed slots, summed in a
    fixed order by the dx kernel: no atomics), its K tile of the row tile's radial_p / Fisher partials
    (or K-tile atomics). Programs past the active count exit.
    """
    pid = tl.program_id(0)
    n_k_tiles = tl.cdiv(K, BLOCK_K)
    pid_k = pid % n_k_tiles
    pid_r = pid // n_k_tiles
    n = _active_chunk_rows(count_ptr, start, R)
    row0 = pid_r.to(tl.int64) * BLOCK_R
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

        r = tl.load(row_weight_ptr + i, mask=row_mask, other=0.0)
        # partial-sum slot of this row tile, in units of the smallest row tile of any config
        slot = slot0 + row0 // _MIN_BLOCK_R
        k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
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
            # this K tile's share of radial_x in its first MIN_BLOCK_K slot, zeros in the tile's other slots
            j = tl.arange(0, BLOCK_K // _MIN_BLOCK_K)
            slot_k = pid_k * (BLOCK_K // _MIN_BLOCK_K) + j
            part = tl.sum(dcos * cos, axis=1)
            part = tl.where((j == 0)[:, None], part[None, :], 0.0)
            tl.store(radial_x_parts_ptr + slot_k[:, None].to(tl.int64) * R + i[None, :], part,
                     mask=(slot_k < tl.cdiv(K, _MIN_BLOCK_K))[:, None] & row_mask[None, :])
        if NEED_DP:
            tl.store(radial_p_ptr + slot * K + k, tl.sum(dcos * cos, axis=0), mask=k_mask)
        if HAS_FISHER:
            # eq. (4): ||dcos * d cos / d p_k||^2 = dcos^2 (|xh|^2 - cos^2) / max(|p_k|, eps)^2
            xh_sq = x_norm * inv_x
            xh_sq = xh_sq * xh_sq
            term = tl.sum(dcos * dcos * (xh_sq[:, None] - cos * cos), axis=0) * inv_p * inv_p
            if DETERMINISTIC:
                tl.store(fisher_ptr + slot * K + k, term, mask=k_mask)
            else:
                tl.atomic_add(fisher_ptr + k, term, mask=k_mask, sem="relaxed")


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
    radial_x_parts_ptr,  # (radial_x_slots(K), R) fp32, from the dcos kernel
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
    P (K / BLOCK_K steps), then the BLOCK_R x BLOCK_C tile of x and the rows' radial_x partials
    (cdiv(K, MIN_BLOCK_K) x BLOCK_R fp32) for the epilogue; writes that tile of
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
        # radial_x = the dcos kernel's per-K-tile partials, summed in slot order (deterministic)
        radial = tl.zeros((BLOCK_R,), tl.float32)
        for j in range(0, tl.cdiv(K, _MIN_BLOCK_K)):
            radial += tl.load(radial_x_parts_ptr + j * R + i, mask=row_mask, other=0.0)
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
