"""Public entry point of the prototype-MIL op: checks, backend choice, dispatch."""

from __future__ import annotations

import functools
import importlib
import importlib.util

import torch

from .output import PrototypeMILOutput
from .reference import prototype_mil_reference
from .validation import validate_fused_inputs, validate_inputs

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.cache
def _triton_op():
    """lpmn_fast.ops.triton_op, imported on the first fused call: importing triton costs more than the
    rest of ``import lpmn_fast`` past torch, and the reference path never needs it. Raises
    RuntimeError when triton (Linux only) cannot be imported."""
    try:
        return importlib.import_module(".triton_op", __package__)
    except ImportError as error:  # pragma: no cover - triton ships with torch's Linux wheels
        raise RuntimeError(f"backend='triton' needs the triton package, which failed to import ({error}); "
                           "install triton (Linux) or use backend='torch'") from error


def fused_backend_available(device: torch.device) -> bool:
    """Whether backend="auto" would use the fused Triton kernels on ``device``: CUDA with triton installed."""
    return torch.device(device).type == "cuda" and importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """Map "auto" to "triton" on CUDA when the fused kernels exist (and take ``dtype``), else to "torch"."""
    if backend == "auto":
        fused = fused_backend_available(device) and (dtype is None or dtype in FUSED_DTYPES)
        return "triton" if fused else "torch"
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
    deterministic: bool | None = None,
) -> PrototypeMILOutput:
    """Local prototypical mapping with MIL max-over-time pooling (paper eq. 2, section 3.2).

    x: (B, T, C) frame features; prototypes: (K, C); lengths: (B,) integer valid-frame counts in
    [1, T] (None: all T frames). Per frame, cosine similarity to every prototype, softmax over the
    K prototypes at temperature ``tau``, then the max over each utterance's valid frames.

    fisher: optional float32 (K,) accumulator; backward adds to it, per prototype, the sum over
    valid frames of the squared gradient of the backward-ed scalar through the similarity
    (eq. 4 before normalisation). backend: "torch" (reference), "triton" (fused kernels; float16,
    bfloat16 or float32 inputs, computed in float32) or "auto" (fused on CUDA when available and
    the dtype is one of those, else the reference). check_finite: raise on NaN/Inf in valid frames.
    deterministic: with backend "triton", add the Fisher terms in a fixed order instead of with
    atomics, so that repeated backward passes give bit-identical results (everything else the
    fused backward does is deterministic already); None follows
    ``torch.are_deterministic_algorithms_enabled()``. The torch backend follows PyTorch's setting.

    Returns ``PrototypeMILOutput(pooled (B, K), frame_index (B, K) int64, nearest (B, T) int64)``;
    pooled is in x's dtype.
    """
    lengths = validate_inputs(x, prototypes, lengths, tau, fisher, backend, check_finite)
    if deterministic is not None and not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be True, False or None, got {deterministic!r}")
    chosen = resolve_backend(backend, x.device, x.dtype)
    if chosen == "triton":
        fused = _triton_op()
        validate_fused_inputs(x)
        if deterministic is None:
            deterministic = torch.are_deterministic_algorithms_enabled()
        return fused.prototype_mil_fused(x, prototypes, lengths, float(tau), fisher, deterministic)
    return prototype_mil_reference(x, prototypes, lengths, float(tau), fisher)
