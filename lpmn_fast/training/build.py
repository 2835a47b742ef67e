"""From a resolved TrainConfig to modules: backbone, head, model and optimizer."""

from __future__ import annotations

import math

import torch

from ..models import SERModel, build_backbone, build_head


def build_backbone_from_config(c) -> torch.nn.Module:
    if c.backbone == "hubert":
        return build_backbone("hubert", path=c.hubert_path, num_layers=c.hubert_layers,
                              finetune_layers=tuple(c.hubert_finetune_layers), layer_weights=c.layer_weights)
    if c.backbone == "hf":
        return build_backbone("hf", source=c.hf_model, num_layers=c.hf_layers, layer_weights=c.layer_weights,
                              finetune_layers=None if c.hf_finetune_layers is None else tuple(c.hf_finetune_layers))
    return build_backbone(c.backbone, num_mel_bins=c.fbank_mel_bins, hidden=c.encoder_hidden,
                          layers=c.encoder_layers, kernel=c.encoder_kernel, dropout=c.dropout)


def build_model(c, num_classes: int, backbone: torch.nn.Module | None = None) -> SERModel:
    """The SER model of config ``c``; pass ``backbone`` to reuse one already built."""
    backbone = backbone if backbone is not None else build_backbone_from_config(c)
    valence_weight = c.valence_weight or 0.0  # > 0: a valence regressor beside the classifier (MER2023)
    head = build_head(c.head, backbone.out_dim, num_classes, num_prototypes=c.num_prototypes, tau=c.tau,
                      kernel=c.kernel, quant_weight=c.quant_weight, fisher_momentum=c.fisher_momentum,
                      valence_weight=valence_weight, feature_norm=c.feature_norm, restart=c.restart) \
        if c.head == "lpmn" else build_head(c.head, backbone.out_dim, num_classes, valence_weight=valence_weight)
    return SERModel(backbone, head)


def build_optimizer(c, model: torch.nn.Module) -> torch.optim.Adam:
    """Adam (section 4.1) over the trainable parameters only; with ``c.backbone_lr`` two parameter
    groups, the trainable backbone part (fine-tuned HuBERT blocks, fbank conv encoder) first."""
    backbone_lr = getattr(c, "backbone_lr", None)
    if backbone_lr is None:
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=c.lr,
                                weight_decay=c.weight_decay)
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    groups = ([{"params": backbone, "lr": backbone_lr}] if backbone else []) + [{"params": rest, "lr": c.lr}]
    return torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "constant") -> float:
    """Multiplier of the base learning rates for optimizer step ``step`` (0-based) of ``total_steps``:
    linear warmup over ``warmup_steps``, then constant, cosine or linear decay towards 0 at the end."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose constant, cosine or linear")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
