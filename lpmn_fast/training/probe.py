"""Prototype selection and linear probing (section 3.3).

The K' prototypes with the largest Fisher importance (eq. 4, EMA over training) are kept; a
fresh linear classifier is trained on their MIL-pooled mappings with everything else frozen.
Since the backbone and prototypes are frozen and in eval mode, the pooled (N, K') vectors are
computed once and the classifier trains on them directly; this is exact, not an approximation.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..models import ProbeHead, SERModel
from ..protocol import classification_metrics
from .batching import epoch_order, iterate_batches
from .steps import LabelledSet, unwrap


def build_probe_model(model: torch.nn.Module, top_k: int, num_classes: int) -> SERModel:
    """SERModel sharing ``model``'s backbone (frozen) with a ProbeHead on the top-K' prototypes."""
    m = unwrap(model)
    top = m.head.mil.select_top(top_k)
    probe = SERModel(m.backbone, ProbeHead(m.head.mil.subset(top), num_classes, top))
    probe.backbone.requires_grad_(False)
    return probe.to(m.head.mil.prototypes.device)


@torch.no_grad()
def pooled_features(probe: SERModel, data: LabelledSet, batch_size: int, device: torch.device) -> torch.Tensor:
    """(N, K') MIL-pooled mappings of every utterance through the frozen backbone and prototypes."""
    probe.eval()
    out = []
    order = torch.arange(len(data.labels))
    for batch in iterate_batches(data.features, data.labels, order, batch_size):
        batch = batch.to(device)
        x = probe.backbone(batch.feats, batch.lengths)
        out.append(probe.head.mil(x, batch.lengths).pooled.float())
    return torch.cat(out)


def linear_probe(model: torch.nn.Module, sets: dict[str, LabelledSet], classes, *, top_k: int, epochs: int,
                 lr: float, batch_size: int, seed: int, select_metric: str, device: torch.device
                 ) -> tuple[dict, SERModel]:
    """Train the probe's classifier; pick its best epoch on ``sets['valid']``; report valid and test.

    Returns (results, probe model). Results: top_k, selected prototype indices (most important
    first), best_epoch, valid and test metrics.
    """
    torch.manual_seed(seed)
    probe = build_probe_model(model, top_k, len(classes))
    pooled = {name: pooled_features(probe, data, batch_size, device) for name, data in sets.items()}
    labels = {name: data.labels.to(device) for name, data in sets.items()}
    classifier = probe.head.classifier
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)

    def score(name: str) -> dict:
        with torch.no_grad():
            preds = classifier(pooled[name]).argmax(-1)
        return classification_metrics(labels[name].tolist(), preds.tolist(), classes)

    best, best_state, best_epoch = score("valid"), copy.deepcopy(classifier.state_dict()), 0
    n = len(labels["train"])
    for epoch in range(1, epochs + 1):
        order = epoch_order(n, seed + 7, epoch)  # a different stream from the main training's order
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size].to(device)
            loss = F.cross_entropy(classifier(pooled["train"][idx]), labels["train"][idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        current = score("valid")
        if current[select_metric] > best[select_metric]:
            best, best_state, best_epoch = current, copy.deepcopy(classifier.state_dict()), epoch
    classifier.load_state_dict(best_state)
    results = {"top_k": top_k, "selected": probe.head.selected.tolist(),
               "best_epoch": best_epoch, "valid": best, "test": score("test")}
    return results, probe
