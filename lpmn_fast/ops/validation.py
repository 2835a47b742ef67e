"""Input checks for the prototype-MIL op: every bad input gets an error that names it."""

from __future__ import annotations

import math
from numbers import Real

import torch

from .reference import frame_mask

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKENDS = ("auto", "torch", "triton")


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def validate_inputs(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    lengths: torch.Tensor | None,
    tau: float,
    fisher: torch.Tensor | None,
    backend: str,
    check_finite: bool,
) -> torch.Tensor:
    """Check the op's arguments and return ``lengths`` as an int64 (B,) tensor on x's device.

    x: (B, T, C) frame features; prototypes: (K, C); lengths: (B,) integers in [1, T] or None
    (all frames valid); tau > 0; fisher: float32 (K,) accumulator or None.
    Raises TypeError for wrong types/dtypes and ValueError for wrong shapes, devices and values.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, t in (("x", x), ("prototypes", prototypes)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, C) frame features, got {x.dim()}-d tensor of shape {tuple(x.shape)}")
    if prototypes.dim() != 2:
        raise ValueError(f"prototypes must be (K, C), got {prototypes.dim()}-d tensor of shape {tuple(prototypes.shape)}")
    B, T, C = x.shape
    K, Cp = prototypes.shape
    if B == 0:
        raise ValueError(f"empty batch: x has B = 0 utterances ({_describe(x)})")
    if T == 0:
        raise ValueError(f"zero-length utterances: x has T = 0 frames ({_describe(x)})")
    if C == 0 or K == 0:
        raise ValueError(f"empty feature or codebook: x is {tuple(x.shape)}, prototypes are {tuple(prototypes.shape)}")
    if Cp != C:
        raise ValueError(f"feature size mismatch: x has C = {C} but prototypes have C = {Cp}")
    if prototypes.dtype != x.dtype:
        raise TypeError(f"mixed dtypes: x is {x.dtype} but prototypes are {prototypes.dtype}; cast one of them")
    if prototypes.device != x.device:
        raise ValueError(f"mixed devices: x is on {x.device} but prototypes are on {prototypes.device}")
    if isinstance(tau, bool) or not isinstance(tau, Real) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")

    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.int64, device=x.device)
    else:
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"lengths must be a torch.Tensor of integers, got {type(lengths).__name__}")
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape (B,) = ({B},), got {tuple(lengths.shape)}")
        if lengths.device != x.device:
            raise ValueError(f"lengths is on {lengths.device} but x is on {x.device}; move it with lengths.to(x.device)")
        lengths = lengths.to(torch.int64)
        _check_length_range(lengths, T)

    if fisher is not None:
        if not isinstance(fisher, torch.Tensor):
            raise TypeError(f"fisher must be a float32 (K,) tensor, got {type(fisher).__name__}")
        if fisher.dtype != torch.float32:
            raise TypeError(f"fisher accumulator must be float32, got {fisher.dtype}")
        if fisher.shape != (K,):
            raise ValueError(f"fisher accumulator must have shape (K,) = ({K},), got {tuple(fisher.shape)}")
        if fisher.device != x.device:
            raise ValueError(f"fisher accumulator is on {fisher.device} but x is on {x.device}")

    if check_finite:
        # Padding frames are never read, so only valid frames must be finite.
        valid = frame_mask(lengths, T)
        bad_frames = ~torch.isfinite(x).all(dim=-1) & valid
        if bool(bad_frames.any()):
            where = torch.nonzero(bad_frames)[:5].tolist()
            raise ValueError(f"x contains NaN or Inf in {int(bad_frames.sum())} valid frame(s), first (b, t): {where}")
        if not bool(torch.isfinite(prototypes).all()):
            rows = torch.nonzero(~torch.isfinite(prototypes).all(dim=-1)).flatten()[:5].tolist()
            raise ValueError(f"prototypes contain NaN or Inf, first rows: {rows}")
    return lengths


def _check_length_range(lengths: torch.Tensor, T: int) -> None:
    """Every length in [1, T]: a ValueError naming the batch indices on the CPU; on CUDA an
    asynchronous device assert, so that the op never waits for the GPU to read lengths back (the
    fused kernels clamp lengths to [1, T], so no index goes out of range before the assert fires).
    """
    if lengths.device.type == "cuda":
        torch._assert_async(
            ((lengths >= 1) & (lengths <= T)).all(),
            f"lengths must lie in [1, T = {T}]: an utterance has zero frames or more frames than T",
        )
        return
    if lengths.device.type == "meta":
        return
    lo, hi = (int(v) for v in torch.aminmax(lengths))
    if lo < 1:
        bad = torch.nonzero(lengths < 1).flatten().tolist()
        raise ValueError(f"empty or zero-length utterance(s) at batch index {bad}: every length must be >= 1")
    if hi > T:
        bad = torch.nonzero(lengths > T).flatten().tolist()
        raise ValueError(f"lengths exceed T = {T} at batch index {bad} (max length {hi})")


def validate_fused_inputs(x: torch.Tensor) -> None:
    """Checks specific to backend="triton": the fused kernels compute in float32 from 16/32-bit inputs."""
    if x.dtype == torch.float64:
        raise TypeError(
            "backend='triton' takes float16, bfloat16 or float32 inputs (it computes in float32), got "
            "float64; cast x and prototypes with .float() or use backend='torch'"
        )
