"""Public entry point of the prototype-MIL op: checks, backend choice, dispatch."""

from __future__ import annotations

import torch

from .output import PrototypeMILOutput
from .reference import prototype_mil_reference
from .validation import validate_inputs


def fused_backend_available(device: torch.device) -> bool:
    """Whether backend="auto" would use the fused Triton kernels on ``device``."""
    return False


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map "auto" to "triton" on CUDA when the fused kernels exist, else to "torch"."""
    if backend == "auto":
        return "triton" if fused_backend_available(device) else "torch"
    return backend


def prototype_mil(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    tau: float = 1.0,
    fisher: torch.Tensor | None = None,
    backend: str = "auto",
    check_finite: bool = False,
) -> PrototypeMILOutput:
    """Local prototypical mapping with MIL max-over-time pooling (paper eq. 2, section 3.2).

    x: (B, T, C) frame features; prototypes: (K, C); lengths: (B,) integer valid-frame counts in
    [1, T] (None: all T frames). Per frame, cosine similarity to every prototype, softmax over the
    K prototypes at temperature ``tau``, then the max over each utterance's valid frames.

    fisher: optional float32 (K,) accumulator; backward adds to it, per prototype, the sum over
    valid frames of the squared gradient of the backward-ed scalar through the similarity
    (eq. 4 before normalisation). backend: "torch" (reference), "triton" (fused kernels) or
    "auto" (fused on CUDA when available). check_finite: raise on NaN/Inf in valid frames.

    Returns ``PrototypeMILOutput(pooled (B, K), frame_index (B, K) int64, nearest (B, T) int64)``.
    """
    lengths = validate_inputs(x, prototypes, lengths, tau, fisher, backend, check_finite)
    chosen = resolve_backend(backend, x.device)
    if chosen == "triton":
        raise NotImplementedError(
            "backend='triton' (the fused kernels) is not implemented yet; use backend='torch' or 'auto'"
        )
    return prototype_mil_reference(x, prototypes, lengths, float(tau), fisher)
