"""Many waveforms through a SERModel at once: padded batches of similar length on the device.

The frozen part (``backbone.prepare``) runs per utterance, as in training; the trainable part and
the head run on a zero-padded batch with its lengths. Padding changes nothing: the fbank encoder
re-zeroes it after every layer, HuBERT's attention masks it and the prototype-MIL op, AP and MP pool
over valid frames only, so each result equals the one-at-a-time one up to float rounding (tested).

Inputs longer than one chunk (``chunk_frames``) are not batched: they go through
:func:`lpmn_fast.inference.chunks.run_chunked` one at a time, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

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


@torch.no_grad()
def run_batch(model: torch.nn.Module, waves: Sequence[torch.Tensor],
              feats: Sequence[torch.Tensor] | None = None) -> list[Pooled]:
    """``model`` (SERModel, eval mode) on ``waves`` (each (samples,) at 16 kHz) as one padded batch;
    one Pooled per wave, on the CPU, as :func:`run_chunked` gives for a wave that fits one chunk.
    feats: ``backbone.prepare`` of each wave, if already computed."""
    head, backbone = model.head, model.backbone
    device = next(model.parameters()).device
    if feats is None:
        feats = [backbone.prepare(w) for w in waves]  # (T_i, F) each: the frozen part, per utterance
    lengths = torch.tensor([f.shape[0] for f in feats], device=device)
    padded = torch.nn.utils.rnn.pad_sequence([f.to(device) for f in feats], batch_first=True)
    x = backbone(padded, lengths)  # (B, T, C)
    frame_index = None
    if isinstance(head, (LPMNHead, ProbeHead)):
        out = head.mil(x, lengths)
        pooled, frame_index = out.pooled.float(), out.frame_index
    elif isinstance(head, PoolingHead):
        pooled = head.pool(x.float(), lengths)
    else:
        raise TypeError(f"batched inference does not know head {type(head).__name__}")
    pooled = pooled.to(head.classifier.weight.dtype)
    logits = head.classifier(pooled)
    regressor = getattr(head, "valence", None)
    valence = None if regressor is None else regressor(pooled)
    return [Pooled(pooled[i].cpu(), None if frame_index is None else frame_index[i].cpu(), logits[i].cpu(),
                   None if valence is None else valence[i].cpu(), int(lengths[i]))
            for i in range(len(waves))]


def evidence_span(head: torch.nn.Module, result: Pooled, label: int, geometry: FrameGeometry, num_samples: int,
                  seconds: float = EVIDENCE_SECONDS) -> tuple[float, float] | None:
    """(start_s, end_s): the ``seconds``-long stretch of frames holding the most evidence for class
    ``label`` (prototype heads): the explanation's per-frame evidence[t, label] (each prototype's
    centred contribution Wc[label, k] * pooled[k] at its winning frame, see
    lpmn_fast.inference.explanation), negative values counted as 0; a moving sum over ``seconds``
    of frames picks the window, clipped to the frames of the input. Windows within a relative 1e-4 of
    the best tie (float rounding must not move the span), and the middle one of those is taken, so
    a single strong frame lands in the middle of its span. None for heads without prototypes, or
    when no prototype speaks for ``label``."""
    if result.frame_index is None:
        return None
    wc = centred_weights(head)[label]  # (K,)
    contribution = wc * result.pooled.float().cpu()
    T = result.num_frames
    # the explanation's evidence[:, label]; frames whose net evidence is against the label count as none
    per_frame = torch.zeros(T).index_add_(0, result.frame_index.cpu(), contribution).clamp_min(0)
    if not bool((per_frame > 0).any()):
        return None
    width = max(1, min(T, round(seconds * SAMPLE_RATE / geometry.shift)))
    sums = torch.nn.functional.pad(per_frame.cumsum(0), (1, 0))
    window = sums[width:] - sums[:-width]  # (T - width + 1,) evidence of frames [a, a + width)
    ties = torch.nonzero(window >= window.max() * (1 - 1e-4)).flatten()
    a = int(ties[len(ties) // 2])
    start = a * geometry.shift
    end = min((a + width - 1) * geometry.shift + geometry.window, num_samples)
    return round(start / SAMPLE_RATE, 4), round(end / SAMPLE_RATE, 4)
