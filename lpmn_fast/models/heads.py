"""Utterance heads on frame features: LPMN (prototype MIL, section 3) and the AP/MP baselines."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..nn import PrototypeMIL
from .backbones import frame_mask

HEADS = ("lpmn", "ap", "mp")


class HeadOutput(NamedTuple):
    """logits (B, classes); aux_loss: scalar added to the cross-entropy (0 for AP/MP);
    nearest (B, T) prototype of each frame (-1 on padding), None for AP/MP; valence (B,)
    regressed valence, None without a valence regressor."""

    logits: torch.Tensor
    aux_loss: torch.Tensor
    nearest: torch.Tensor | None
    valence: torch.Tensor | None = None


class _Regression(nn.Module):
    """The valence regressor beside a head's classifier (MER2023): a linear map of the same pooled
    vector, trained with ``loss_weight`` x MSE added to the cross-entropy. Heads hold None instead
    when the weight is 0."""

    def __init__(self, dim: int, weight: float):
        super().__init__()
        if weight < 0:
            raise ValueError(f"valence_weight must be >= 0, got {weight}")
        self.loss_weight = float(weight)
        self.linear = nn.Linear(dim, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(pooled).squeeze(-1)


def _regressor(dim: int, valence_weight: float) -> _Regression | None:
    return _Regression(dim, valence_weight) if valence_weight else None


def _regress(regressor: _Regression | None, pooled: torch.Tensor) -> torch.Tensor | None:
    return None if regressor is None else regressor(pooled)


class PoolingHead(nn.Module):
    """Average (``ap``) or max (``mp``) pooling over valid frames + linear classifier (Table 2 baselines)."""

    def __init__(self, dim: int, num_classes: int, mode: str, valence_weight: float = 0.0):
        super().__init__()
        if mode not in ("ap", "mp"):
            raise ValueError(f"pooling mode must be 'ap' or 'mp', got {mode!r}")
        self.mode = mode
        self.classifier = nn.Linear(dim, num_classes)
        self.valence = _regressor(dim, valence_weight)

    def pool(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) -> (B, C) over valid frames only."""
        valid = frame_mask(lengths, x.shape[1])[..., None]
        if self.mode == "ap":
            return (x * valid).sum(1) / lengths[:, None].to(x.dtype)
        return x.masked_fill(~valid, float("-inf")).amax(1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> HeadOutput:
        pooled = self.pool(x, lengths)
        return HeadOutput(self.classifier(pooled), x.new_zeros(()), None, _regress(self.valence, pooled))


class LPMNHead(nn.Module):
    """``PrototypeMIL`` (K prototypes) + linear classifier on the pooled (B, K) mappings.

    aux_loss is ``quant_weight`` x the quantization loss, eq. (1). ``idle_steps`` (K,) counts,
    per prototype, training steps since it was last some frame's nearest prototype; see
    :meth:`restart_dead`.
    """

    def __init__(self, dim: int, num_classes: int, num_prototypes: int, tau: float = 1.0,
                 kernel: str = "auto", quant_weight: float = 1.0, fisher_momentum: float = 0.99,
                 valence_weight: float = 0.0):
        super().__init__()
        self.mil = PrototypeMIL(num_prototypes, dim, tau=tau, kernel=kernel, fisher_momentum=fisher_momentum)
        self.classifier = nn.Linear(num_prototypes, num_classes)
        self.valence = _regressor(num_prototypes, valence_weight)
        self.quant_weight = float(quant_weight)
        self.register_buffer("idle_steps", torch.zeros(num_prototypes, dtype=torch.int64))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> HeadOutput:
        out = self.mil(x, lengths)
        aux = x.new_zeros(())
        if self.training and self.quant_weight > 0:
            aux = self.quant_weight * self.mil.quantization_loss(x, lengths, out.nearest)
        if self.training and torch.is_grad_enabled():
            # a scatter into K + 1 slots (padding's -1 lands in slot 0): no boolean indexing, whose
            # output size would need a device-to-host copy on CUDA every step
            used = torch.zeros(self.idle_steps.numel() + 1, dtype=torch.bool, device=self.idle_steps.device)
            used[out.nearest.flatten() + 1] = True
            self.idle_steps.add_(1).masked_fill_(used[1:], 0)
        return HeadOutput(self.classifier(out.pooled), aux, out.nearest, _regress(self.valence, out.pooled))

    @torch.no_grad()
    def restart_dead(self, frames: torch.Tensor, patience: int, generator: torch.Generator) -> torch.Tensor:
        """Re-seed prototypes idle for ``patience`` steps or more with random ``frames`` (N, C).

        Dead codes are a known VQ failure: a prototype that is never nearest gets no
        quantization-loss gradient and stays dead. Returns the restarted prototypes as a (K,) bool
        mask. Every prototype draws a frame and the dead ones take it (torch.where): no host
        synchronisation, so the check can run every training step on a GPU.
        """
        dead = self.idle_steps >= patience
        if frames.shape[0]:
            K = self.idle_steps.numel()
            pick = torch.randint(frames.shape[0], (K,), generator=generator, device=generator.device)
            fresh = frames[pick.to(frames.device)].to(self.mil.prototypes.dtype)
            self.mil.prototypes.copy_(torch.where(dead[:, None], fresh, self.mil.prototypes))
            self.idle_steps.masked_fill_(dead, 0)
        return dead


class ProbeHead(nn.Module):
    """Linear probing after prototype selection (section 3.3): a frozen ``PrototypeMIL`` subset
    holding the top-K' prototypes and a fresh, trainable classifier. ``selected`` (K',) records
    which prototypes of the full codebook they are."""

    def __init__(self, mil: PrototypeMIL, num_classes: int, selected: torch.Tensor | None = None,
                 valence_weight: float = 0.0):
        super().__init__()
        if selected is None:
            selected = torch.arange(mil.num_prototypes)
        self.register_buffer("selected", torch.as_tensor(selected, dtype=torch.int64).clone())
        self.mil = mil.requires_grad_(False)
        self.mil.track_fisher = False
        self.classifier = nn.Linear(mil.num_prototypes, num_classes)
        self.valence = _regressor(mil.num_prototypes, valence_weight)  # fresh too, like the classifier

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> HeadOutput:
        out = self.mil(x, lengths)
        return HeadOutput(self.classifier(out.pooled), x.new_zeros(()), out.nearest, _regress(self.valence, out.pooled))


def build_head(name: str, dim: int, num_classes: int, *, valence_weight: float = 0.0, **lpmn_options) -> nn.Module:
    """Head ``name``; ``valence_weight`` > 0 adds a valence regressor (its MSE weight in the loss)."""
    if name == "lpmn":
        return LPMNHead(dim, num_classes, valence_weight=valence_weight, **lpmn_options)
    if name in ("ap", "mp"):
        return PoolingHead(dim, num_classes, name, valence_weight)
    raise ValueError(f"unknown head {name!r}; choose one of {HEADS}")


def masked_frames(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, C) padded frames -> (N, C) valid frames."""
    return x[frame_mask(lengths, x.shape[1])]


__all__ = ["HEADS", "HeadOutput", "LPMNHead", "PoolingHead", "ProbeHead", "build_head", "masked_frames"]
