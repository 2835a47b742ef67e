"""The pieces of one training run that a distributed wrapper reuses: one optimizer step,
evaluation, codebook initialisation and dead-prototype restarts."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..models import LPMNHead, kmeans_codebook, masked_frames
from ..nn import PrototypeMIL
from ..protocol import classification_metrics, valence_metrics
from .batching import Batch, iterate_batches


class LabelledSet(NamedTuple):
    """features[i]: (T_i, F) frozen features; labels (N,) int64; utt_ids for reports; valence (N,)
    float32 targets for corpora that have them (MER2023), else None."""

    features: object
    labels: torch.Tensor
    utt_ids: tuple[str, ...]
    valence: torch.Tensor | None = None


class StepResult(NamedTuple):
    loss: float
    ce: float
    frames: torch.Tensor  # (B, T, C) detached backbone frames, for dead-prototype restarts
    lengths: torch.Tensor
    mse: float | None = None  # valence MSE of the batch, heads with a valence regressor only


def valence_loss(model: torch.nn.Module, out, batch: Batch) -> torch.Tensor | None:
    """The valence MSE of ``out`` on ``batch``, None if the head has no valence regressor."""
    if out.valence is None:
        return None
    if batch.valence is None:
        raise ValueError("the model regresses valence but the batch has no valence targets "
                         "(a corpus without valence: set valence_weight to 0)")
    return F.mse_loss(out.valence.float(), batch.valence)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The SERModel inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def lpmn_layer(model: torch.nn.Module) -> PrototypeMIL | None:
    head = unwrap(model).head
    return head.mil if isinstance(head, LPMNHead) else None


def train_step(model: torch.nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
               fisher_sync: Callable[[PrototypeMIL], None] | None = None) -> StepResult:
    """One Adam step on cross-entropy + the head's auxiliary loss (eq. 1 for LPMN) + weighted
    valence MSE when the head regresses valence (MER2023).

    ``model`` may be DDP-wrapped; ``fisher_sync`` (e.g. an all-reduce of the layer's Fisher
    accumulators) runs before the Fisher EMA update of eq. (4). With a valence regressor the
    prototypes' gradient, hence the Fisher importance, is that of the joint objective: the
    log-likelihood of the label and (Gaussian) of the valence.
    """
    model.train()
    out = model(batch.feats, batch.lengths)
    ce = F.cross_entropy(out.logits, batch.labels)
    loss = ce + out.aux_loss
    mse = valence_loss(model, out, batch)
    if mse is not None:
        loss = loss + unwrap(model).head.valence.loss_weight * mse
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mil = lpmn_layer(model)
    if mil is not None:
        if fisher_sync is not None:
            fisher_sync(mil)
        mil.update_fisher()  # eq. (4): squared prototype gradients of this step into the EMA
    optimizer.step()
    return StepResult(loss.item(), ce.item(), out.frames.detach(), batch.lengths,
                      None if mse is None else mse.item())


@torch.no_grad()
def restart_dead_prototypes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, result: StepResult,
                            patience: int, generator: torch.Generator) -> int:
    """Re-seed prototypes idle for ``patience`` steps from this batch's frames; their Adam moments
    are zeroed so stale momentum does not drag them back. Returns how many were restarted."""
    head = unwrap(model).head
    if not isinstance(head, LPMNHead) or patience <= 0:
        return 0
    dead = head.restart_dead(masked_frames(result.frames, result.lengths), patience, generator)
    state = optimizer.state.get(head.mil.prototypes, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][dead] = 0
    return int(dead.numel())


@torch.no_grad()
def init_codebook(model: torch.nn.Module, train: LabelledSet, max_frames: int, batch_size: int, seed: int,
                  device: torch.device) -> int:
    """k-means codebook on up to ``max_frames`` frames of random training utterances, seen through
    the (initial) backbone. Returns the number of frames used."""
    m = unwrap(model)
    K = m.head.mil.num_prototypes
    m.eval()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train.labels), generator=g)
    chunks, count = [], 0
    for batch in iterate_batches(train.features, train.labels, order, batch_size):
        batch = batch.to(device)
        frames = masked_frames(m.frames(batch.feats, batch.lengths), batch.lengths)
        chunks.append(frames.float().cpu())
        count += frames.shape[0]
        if count >= max(max_frames, K):
            break
    frames = torch.cat(chunks)
    if frames.shape[0] > max_frames >= K:
        frames = frames[torch.randperm(frames.shape[0], generator=g)[:max_frames]]
    m.head.mil.prototypes.copy_(kmeans_codebook(frames, K, seed).to(m.head.mil.prototypes))
    return int(frames.shape[0])


@torch.no_grad()
def predict_all(model: torch.nn.Module, data: LabelledSet, batch_size: int, device: torch.device
                ) -> tuple[torch.Tensor, float, torch.Tensor | None]:
    """Predicted class per utterance (N,), the mean cross-entropy and the regressed valence (N,)
    (None without a valence regressor), in eval mode."""
    model.eval()
    preds, valence, loss_sum = [], [], 0.0
    order = torch.arange(len(data.labels))
    for batch in iterate_batches(data.features, data.labels, order, batch_size):
        batch = batch.to(device)
        out = model(batch.feats, batch.lengths)
        loss_sum += F.cross_entropy(out.logits, batch.labels, reduction="sum").item()
        preds.append(out.logits.argmax(-1).cpu())
        if out.valence is not None:
            valence.append(out.valence.float().cpu())
    return torch.cat(preds), loss_sum / len(data.labels), torch.cat(valence) if valence else None


def evaluate(model: torch.nn.Module, data: LabelledSet, classes, batch_size: int, device: torch.device) -> dict:
    """WA/UA/F1/confusion matrix of ``model`` on ``data``, plus ``loss`` (mean CE) and, when the
    model regresses valence and ``data`` has it, ``valence_mse``."""
    preds, loss, valence = predict_all(model, data, batch_size, device)
    metrics = {**classification_metrics(data.labels.tolist(), preds.tolist(), classes), "loss": loss}
    if valence is not None and data.valence is not None:
        metrics.update(valence_metrics(data.valence.tolist(), valence.tolist()))
    return metrics
