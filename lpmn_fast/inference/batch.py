"""Many waveforms through a SERModel at once: padded batches of similar length on the device.

The frozen part runs once per batch where the backbone can (fbank: :func:`prepare_batch`), else per
utterance as in training; the trainable part and the head run on a zero-padded batch with its
lengths; the evidence spans of a batch are computed together. Padding changes nothing: the fbank encoder
re-zeroes it after every layer, HuBERT's attention masks it and the prototype-MIL op, AP and MP pool
over valid frames only, so each result equals the one-at-a-time one up to float rounding (tested).

Inputs longer than one chunk (``chunk_frames``) are not batched: they go through
:func:`lpmn_fast.inference.chunks.run_chunked` one at a time, as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..models import LPMNHead, PoolingHead, ProbeHead
from ..models.backbones import SAMPLE_RATE
from .chunks import FrameGeometry, Pooled, centred_weights

# Default length of the span of strongest evidence reported per prediction (about the length of
# an emotional segment of the synthetic corpus, 0.3-1.0 s).
EVIDENCE_SECONDS = 0.5


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped into batches of at most ``batch_size`` similar lengths
    (longest first, so the first batch shows the peak memory at once)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class PooledBatch:
    """What :func:`run_batch` gives for B inputs, as batched CPU tensors: pooled (B, K) or (B, C);
    frame_index (B, K) winning frame per prototype (prototype heads, else None); logits (B, classes);
    valence (B,) or None; num_frames (B,) int64. Indexing or iterating gives one :class:`Pooled` per
    input, as :func:`run_chunked` gives for an input that fits one chunk."""

    pooled: torch.Tensor
    frame_index: torch.Tensor | None
    logits: torch.Tensor
    valence: torch.Tensor | None
    num_frames: torch.Tensor

    @classmethod
    def of(cls, result: Pooled) -> PooledBatch:
        """A batch of the one ``result``."""
        return cls(result.pooled.cpu()[None], None if result.frame_index is None else result.frame_index.cpu()[None],
                   result.logits.cpu()[None], None if result.valence is None else result.valence.cpu().reshape(1),
                   torch.tensor([result.num_frames]))

    def __len__(self) -> int:
        return self.logits.shape[0]

    def __getitem__(self, i: int) -> Pooled:
        if not -len(self) <= i < len(self):
            raise IndexError(f"batch of {len(self)}, no item {i}")
        return Pooled(self.pooled[i], None if self.frame_index is None else self.frame_index[i], self.logits[i],
                      None if self.valence is None else self.valence[i], int(self.num_frames[i]))

    def __iter__(self) -> Iterator[Pooled]:
        return (self[i] for i in range(len(self)))


def prepare_batch(backbone: torch.nn.Module, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``backbone.prepare`` of each of ``waves``: in one pass where the backbone has ``prepare_batch``
    (fbank), else one at a time (speech encoders: their frozen convolutions see one utterance each,
    as in training)."""
    if hasattr(backbone, "prepare_batch"):
        return backbone.prepare_batch(waves)
    return [backbone.prepare(w) for w in waves]


@torch.no_grad()
def run_batch(model: torch.nn.Module, waves: Sequence[torch.Tensor],
              feats: Sequence[torch.Tensor] | None = None) -> PooledBatch:
    """``model`` (SERModel, eval mode) on ``waves`` (each (samples,) at 16 kHz) as one padded batch.
    feats: :func:`prepare_batch` of the waves, if already computed."""
    head, backbone = model.head, model.backbone
    device = next(model.parameters()).device
    if feats is None:
        feats = prepare_batch(backbone, waves)  # (T_i, F) each: the frozen part
    lengths = torch.tensor([f.shape[0] for f in feats])
    padded = torch.nn.utils.rnn.pad_sequence(list(feats), batch_first=True).to(device)
    x = backbone(padded, lengths.to(device))  # (B, T, C)
    frame_index = None
    if isinstance(head, (LPMNHead, ProbeHead)):
        pooled, frame_index = head.read(*head.mil.pool(x, lengths.to(device)))  # what the classifier reads
        pooled, frame_index = pooled.float(), frame_index.cpu()
    elif isinstance(head, PoolingHead):
        pooled = head.pool(x.float(), lengths.to(device))
    else:
        raise TypeError(f"batched inference does not know head {type(head).__name__}")
    pooled = pooled.to(head.classifier.weight.dtype)
    logits = head.classifier(pooled)
    regressor = getattr(head, "valence", None)
    valence = None if regressor is None else regressor(pooled).cpu()
    return PooledBatch(pooled.cpu(), frame_index, logits.cpu(), valence, lengths)


def evidence_spans(head: torch.nn.Module, batch: PooledBatch, labels: torch.Tensor, geometry: FrameGeometry,
                   num_samples: Sequence[int], seconds: float = EVIDENCE_SECONDS) -> list[tuple[float, float] | None]:
    """(start_s, end_s) per input of ``batch``: the ``seconds``-long stretch of frames holding the
    most evidence for its class ``labels[i]`` (prototype heads): the explanation's per-frame
    evidence[t, label] (each prototype's centred contribution Wc[label, k] * pooled[k] at its
    winning frame, see lpmn_fast.inference.explanation), negative values counted as 0; a moving sum
    over ``seconds`` of frames picks the window, clipped to the frames of the input. Windows within
    a relative 1e-4 of the best tie (float rounding must not move the span), and the middle one of
    those is taken, so a single strong frame lands in the middle of its span. None for heads
    without prototypes, or when no prototype speaks for the label."""
    if batch.frame_index is None:
        return [None] * len(batch)
    contribution = centred_weights(head).cpu()[labels] * batch.pooled.float()  # (B, K), on the CPU as batch is
    T = batch.num_frames  # (B,)
    width0 = max(1, round(seconds * SAMPLE_RATE / geometry.shift))
    padded = max(int(T.max()), width0)
    # the explanation's evidence[:, label]; frames whose net evidence is against the label count as none
    per_frame = torch.zeros(len(batch), padded).scatter_add_(1, batch.frame_index, contribution).clamp_min(0)
    width = T.clamp(max=width0)  # (B,): a window longer than the input is all of its frames
    sums = torch.nn.functional.pad(per_frame.cumsum(1), (1, 0))
    window = sums[:, width0:] - sums[:, :-width0]  # (B, padded - width0 + 1) evidence of frames [a, a + width0)
    # a window may start at a <= T - width; frames past T hold zeros, so a row shorter than width0 sums all of it
    starts = torch.arange(window.shape[1]) <= (T - width)[:, None]
    best = window.masked_fill(~starts, float("-inf")).amax(1, keepdim=True)
    ties = starts & (window >= best * (1 - 1e-4))
    middle = ties.sum(1, keepdim=True) // 2 + 1  # the middle tie counting from 1 (of an even count, the upper one)
    a = (ties & (ties.cumsum(1) == middle)).int().max(1).indices  # (B,)
    spans = []
    for i, has in enumerate((per_frame > 0).any(1).tolist()):
        if not has:
            spans.append(None)
            continue
        start = int(a[i]) * geometry.shift
        end = min((int(a[i]) + int(width[i]) - 1) * geometry.shift + geometry.window, num_samples[i])
        spans.append((round(start / SAMPLE_RATE, 4), round(end / SAMPLE_RATE, 4)))
    return spans


def evidence_span(head: torch.nn.Module, result: Pooled, label: int, geometry: FrameGeometry, num_samples: int,
                  seconds: float = EVIDENCE_SECONDS) -> tuple[float, float] | None:
    """:func:`evidence_spans` of one whole-input ``result``."""
    return evidence_spans(head, PooledBatch.of(result), torch.tensor([label]), geometry, [num_samples], seconds)[0]
