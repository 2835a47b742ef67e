"""The pieces of one training run that a distributed wrapper reuses: one optimizer step,
evaluation, codebook initialisation and dead-prototype restarts."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
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
    """loss, ce and mse are detached 0-d tensors on the model's device (float() reads one; the
    training loop reads them every N steps, not every step, so a GPU step never waits for the host)."""

    loss: torch.Tensor
    ce: torch.Tensor
    frames: torch.Tensor  # (B, T, C) detached backbone frames, for dead-prototype restarts
    lengths: torch.Tensor
    mse: torch.Tensor | None = None  # valence MSE of the batch, heads with a valence regressor only


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
               fisher_sync: Callable[[PrototypeMIL], None] | None = None, *, grad_accum: int = 1,
               autocast: Callable[[], AbstractContextManager] = nullcontext,
               scaler: torch.amp.GradScaler | None = None, max_grad_norm: float | None = None) -> StepResult:
    """One Adam step on cross-entropy + the head's auxiliary loss (eq. 1 for LPMN) + weighted
    valence MSE when the head regresses valence (MER2023).

    ``model`` may be DDP-wrapped; ``fisher_sync`` (e.g. an all-reduce of the layer's Fisher
    accumulators) runs before the Fisher EMA update of eq. (4). With a valence regressor the
    prototypes' gradient, hence the Fisher importance, is that of the joint objective: the
    log-likelihood of the label and (Gaussian) of the valence.

    grad_accum: ``batch`` is cut into this many consecutive micro-batches, each forward/backward
    on its own, gradients accumulated: the per-utterance terms are weighted by n_i / N and the
    quantization loss (a mean over frames) by F_i / F, so the step is the one-batch step up to
    float rounding; so are the Fisher estimate (its accumulator counts the utterances of every
    micro-batch) and the idle record of the dead-prototype restarts. ``autocast``: the context
    of forward passes (``Precision.autocast``); ``scaler``: fp16's GradScaler (the Fisher terms
    are unscaled; a step it skips for overflow does not enter the Fisher EMA either);
    ``max_grad_norm``: clip the global gradient norm.
    """
    model.train()
    micro = _micro_batches(batch, grad_accum)
    optimizer.zero_grad(set_to_none=True)
    if len(micro) == 1:
        with autocast():
            out = model(batch.feats, batch.lengths)
            ce = F.cross_entropy(out.logits.float(), batch.labels)
            loss = ce + out.aux_loss
            mse = valence_loss(model, out, batch)
            if mse is not None:
                loss = loss + unwrap(model).head.valence.loss_weight * mse
        _backward(loss, scaler)
        frames, lengths = out.frames.detach(), batch.lengths
        loss_value, ce_value, mse_value = loss.detach(), ce.detach(), None if mse is None else mse.detach()
    else:
        loss_value, ce_value, mse_value, frames, lengths = _accumulate(model, batch, micro, autocast, scaler)
    _optimizer_step(model, optimizer, fisher_sync, scaler, max_grad_norm)
    return StepResult(loss_value, ce_value, frames, lengths, mse_value)


def _micro_batches(batch: Batch, parts: int) -> list[Batch]:
    """``parts`` consecutive row slices of ``batch`` (sizes differ by at most one; none empty),
    each trimmed to its longest utterance."""
    if parts < 1:
        raise ValueError(f"grad_accum must be >= 1, got {parts}")
    if parts == 1:
        return [batch]
    out = []
    for rows in torch.arange(len(batch.lengths)).tensor_split(min(parts, len(batch.lengths))):
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        part = batch._replace(**{k: v[lo:hi] for k, v in batch._asdict().items() if v is not None})
        out.append(part._replace(feats=part.feats[:, :int(part.lengths.max())]))
    return out


def padded_frames(batch: Batch, grad_accum: int = 1) -> tuple[int, int]:
    """(valid frames, padding frames) of ``batch`` as the model sees it: in ``grad_accum``
    micro-batches, each padded to its own longest utterance."""
    valid = padded = 0
    for part in _micro_batches(batch, grad_accum):
        n, longest = len(part.lengths), int(part.lengths.max())
        valid += int(part.lengths.sum())
        padded += n * longest - int(part.lengths.sum())
    return valid, padded


def _backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (loss if scaler is None else scaler.scale(loss)).backward()


def _accumulate(model, batch: Batch, micro: list[Batch], autocast, scaler):
    """Forward/backward of every micro-batch of ``batch``; returns the whole batch's loss, CE,
    valence MSE (weighted means), its valid frames as one (1, F, C) row and their count (1,)."""
    head = unwrap(model).head
    idle = getattr(head, "idle_steps", None)
    idle_before = None if idle is None else idle.clone()
    used = None if idle is None else torch.zeros_like(idle, dtype=torch.bool)
    N, total_frames = len(batch.lengths), int(batch.lengths.sum())
    loss_value = ce_value = mse_value = 0.0
    has_mse = False
    kept = []
    for part in micro:
        share, frame_share = len(part.lengths) / N, int(part.lengths.sum()) / total_frames
        with autocast():
            out = model(part.feats, part.lengths)
            ce = F.cross_entropy(out.logits.float(), part.labels)
            per_utterance = ce
            mse = valence_loss(model, out, part)
            if mse is not None:
                per_utterance = per_utterance + head.valence.loss_weight * mse
            # eq. (1) is a mean over the batch's frames, the other terms means over its utterances
            loss = share * per_utterance + frame_share * out.aux_loss
        _backward(loss, scaler)
        if used is not None:
            used |= idle == 0  # idle was >= 0 before this forward: 0 now means used by this micro-batch
        loss_value = loss_value + loss.detach()
        ce_value = ce_value + share * ce.detach()
        if mse is not None:
            has_mse = True
            mse_value = mse_value + share * mse.detach()
        kept.append(masked_frames(out.frames.detach(), part.lengths))
    if idle is not None:  # one step of the idle record for the whole batch, as one forward would count it
        idle.copy_(torch.where(used, 0, idle_before + 1))
    frames = torch.cat(kept)
    return (loss_value, ce_value, mse_value if has_mse else None, frames[None],
            torch.tensor([frames.shape[0]], device=frames.device))


def _optimizer_step(model, optimizer, fisher_sync, scaler, max_grad_norm) -> None:
    mil = lpmn_layer(model)
    if mil is not None:
        if fisher_sync is not None:
            fisher_sync(mil)
        if scaler is None:
            mil.update_fisher()  # eq. (4): squared prototype gradients of this step into the EMA
        elif bool(torch.isfinite(mil.fisher_grad_sq).all()):
            # the accumulator holds squared gradients of scale x loss
            mil.update_fisher(loss_scale=scaler.get_scale() / float(mil.fisher_utterances))
        else:  # an overflowing step, which the scaler skips: no Fisher estimate from it either
            for buffer in (mil.fisher_grad_sq, mil.fisher_utterances, mil.fisher_frames):
                buffer.zero_()
    if max_grad_norm is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


@torch.no_grad()
def restart_dead_prototypes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, result: StepResult,
                            patience: int, generator: torch.Generator) -> torch.Tensor | int:
    """Re-seed prototypes idle for ``patience`` steps from this batch's frames; their Adam moments
    are zeroed so stale momentum does not drag them back. Returns how many were restarted (a 0-d
    int64 tensor: reading it is the caller's choice, the step itself never waits for the GPU)."""
    head = unwrap(model).head
    if not isinstance(head, LPMNHead) or patience <= 0:
        return 0
    candidates = sample_valid_frames(result.frames, result.lengths, head.idle_steps.numel(), generator)
    dead = head.restart_dead(candidates, patience, generator)
    state = optimizer.state.get(head.mil.prototypes, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key].masked_fill_(dead.view(-1, *[1] * (state[key].dim() - 1)), 0)
    return dead.sum()


def sample_valid_frames(frames: torch.Tensor, lengths: torch.Tensor, n: int, generator: torch.Generator
                        ) -> torch.Tensor:
    """``n`` frames (n, C) drawn uniformly, with replacement, from the valid frames of ``frames``
    (B, T, C) with ``lengths`` (B,): a position among the valid frames, then its utterance by
    searchsorted on the cumulative lengths. No boolean indexing, hence no host synchronisation."""
    ends = lengths.to(frames.device).cumsum(0)
    u = torch.rand(n, generator=generator, device=generator.device).to(frames.device)
    position = (u * ends[-1]).long().clamp_max(ends[-1] - 1)
    b = torch.searchsorted(ends, position, right=True)
    t = position - (ends[b] - lengths.to(frames.device)[b])
    return frames[b, t]


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
