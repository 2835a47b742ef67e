"""The SER model: backbone (trainable part) + utterance head."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

# State of the frozen pretrained bottom of a HuBERT backbone: never saved, reloaded from its path.
FROZEN_PREFIX = "backbone.frozen."


class ModelOutput(NamedTuple):
    """logits (B, classes); aux_loss scalar (quantization loss for LPMN, else 0); nearest (B, T)
    prototype per frame or None; frames (B, T, C) the backbone's frame features; valence (B,)
    regressed valence, None for heads without a valence regressor."""

    logits: torch.Tensor
    aux_loss: torch.Tensor
    nearest: torch.Tensor | None
    frames: torch.Tensor
    valence: torch.Tensor | None = None


class SERModel(nn.Module):
    """feats (B, T, F) prepared by ``backbone.prepare`` + lengths (B,) -> ModelOutput."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def frames(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, C) backbone frame features."""
        return self.backbone(feats, lengths)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> ModelOutput:
        x = self.frames(feats, lengths)
        h = self.head(x, lengths)
        return ModelOutput(h.logits, h.aux_loss, h.nearest, x, h.valence)

    def persistent_state(self) -> dict[str, torch.Tensor]:
        """The state a checkpoint needs: everything but the frozen pretrained bottom of a HuBERT
        backbone, which is reloaded from its path."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(FROZEN_PREFIX)}

    def load_persistent_state(self, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Load tensors saved from :meth:`persistent_state` (not strict); return the keys missing from
        ``state`` other than the frozen bottom's, and the unexpected ones (both empty when it fits)."""
        result = self.load_state_dict(state, strict=False)
        return [k for k in result.missing_keys if not k.startswith(FROZEN_PREFIX)], list(result.unexpected_keys)

    def save_pretrained(self, directory, classes=None, extra: dict | None = None):
        """Write config.json + model.safetensors to ``directory`` (see lpmn_fast.models.pretrained)."""
        from .pretrained import save_pretrained

        return save_pretrained(self, directory, classes, extra)

    @classmethod
    def from_pretrained(cls, directory, **options) -> "SERModel":
        """Load a ``save_pretrained`` directory, in eval mode; options: device, hubert_path, kernel."""
        from .pretrained import from_pretrained

        return from_pretrained(directory, **options)
