"""Numeric precision of a run: autocast, float32 matmul precision and the fp16 gradient scaler.

``fp32``: everything in float32 at PyTorch's default matmul precision ("highest": exact fp32
products; the fused kernels take their CUDA-core path). ``tf32``: float32 weights and
activations, matmuls (cuBLAS and the fused kernels' dots) on TF32 tensor cores
(``torch.set_float32_matmul_precision("high")``). ``bf16`` / ``fp16``: the backbone and head run
under ``torch.autocast`` with float32 master weights; the prototype-MIL op receives x and the
prototypes in the 16-bit dtype (``PrototypeMIL`` casts at its boundary) and the Fisher
accumulator stays float32. ``fp16`` adds a gradient scaler, whose state the checkpoints keep.
``auto``: bf16 on a GPU that supports it, else fp32.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """``name`` with ``auto`` made concrete for ``device``; raise ValueError for what ``device`` cannot do."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {PRECISIONS}")
    device = torch.device(device)
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision 'bf16' needs a GPU with bfloat16 support, and {device} has none; "
                         "use 'fp16' or 'tf32'")
    return name


@dataclass(frozen=True)
class Precision:
    """A resolved precision on a device: what the loop enters around forward passes."""

    name: str
    device_type: str

    @classmethod
    def create(cls, name: str, device: torch.device) -> "Precision":
        return cls(resolve_precision(name, device), torch.device(device).type)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The 16-bit dtype of autocast, None for fp32/tf32 (no autocast)."""
        return _AUTOCAST_DTYPES.get(self.name)

    def autocast(self):
        """Context of forward passes (and the loss): autocast for bf16/fp16, nothing otherwise."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    @contextmanager
    def matmul_settings(self):
        """For the whole run: matmul precision "high" (TF32 tensor cores) under tf32, restored after."""
        previous = torch.get_float32_matmul_precision()
        if self.name == "tf32":
            torch.set_float32_matmul_precision("high")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(previous)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16's dynamic loss scaler (float16 gradients underflow without it); None otherwise."""
        if self.name != "fp16":
            return None
        return torch.amp.GradScaler(self.device_type)


def autocast_of(precision: str, device: torch.device):
    """Shortcut for inference: the autocast context of ``precision`` on ``device``."""
    return Precision.create(precision, device).autocast()


__all__ = ["PRECISIONS", "Precision", "autocast_of", "resolve_precision"]
