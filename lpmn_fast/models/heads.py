"""Utterance heads on frame features: LPMN (prototype MIL, section 3) and the AP/MP baselines."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..nn import PrototypeMIL
from .backbones import frame_mask

HEADS = ("lpmn", "ap", "mp")
# What the LPMN classifier sees of the pooled (B, K) mappings Y (see PooledTransform).
FEATURE_NORMS = ("none", "scale", "log", "standard", "batch")
# How a probe reads the K' selected prototypes (see ProbeHead).
READINGS = ("columns", "renormalise")
# How a dead prototype restarts (see LPMNHead.restart_dead).
RESTARTS = ("codebook", "frame")
_TINY = torch.finfo(torch.float32).tiny


class PooledTransform(nn.Module):
    """The pooled (B, K) mappings Y as the classifier sees them.

    At the paper's tau = 1, Y is about 1/K +- 10% (a near-uniform softmax): fed unscaled to a
    linear classifier trained by Adam, whose step does not grow with the input's scale, the logits'
    class differences move by about lr x spread(Y) per step and the head barely learns.
    "none": Y (the paper as written); "scale": K x Y (mean about 1); "log": log Y, the
    log-domain pooled values cos/tau - logsumexp (spread about that of the cosines / tau);
    "standard": each utterance's Y standardised over its K values (no parameters);
    "batch": each prototype's value standardised over the batch (BatchNorm1d without affine,
    running statistics at evaluation).
    """

    def __init__(self, mode: str, num_prototypes: int):
        super().__init__()
        if mode not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, got {mode!r}")
        self.mode = mode
        self.num_prototypes = num_prototypes
        self.norm = nn.BatchNorm1d(num_prototypes, affine=False) if mode == "batch" else None

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.mode == "scale":
            return pooled * self.num_prototypes
        if self.mode == "log":
            return pooled.float().clamp_min(_TINY).log().to(pooled.dtype)
        if self.mode == "standard":
            mean = pooled.mean(-1, keepdim=True)
            return (pooled - mean) / pooled.std(-1, keepdim=True, unbiased=False).clamp_min(1e-6)
        if self.mode == "batch":
            return self.norm(pooled)
        return pooled

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


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
    :meth:`restart_dead`. ``feature_norm``: what the classifier (and valence regressor) sees of
    the pooled mappings, one of FEATURE_NORMS (see :class:`PooledTransform`; "none" is the paper).
    ``restart``: how :meth:`restart_dead` re-seeds, one of RESTARTS.
    """

    def __init__(self, dim: int, num_classes: int, num_prototypes: int, tau: float = 1.0,
                 kernel: str = "auto", quant_weight: float = 1.0, fisher_momentum: float = 0.99,
                 valence_weight: float = 0.0, feature_norm: str = "none", restart: str = "frame"):
        super().__init__()
        if restart not in RESTARTS:
            raise ValueError(f"restart must be one of {RESTARTS}, got {restart!r}")
        self.mil = PrototypeMIL(num_prototypes, dim, tau=tau, kernel=kernel, fisher_momentum=fisher_momentum)
        self.transform = PooledTransform(feature_norm, num_prototypes)
        self.restart = restart
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
        features = self.transform(out.pooled)
        return HeadOutput(self.classifier(features), aux, out.nearest, _regress(self.valence, features))

    @property
    def feature_norm(self) -> str:
        return self.transform.mode

    def read(self, pooled: torch.Tensor, frame_index: torch.Tensor | None = None):
        """The mil's ``pooled`` (..., K) and ``frame_index`` as the classifier reads them (the
        transform is per prototype, so frame_index stays as it is); for inference paths that pool
        themselves. Logits = classifier(features); with centred weights Wc, sum_k Wc[:, k] *
        features[k] is the centred logit, whatever the transform."""
        return self.transform(pooled), frame_index

    def feature_importance(self) -> torch.Tensor:
        """(K,) Fisher importance of each classifier input."""
        return self.mil.fisher_importance

    @torch.no_grad()
    def restart_dead(self, frames: torch.Tensor, patience: int, generator: torch.Generator) -> torch.Tensor:
        """Re-seed prototypes idle for ``patience`` steps or more with random ``frames`` (N, C).

        Dead codes are a known VQ failure: a prototype that is never nearest gets no
        quantization-loss gradient and stays dead. Returns the restarted prototypes as a (K,) bool
        mask. ``restart`` "codebook": the frame's direction at the mean norm of the live prototypes
        (the codebook's geometry: k-means prototypes are unit-norm, a raw frame's norm is about
        sqrt(C)), and its Fisher entries set to 0, since eq. (4)'s estimate scales with 1/|p|^2 and
        the old prototype's history says nothing about the new one; "frame": the raw frame, Fisher
        entries kept (before this option). Every prototype draws a frame and the dead ones take it
        (torch.where): no host synchronisation, so the check can run every training step on a GPU.
        """
        dead = self.idle_steps >= patience
        if frames.shape[0]:
            K = self.idle_steps.numel()
            pick = torch.randint(frames.shape[0], (K,), generator=generator, device=generator.device)
            fresh = frames[pick.to(frames.device)].to(self.mil.prototypes.dtype)
            if self.restart == "codebook":
                norms = self.mil.prototypes.norm(dim=-1)
                alive = (~dead).to(norms.dtype)
                # mean norm of the live prototypes (all of them if every one is dead), no host sync
                scale = torch.where(alive.sum() > 0, (norms * alive).sum() / alive.sum().clamp_min(1), norms.mean())
                fresh = torch.nn.functional.normalize(fresh, dim=-1) * scale
                self.mil.fisher_importance.masked_fill_(dead, 0)
                self.mil.fisher_direction.masked_fill_(dead, 0)
            self.mil.prototypes.copy_(torch.where(dead[:, None], fresh, self.mil.prototypes))
            self.idle_steps.masked_fill_(dead, 0)
        return dead


class ProbeHead(nn.Module):
    """Linear probing after prototype selection (section 3.3): a frozen ``PrototypeMIL`` and a
    fresh, trainable classifier on K' pooled values. ``selected`` (K',) records which prototypes
    of the full codebook they are.

    reading "renormalise": ``mil`` is the subset holding the K' prototypes (``PrototypeMIL.subset``),
    its softmax re-normalised over them. reading "columns": ``mil`` is the full K-prototype layer and
    the classifier sees the K' ``selected`` columns of its pooled (B, K), the values the trained
    classifier saw. (A probe trained on standardised inputs has the standardisation folded into its
    classifier's weights.)"""

    def __init__(self, mil: PrototypeMIL, num_classes: int, selected: torch.Tensor | None = None,
                 valence_weight: float = 0.0, reading: str = "renormalise"):
        super().__init__()
        if reading not in READINGS:
            raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
        if selected is None:
            selected = torch.arange(mil.num_prototypes)
        selected = torch.as_tensor(selected, dtype=torch.int64).clone()
        if reading == "renormalise" and selected.numel() != mil.num_prototypes:
            raise ValueError(f"reading 'renormalise' needs the subset layer: {mil.num_prototypes} prototypes for "
                             f"{selected.numel()} selected")
        self.register_buffer("selected", selected)
        self.reading = reading
        self.mil = mil.requires_grad_(False)
        self.mil.track_fisher = False
        width = selected.numel()
        self.classifier = nn.Linear(width, num_classes)
        self.valence = _regressor(width, valence_weight)  # fresh too, like the classifier

    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        """The mil's pooled (..., K or K') -> the classifier's (..., K') inputs."""
        return pooled[..., self.selected] if self.reading == "columns" else pooled

    def read(self, pooled: torch.Tensor, frame_index: torch.Tensor | None = None):
        """The mil's ``pooled`` and ``frame_index`` (..., K or K') as the classifier reads them (..., K')."""
        if self.reading == "columns":
            return self.features(pooled), None if frame_index is None else frame_index[..., self.selected]
        return pooled, frame_index

    def feature_importance(self) -> torch.Tensor:
        """(K',) Fisher importance of each classifier input (the selected prototypes')."""
        return self.features(self.mil.fisher_importance)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> HeadOutput:
        out = self.mil(x, lengths)
        features = self.features(out.pooled)
        return HeadOutput(self.classifier(features), x.new_zeros(()), out.nearest, _regress(self.valence, features))


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


__all__ = ["FEATURE_NORMS", "HEADS", "READINGS", "RESTARTS", "HeadOutput", "LPMNHead", "PoolingHead",
           "PooledTransform", "ProbeHead", "build_head", "masked_frames"]
