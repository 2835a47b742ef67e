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
* ``hbm_bytes``: modelled DRAM traffic, read + written. Model: tensors every program shares and
  that fit in L2 (the prototypes, their norms, the (B, K) tables) cross DRAM once per launch;
  per-row data (x rows and their statistics) is read again for every K tile that needs it,
  because the x tiles of the programs in flight (132 x BLOCK_T x C x 2 bytes, ~33 MB at the
  paper shape) compete with the rest for the 50 MB L2. Masked lanes move no bytes.
  A GPU run's measured/modelled ratio tells how far this upper estimate is from the truth.
* ``issued_bytes``: every global load, store and atomic the programs issue (L2 hits included).
* ``programs``: the launch's grid size, to hold against the GPU's SM count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

# Bytes of the int64 / fp32 / int32 tables the kernels read and write.
I64, F32, I32 = 8, 4, 4
# Similarity sweeps of the forward kernel over K: log-sum-exp + argmax, then the max over t.
FWD_SWEEPS = 2


@dataclass(frozen=True)
class LaunchData:
    """Data-dependent facts the launch arguments (meta tensors) do not carry.

    lengths: valid frames per utterance (B,), or None for all T; active_rows: frames that win
    some prototype's max (the backward's rows), or None when unknown.
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


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _size(t) -> int:
    return t.element_size()


def _lengths(data: LaunchData, B: int, T: int) -> list[int]:
    lengths = list(data.lengths) if data.lengths is not None else [T] * B
    if len(lengths) != B:
        raise ValueError(f"LaunchData has {len(lengths)} lengths for a launch over B = {B} utterances")
    return lengths


def forward_cost(a: dict, grid: tuple, data: LaunchData) -> KernelCost:
    """``_prototype_mil_fwd``: grid (B, cdiv(T, BLOCK_T)); a tile of padding only exits at once."""
    B, T, K, C = grid[0], a["T"], a["K"], a["C"]
    BT, BK, BC = a["BLOCK_T"], a["BLOCK_K"], a["BLOCK_C"]
    xs = _size(a["x_ptr"])
    lengths = _lengths(data, B, T)
    tiles = sum(_cdiv(n, BT) for n in lengths)  # tiles that start inside their utterance
    rows = sum(lengths)
    n_k = _cdiv(K, BK)
    flops = FWD_SWEEPS * 2 * tiles * BT * (n_k * BK) * (_cdiv(C, BC) * BC)
    x_reads = FWD_SWEEPS * n_k * rows * C * xs  # each K tile reloads the tile's valid x rows
    stats_out = B * T * (F32 + I64)  # lse2 and nearest, padding rows included
    hbm = (x_reads + K * C * _size(a["p_ptr"]) + rows * F32 + K * F32 + B * I64 + stats_out
           + B * K * I64)  # packed maxima: atomics resolve in L2, written back once
    issued = (x_reads + FWD_SWEEPS * tiles * K * C * _size(a["p_ptr"]) + rows * F32
              + FWD_SWEEPS * tiles * K * F32 + grid[0] * grid[1] * I64 + stats_out + tiles * K * I64)
    return KernelCost(flops, 2 * rows * K * C, hbm, issued, grid[0] * grid[1])


def row_weight_cost(a: dict, grid: tuple, data: LaunchData) -> KernelCost:
    """``_prototype_mil_bwd_row_weight``: grid (cdiv(N, BLOCK_R),); streams (B, K) tables, no dot."""
    N, K = a["N"], a["K"]
    B = a["frame_index_ptr"].shape[0]
    g = _size(a["dpooled_ptr"])
    wins = B * K  # each (b, k) is won by exactly one frame: dY and pooled are read there only
    hbm = N * I64 + B * K * I32 + wins * (g + F32) + N * F32
    issued = N * I64 + N * K * I32 + wins * (g + F32) + N * F32
    return KernelCost(0, 0, hbm, issued, math.prod(grid))


def dcos_cost(a: dict, grid: tuple, data: LaunchData) -> KernelCost:
    """``_prototype_mil_bwd_dcos``: grid (cdiv(n, BLOCK_R), cdiv(K, BLOCK_K)) over one chunk of active rows."""
    n, K, C = a["n"], a["K"], a["C"]
    BR, BK, BC = a["BLOCK_R"], a["BLOCK_K"], a["BLOCK_C"]
    xs, ps, ds = _size(a["x_ptr"]), _size(a["p_ptr"]), _size(a["dcos_ptr"])
    B = a["frame_index_ptr"].shape[0]
    n_r, n_k = grid[0], grid[1]
    flops = 2 * (n_r * BR) * (n_k * BK) * (_cdiv(C, BC) * BC)
    # this chunk's share of the (B, K) winners (dY is loaded only where the row wins)
    share = n / max(n, data.active_rows or n)
    wins = int(B * K * share)
    row_stats = I64 + F32 + F32 + F32  # rows, |x|, lse2, r
    x_reads = n_k * n * C * xs
    dcos_out = n * K * ds
    fisher_hbm = fisher_issued = 0
    if a["HAS_FISHER"]:
        fisher_issued = n_r * K * F32  # one partial (or one atomic) per row tile and prototype
        fisher_hbm = fisher_issued if a["DETERMINISTIC"] else K * F32
    hbm = (x_reads + K * C * ps + n_k * n * row_stats + K * F32 + int(B * K * I32 * share)
           + wins * _size(a["dpooled_ptr"]) + dcos_out + fisher_hbm)
    issued = (x_reads + n_r * K * C * ps + n_k * n * row_stats + n_r * K * F32 + n * K * I32
              + wins * _size(a["dpooled_ptr"]) + dcos_out + fisher_issued)
    return KernelCost(flops, 2 * n * K * C, hbm, issued, n_r * n_k)


# Kernel name -> cost of one launch. A kernel without an entry makes the ledger fail loudly,
# so that a new kernel cannot silently cost nothing.
COSTS: dict[str, Callable[[dict, tuple, LaunchData], KernelCost]] = {
    "_prototype_mil_fwd": forward_cost,
    "_prototype_mil_bwd_row_weight": row_weight_cost,
    "_prototype_mil_bwd_dcos": dcos_cost,
}


def launch_cost(kernel: str, args: dict, grid: tuple, data: LaunchData) -> KernelCost:
    """Cost of one launch of ``kernel`` with ``args`` (every argument by name, block sizes included)."""
    try:
        fn = COSTS[kernel]
    except KeyError:
        raise KeyError(f"no cost function for Triton kernel {kernel!r}: add one to lpmn_fast.ops.triton_cost.COSTS") from None
    return fn(args, tuple(grid), data)


__all__ = ["COSTS", "KernelCost", "LaunchData", "launch_cost"]
