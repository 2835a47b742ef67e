"""From a resolved TrainConfig to modules: backbone, head, model and optimizer."""

from __future__ import annotations

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
                      valence_weight=valence_weight) \
        if c.head == "lpmn" else build_head(c.head, backbone.out_dim, num_classes, valence_weight=valence_weight)
    return SERModel(backbone, head)


def build_optimizer(c, model: torch.nn.Module) -> torch.optim.Adam:
    """Adam (section 4.1) over the trainable parameters only."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=c.lr, weight_decay=c.weight_decay)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
