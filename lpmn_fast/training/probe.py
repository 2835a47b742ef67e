"""Prototype selection and linear probing (section 3.3).

The K' prototypes with the largest Fisher importance (eq. 4, EMA over training) are kept; a
fresh linear classifier is trained on their MIL-pooled mappings with everything else frozen.
Since the backbone and prototypes are frozen and in eval mode, the pooled (N, K') vectors are
computed once and the classifier trains on them directly; this is exact, not an approximation.
With a valence regressor (MER2023) a fresh one is trained beside the classifier, on the same loss
as in training (CE + weighted MSE).

Several K' come from one trained model: only the probe differs, so :func:`probe_trained_run`
loads a finished run's best checkpoint once and probes it for each K' (Table 4).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models import ProbeHead, SERModel
from ..protocol import classification_metrics, valence_metrics
from .batching import epoch_order, iterate_batches
from .steps import LabelledSet, unwrap


def build_probe_model(model: torch.nn.Module, top_k: int, num_classes: int, *, reading: str = "renormalise",
                      importance: str = "gradient") -> SERModel:
    """SERModel sharing ``model``'s backbone (frozen) with a ProbeHead on the top-K' prototypes by
    ``importance`` (see PrototypeMIL.select_top), read as ``reading`` says (see ProbeHead)."""
    m = unwrap(model)
    mil = m.head.mil
    top = mil.select_top(top_k, importance)
    valence_weight = m.head.valence.loss_weight if getattr(m.head, "valence", None) is not None else 0.0
    layer = mil.subset(top) if reading == "renormalise" else mil.subset(torch.arange(mil.num_prototypes))
    probe = SERModel(m.backbone, ProbeHead(layer, num_classes, top, valence_weight, reading=reading))
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
        out.append(probe.head.features(probe.head.mil(x, batch.lengths).pooled).float())
    return torch.cat(out)


@torch.no_grad()
def _fold_standardization(linear: torch.nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``linear`` on raw inputs x compute what it computed on (x - mean) / std."""
    linear.weight.div_(std)
    linear.bias.sub_(linear.weight @ mean)


def linear_probe(model: torch.nn.Module, sets: dict[str, LabelledSet], classes, *, top_k: int, epochs: int,
                 lr: float, batch_size: int, seed: int, select_metric: str, device: torch.device,
                 reading: str = "renormalise", importance: str = "gradient", standardize: bool = False
                 ) -> tuple[dict, SERModel]:
    """Train the probe's classifier (and valence regressor, if the model has one); pick its best
    epoch on ``sets['valid']``; report valid and test.

    reading, importance: see :func:`build_probe_model`. standardize: train on each input
    standardised by its training-set mean and std (the pooled values are about 1/K +- 10% at
    tau = 1, saturated near 1 when re-normalised at small tau); the standardisation is then folded
    into the classifier's weights, so the returned probe takes raw pooled values.

    Returns (results, probe model). Results: top_k, reading, importance, standardize, selected
    prototype indices (most important first), best_epoch, valid and test metrics (``valence_mse``
    included with a regressor).
    """
    torch.manual_seed(seed)
    probe = build_probe_model(model, top_k, len(classes), reading=reading, importance=importance)
    head = probe.head
    pooled = {name: pooled_features(probe, data, batch_size, device) for name, data in sets.items()}
    raw = pooled
    if standardize:
        mean = pooled["train"].mean(0)
        std = pooled["train"].std(0, unbiased=False).clamp_min(1e-8)
        pooled = {name: (x - mean) / std for name, x in pooled.items()}
    labels = {name: data.labels.to(device) for name, data in sets.items()}
    valence = {name: None if data.valence is None else data.valence.to(device) for name, data in sets.items()}
    if head.valence is not None and valence["train"] is None:
        raise ValueError("the model regresses valence but the training set has no valence targets")
    trainable = {k for k, p in head.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=lr)

    def score(name: str) -> dict:
        with torch.no_grad():
            preds = head.classifier(pooled[name]).argmax(-1)
            metrics = classification_metrics(labels[name].tolist(), preds.tolist(), classes)
            if head.valence is not None and valence[name] is not None:
                metrics.update(valence_metrics(valence[name].tolist(), head.valence(pooled[name]).tolist()))
        return metrics

    def snapshot() -> dict:
        return {k: v.detach().clone() for k, v in head.named_parameters() if k in trainable}

    best, best_state, best_epoch = score("valid"), snapshot(), 0
    n = len(labels["train"])
    for epoch in range(1, epochs + 1):
        order = epoch_order(n, seed + 7, epoch)  # a different stream from the main training's order
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size].to(device)
            x = pooled["train"][idx]
            loss = F.cross_entropy(head.classifier(x), labels["train"][idx])
            if head.valence is not None:
                loss = loss + head.valence.loss_weight * F.mse_loss(head.valence(x), valence["train"][idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        current = score("valid")
        if current[select_metric] > best[select_metric]:
            best, best_state, best_epoch = current, snapshot(), epoch
    head.load_state_dict(best_state, strict=False)
    if standardize:  # the probe takes raw pooled values from here on
        for linear in (head.classifier, None if head.valence is None else head.valence.linear):
            if linear is not None:
                _fold_standardization(linear, mean, std)
        pooled = raw
    results = {"top_k": top_k, "reading": reading, "importance": importance, "standardize": standardize,
               "selected": head.selected.tolist(), "best_epoch": best_epoch, "valid": best, "test": score("test")}
    return results, probe


def probe_trained_run(run_dir: str | Path, top_ks: Sequence[int], *, epochs: int | None = None,
                      lr: float | None = None, progress: bool = False, options: dict | None = None
                      ) -> Iterator[tuple[int, dict]]:
    """Probe the best checkpoint of the finished LPMN run in ``run_dir`` for every K' in ``top_ks``.

    The run's saved config rebuilds its data (cached features) and model once; each K' then only
    trains a fresh linear probe (``epochs``/``lr`` default to the run's probe_epochs/probe_lr).
    Yields (K', results) as each finishes; results are :func:`linear_probe`'s plus ``name``
    ("LPMN-K-K'"). ``options`` overrides the run's probe_reading, importance, probe_standardize
    (keys of those names).
    """
    from .build import build_model, pick_device
    from .checkpoint import load_checkpoint, load_model_state
    from .config import make_config, resolve, saved_fields
    from .corpus import prepare_data

    ckpt_dir = Path(run_dir) / "checkpoints"
    meta, state, _, _ = load_checkpoint(ckpt_dir, "best")
    c = resolve(make_config(**{**saved_fields(meta["config"]), "progress": progress, **(options or {})}))
    if c.head != "lpmn":
        raise ValueError(f"{run_dir} is a {c.head!r} run; prototype selection needs an 'lpmn' run")
    bad = [k for k in top_ks if not 1 <= k <= c.num_prototypes]
    if bad:
        raise ValueError(f"K' {bad} must be in [1, K = {c.num_prototypes}] for the run in {run_dir}")
    device = pick_device(c.device)
    data = prepare_data(c)
    model = build_model(c, len(data.classes), data.backbone).to(device)
    load_model_state(model, state)
    for k in top_ks:
        results, _ = linear_probe(model, data.sets, data.classes, top_k=k,
                                  epochs=c.probe_epochs if epochs is None else epochs,
                                  lr=c.probe_lr if lr is None else lr, batch_size=c.batch_size, seed=c.seed,
                                  select_metric=c.select_metric, device=device, reading=c.probe_reading,
                                  importance=c.importance, standardize=c.probe_standardize)
        yield k, {"name": f"LPMN-{c.num_prototypes}-{k}", **results}
