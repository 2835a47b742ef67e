"""Analytic cost of each fused-kernel launch: FLOPs, global-memory bytes and programs.

The ledger (``python -m benchmarks.roofline``) intercepts the launches of the kernels in
``lpmn_fast.kernels.prototype_mil`` (which cannot run on meta tensors) and asks the function
registered here under the kernel's name what one launch costs, given every argument by name
(tensors, sizes, constexprs and the block sizes of the config that would run) and the grid.

What is counted:

* ``flops``: tensor-core work as executed, 2 FLOPs per multiply-add of every ``tl.dot``,
  including the rows, prototypes and features a tile pads to its block size (the tensor cores
  compute them; masking only discards them). Elementwise work (exp2, scaling) is not counted.
* ``useful_flops``: the same dots over real rows, prototypes and features only.
* ``hbm_bytes``: modelled DRAM traffic, read + written, with two rules.
  (1) A program's re-reads of its own x rows, once per K tile of a sweep, are counted every time
  (an upper estimate: a GPU run's measured/modelled ratio says how much L2 saves).
  (2) An operand several programs read (the prototypes, a chunk's D, the (B, K) tables) crosses
  DRAM once if the programs sharing a tile of it run next to each other (neighbouring program
  ids, e.g. the feature tiles of one row tile of D in the dx GEMM, or the K tiles of one row tile
  of x in the backward's dcos kernel) or if it fits in half the L2
  (``L2_SHARE``), else once per program that reads it.
  Masked lanes move no bytes; programs that exit at once (padding tiles, frames past the active
  count) move only what they read to decide so.
* ``x_rereads``: the part of ``hbm_bytes`` that rule (1) adds over reading each x row once per
  launch; ``hbm_bytes - x_rereads`` is the DRAM traffic if L2 served every re-read.
* ``issued_bytes``: every global load, store and atomic the programs issue (L2 hits included).
* ``programs``: the launch's grid size, to hold against the GPU's SM count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

# Bytes of the int64 / fp32 / int32 / bool tables the kernels read and write.
I64, F32, I32, U8 = 8, 4, 4, 1
# An operand shared by the programs of a launch stays in L2 if it fits in this many bytes (half of
# the H100's 50 MB L2: the rest holds the streamed tiles).
L2_SHARE = 25 * 2**20


@dataclass(frozen=True)
class LaunchData:
    """Data-dependent facts the launch arguments (meta tensors) do not carry.

    lengths: valid frames per utterance (B,), or None for all T; active_rows: frames that win
    some prototype's max (the backward's rows), or None when unknown (then the worst case).
    """

    lengths: Optional[tuple[int, ...]] = None
    active_rows: Optional[int] = None


@dataclass(frozen=True)
class KernelCost:
    flops: int
    useful_flops: int
    hbm_bytes: int
    issued_bytes: int
    programs: int
    x_rereads: int = 0  # the part of hbm_bytes that is rule (1): x rows read again for later K tiles


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pad(n: int, block: int) -> int:
    return _cdiv(n, block) * block


def _size(t) -> int:
    return t.element_size()


def _shared(once: int, readers: int) -> int:
    """DRAM bytes of an operand ``readers`` programs read: once if it fits in L2's share, else per reader."""
    if readers <= 0:
        return 0
    return once if once <= L2_SHARE else once * readers


def _lengths(data: LaunchData, B: int, T: int) -> list[int]:
    lengths = list(data.lengths) if data.lengths is not None else [T] * B
    if len(lengths) != B:
        raise ValueError(f"LaunchData has {len(lengths)} lengths for a launch over B = {B} utterances")
    return lengths


def _chunk_rows(a: dict, data: LaunchData) -> int:
    """Active frames in the backward chunk [start, start + R): the kernels read the count on the device."""
    R, start = a["R"], a["start"]
    total = data.active_rows if data.active_rows is not None else R + start
    return max(0, min(total - start, R))


# ---- forward ------------------------------------------------------------------------------------

def _sweeps(a: dict, data: LaunchData, B: int, T: int, k_width: int, sweeps: int, norm_pass: bool):
    """FLOPs and x/P bytes of the frame tiles of one forward launch over ``k_width`` prototypes per program.

    Tiles that start inside their utterance compute; the rest exit. Each computing tile runs
    ``sweeps`` passes over its K tiles (a full C loop each) and, with ``norm_pass``, one more pass
    over C for |x|.
    """
    C, BT, BK, BC = a["C"], a["BLOCK_T"], a["BLOCK_K"], a["BLOCK_C"]
    lengths = _lengths(data, B, T)
    tiles = sum(_cdiv(n, BT) for n in lengths)
    rows = sum(lengths)
    n_k = _cdiv(k_width, BK)
    flops = sweeps * 2 * tiles * BT * (n_k * BK) * _pad(C, BC)
    x_reads = (sweeps * n_k + int(norm_pass)) * rows * C * _size(a["x_ptr"])
    p_issued = sweeps * tiles * k_width * C * _size(a["p_ptr"])
    return tiles, rows, flops, x_reads, p_issued


def forward_cost(a: dict, grid: tuple, data: LaunchData) -> KernelCost:
    """``_prototype_mil_fwd``: grid (cdiv(B*T, BLOCK_T),) over the packed valid frames of the batch.

    A tile holds BLOCK_T consecutive valid frames (utterance after utterance), so only the batch's
    last computing tile has padding rows; programs past the valid frames exit. Per computing tile:
    |x|, then both sweeps over all K; each row finds its utterance by a binary search over offsets;
    atomic maxima go to the tile's first and last utterance (and element-wise to any in between).
    """
    B, T, K, C, BT = a["B"], a["T"], a["K"], a["C"], a["BLOCK_T"]
    lengths = _lengths(data, B, T)
    rows = sum(lengths)
    tiles = _cdiv(rows, BT)
    n_k = _cdiv(K, a["BLOCK_K"])
    xs, ps = _size(a["x_ptr"]), _size(a["p_ptr"])
    flops = 2 * 2 * (tiles * BT) * (n_k * a["BLOCK_K"]) * _pad(C, a["BLOCK_C"])
    x_reads = (2 * n_k + 1) * rows * C * xs
    stats_out = rows * (F32 + F32 + I64)  # |x|, lse2, nearest of the valid rows (the host fills padding)
    # utterances a tile touches: its first, plus one per utterance boundary inside it
    touched = tiles + sum(1 for n in _cumulative(lengths)[:-1] if n % BT)
    search = tiles * BT * a["SEARCH_STEPS"] * I64
    hbm = x_reads + _shared(K * C * ps, tiles) + K * F32 + (B + 1) * I64 + stats_out + B * K * I64
    issued = (x_reads + 2 * tiles * K * C * ps + 2 * tiles * K * F32 + grid[0] * I64 + search + stats_out
              + touched * K * I64)
    return KernelCost(flops, 2 * rows * K * C, hbm, issued, grid[0], x_reads - rows * C * xs)


def _cumulative(lengths: list[int]) -> list[int]:
    out, total = [], 0
    for n in lengths:
        total += n
        out.append(total)
    return out


def _slices(a: dict, grid: tuple, data: LaunchData, norm_pass: bool):
    """:func:`_sweeps` of a split-K launch, grid (B, frame tiles, S): one sweep per slice of K_SLICE prototypes."""
    B, K, W = grid[0], a["K"], a["K_SLICE"]
    parts = [_sweeps(a, data, B, a["T"], min(W, K - s * W), sweeps=1, norm_pass=norm_pass) for s in range(grid[2])]
    tiles, rows = parts[0][0], parts[0][1]
    return tiles, rows, sum(p[2] for p in parts), sum(p[3] for p in parts), sum(p[4] for p in parts)


def split_lse_cost(a: dict, grid: tuple, data: LaunchData) -> KernelCost:
    """``_prototype_mil_fwd_split_lse``: grid (B, cdiv(T, BLOCK_T), S); |x| and sweep 1 over one slice each.

    Tiles of padding only exit; the host sets padding's statistics.
    """
    B, T, K, C, S = grid[0], a["T"], a["K"], a["C"], grid[2]
    tiles, rows, flops, x_reads, p_issued = _slices(a, grid, data, norm_pass=True)
    part_out = S * rows * (3 * F32 + I64)  # valid rows only (the host sets padding's statistics)
    hbm = x_reads + _shared(K * C * _size(a["p_ptr"]), tiles) + K * F32 + B * I64 + rows * F32 + part_out
    issued = x_reads + p_issued + tiles * K * F32 + B * grid[1] * S * I64 + rows * F32 + part_out
    return KernelCost(flops, 2 * rows * K * C, hbm, issued, B * grid[1] * S, x_reads - rows * C * _size(a["x_ptr"]))


def split_max_cost(a: dict, grid: tuple, data: LaunchData) -> KernelCost:
    """``_prototype_mil_fwd_split_max``: grid (B, cdiv(T, BLOCK_T), S); merge the S partials, sweep 2 over a slice."""
    B, T, K, C, S = grid[0], a["T"], a["K"], a["C"], grid[2]
    tiles, rows, flops, x_reads, p_issued = _slices(a, grid, data, norm_pass=False)
    part_in = S * rows * (3 * F32 + I64)  # every slice's program reads all S partials of its valid rows
    stats_out = rows * (F32 + I64)  # lse2 and nearest of the valid rows, by slice 0
    hbm = (x_reads + _shared(K * C * _size(a["p_ptr"]), tiles) + K * F32 + B * I64 + _shared(part_in, S)
           + S * rows * F32 + stats_out + B * K * I64)
    issued = (x_reads + p_issued + tiles * K * F32 + B * grid[1] * S * I64 + S * part_in + S * rows * F32
              + stats_out + tiles * K * I64)
    return KernelCost(flops, 2 * rows * K * C, hbm, issued, B * grid[1] * S, x_reads - rows * C * _size(a["x_ptr"]))


# ---- backward -----------------------------------------------------------------------------------

def row_weights_cost(a: dict, grid: tuple, data: LaunchData) -> KernelCost:
    """``_prototype_mil_bwd_row_weights``: grid (cdiv(R, BLOCK_R),); r of each active frame from its (B, K) table rows.

    A frame reads its utterance's frame_index row (all K) and dY, Y where it wins; the frames of one
    utterance are neighbours in the compacted list, so a table row crosses DRAM about once (rule 2).
    """
    K = a["K"]
    n = _chunk_rows(a, data)
    gs, fi = _size(a["dpooled_ptr"]), _size(a["frame_index_ptr"])
    B = a["frame_index_ptr"].shape[0]
    share = n / max(1, data.active_rows or n)  # this chunk's share of the utterances' (B, K) tables
    io = n * I64 + n * gs + n * F32 + n * F32  # rows; dY and Y where won (about one per frame); r written
    hbm = int(B * K * fi * share) + io + grid[0] * I64
    issued = n * K * fi + io + grid[0] * I64
    return KernelCost(0, 0, hbm, issued, grid[0])


def dcos_cost(a: dict, grid: tuple, data: LaunchData) -> KernelCost:
    """``_prototype_mil_bwd_dcos``: grid (cdiv(K, BLOCK_K) * cdiv(R, BLOCK_R),), the K tile fastest; past the count exit.

    Per computing program (one row tile x one K tile): its frames' row weights r, the cosine tile
    (a C loop over its x rows and a P tile), its K tile's frame_index and dY, its tile of D in x's
    dtype, its rows' radial_x partials (its MIN_BLOCK_K slots: the partial, then zeros), its K tile
    of the row tile's radial_p / Fisher partials (or atomics). The programs of one row tile have
    neighbouring ids, so its x rows cross DRAM once (rule 2); P once if it fits in L2.
    """
    K, C, BR, BK, BC = a["K"], a["C"], a["BLOCK_R"], a["BLOCK_K"], a["BLOCK_C"]
    n = _chunk_rows(a, data)
    n_r = _cdiv(n, BR)  # row tiles that compute
    n_k = _cdiv(K, BK)
    xs, ps, gs = _size(a["x_ptr"]), _size(a["p_ptr"]), _size(a["dpooled_ptr"])
    fi = _size(a["frame_index_ptr"])
    flops = 2 * (n_r * BR) * (n_k * BK) * _pad(C, BC)
    x_once = n * C * xs
    row_stats = n * (I64 + F32 + F32 + F32)  # rows, |x|, lse2, r
    tables_issued = n * K * fi + n * gs  # frame_index over the program's K tile, dY where won
    B = a["frame_index_ptr"].shape[0]
    share = n / max(1, data.active_rows or n)  # this chunk's share of the utterances' (B, K) tables
    tables_hbm = int(B * K * fi * share) + n * gs
    need_d = a["NEED_DX"] or a["NEED_DP"]
    x_slots = a["radial_x_parts_ptr"].shape[0] if a["NEED_DX"] else 0  # every slot of each computing row written
    out = (n * K * xs if need_d else 0) + x_slots * n * F32 + (n_r * K * F32 if a["NEED_DP"] else 0)
    fisher_issued = n_r * K * F32 if a["HAS_FISHER"] else 0
    fisher_hbm = (fisher_issued if a["DETERMINISTIC"] else K * F32) if a["HAS_FISHER"] else 0
    programs = grid[0]
    hbm = (x_once + row_stats + _shared(K * C * ps, n_r) + K * F32 + tables_hbm + out + fisher_hbm
           + programs * I64)
    # every K tile's program loads the row tile's x rows and row statistics
    issued = (n_k * x_once + n_k * row_stats + n_r * K * C * ps + n_r * n_k * BK * F32 + tables_issued + out
              + fisher_issued + programs * I64)
    return KernelCost(flops, 2 * n * K * C, hbm, issued, programs, 0)


def dx_cost(a: dict, grid: tuple, data: LaunchData) -> KernelCost:
    """``_prototype_mil_bwd_dx``: grid (cdiv(C, BLOCK_C), cdiv(R, BLOCK_R)); D @ P, epilogue, rows of dx."""
    K, C, BR, BK, BC = a["K"], a["C"], a["BLOCK_R"], a["BLOCK_K"], a["BLOCK_C"]
    n = _chunk_rows(a, data)
    n_c, n_r = grid[0], _cdiv(n, BR)
    ds, ps, xs = _size(a["d_ptr"]), _size(a["p_ptr"]), _size(a["x_ptr"])
    flops = 2 * (n_r * BR) * _pad(K, BK) * (n_c * BC)
    d_once, p_once = n * K * ds, K * C * ps
    # rows, |x|, and the dcos kernel's radial_x partials (one fp32 per slot and row), summed in the epilogue
    stats = n * (I64 + F32) + a["radial_x_parts_ptr"].shape[0] * n * F32
    epilogue = n * C * xs * 2  # x tile read, dx tile written
    # the feature tile varies fastest: the n_c programs of a row tile of D run together (rule 2)
    hbm = (d_once if n_r else 0) + _shared(p_once, n_r) + stats + epilogue + grid[0] * grid[1] * I64
    issued = n_c * d_once + n_r * p_once + n_c * stats + epilogue + grid[0] * grid[1] * I64
    return KernelCost(flops, 2 * n * K * C, hbm, issued, grid[0] * grid[1])


def dp_cost(a: dict, grid: tuple, data: LaunchData) -> KernelCost:
    """``_prototype_mil_bwd_dp``: grid (cdiv(K, BLOCK_K), cdiv(C, BLOCK_C)); D^T @ xh over the chunk, running sum."""
    K, C, BR, BK, BC = a["K"], a["C"], a["BLOCK_R"], a["BLOCK_K"], a["BLOCK_C"]
    n = _chunk_rows(a, data)
    n_k, n_c = grid[0], grid[1]
    ds, xs, ps = _size(a["d_ptr"]), _size(a["x_ptr"]), _size(a["p_ptr"])
    flops = 2 * _pad(n, BR) * (n_k * BK) * (n_c * BC)
    d_once, x_once = n * K * ds, n * C * xs
    stats = n * (I64 + F32)  # rows, |x|
    tail = (K * C * F32 if a["ACCUMULATE"] else 0)  # the running sum g read back
    tail += K * C * _size(a["dp_ptr"]) + K * C * ps + K * 2 * F32 if a["LAST"] else K * C * F32  # dp or g written
    # the prototype tile varies fastest: the n_k programs of a feature tile of x run together (rule 2)
    hbm = _shared(d_once, n_c) + x_once + _shared(stats, n_k * n_c) + tail + n_k * n_c * I64
    issued = n_c * d_once + n_k * x_once + n_k * n_c * stats + tail + n_k * n_c * I64
    return KernelCost(flops, 2 * n * K * C, hbm, issued, n_k * n_c)


def zero_rows_cost(a: dict, grid: tuple, data: LaunchData) -> KernelCost:
    """``_prototype_mil_bwd_zero_rows``: grid (cdiv(B*T, BLOCK_R), cdiv(C, BLOCK_C)); zero the rows that win no max."""
    BT, C = a["BT"], a["C"]
    active = data.active_rows if data.active_rows is not None else 0
    zeros = (BT - active) * C * _size(a["dx_ptr"])
    flags = BT * U8
    return KernelCost(0, 0, flags + zeros, grid[1] * flags + zeros, grid[0] * grid[1])


# Kernel name -> cost of one launch. A kernel without an entry makes the ledger fail loudly,
# so that a new kernel cannot silently cost nothing.
COSTS: dict[str, Callable[[dict, tuple, LaunchData], KernelCost]] = {
    "_prototype_mil_fwd": forward_cost,
    "_prototype_mil_fwd_split_lse": split_lse_cost,
    "_prototype_mil_fwd_split_max": split_max_cost,
    "_prototype_mil_bwd_row_weights": row_weights_cost,
    "_prototype_mil_bwd_dcos": dcos_cost,
    "_prototype_mil_bwd_dx": dx_cost,
    "_prototype_mil_bwd_dp": dp_cost,
    "_prototype_mil_bwd_zero_rows": zero_rows_cost,
}


def launch_cost(kernel: str, args: dict, grid: tuple, data: LaunchData) -> KernelCost:
    """Cost of one launch of ``kernel`` with ``args`` (every argument by name, block sizes included)."""
    try:
        fn = COSTS[kernel]
    except KeyError:
        raise KeyError(f"no cost function for Triton kernel {kernel!r}: add one to lpmn_fast.ops.triton_cost.COSTS") from None
    return fn(args, tuple(grid), data)


__all__ = ["COSTS", "KernelCost", "LaunchData", "L2_SHARE", "launch_cost"]
