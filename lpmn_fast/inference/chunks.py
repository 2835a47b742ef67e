"""One waveform through a SERModel in chunks of frames, combined into the whole-input result.

Frame features (what each chunk sees):

* fbank backbone: the Kaldi fbank and its per-utterance normalisation run on the whole waveform
  (cheap, (T, 40)); the conv encoder runs per chunk with ``receptive_context`` real frames on
  each side, so every kept frame sees exactly the inputs of a one-pass run: exact.
* pretrained speech encoders (HuBERT, wav2vec 2.0, WavLM, data2vec-audio): each chunk's
  waveform, widened by ``context_s`` of audio on each side, goes through the frozen bottom and
  the trained blocks, and only the chunk's own frames are kept. Self-attention then sees the
  window, not the whole file: an approximation for files longer than one chunk (files that fit
  one chunk are computed exactly as in training).

Heads (how chunks combine): LPMN's pooled mapping and MP are maxima over frames, so the max over
chunks of the per-chunk maxima is exact (``frame_index`` comes from the chunk that attains it,
the earliest on ties, like the op); AP's mean is the frame-count weighted mean of chunk sums.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models import FbankBackbone, LPMNHead, PoolingHead, ProbeHead, SpeechEncoderBackbone
from ..models.backbones import FRAME_LENGTH_MS, FRAME_SHIFT_MS, SAMPLE_RATE
from ..ops.reference import EPS


@dataclass(frozen=True)
class FrameGeometry:
    """Frame i covers samples [i * shift, i * shift + window) of the 16 kHz waveform."""

    shift: int
    window: int

    def time_s(self, frame) -> float:
        """Centre of frame(s) in seconds."""
        return (frame * self.shift + self.window / 2) / SAMPLE_RATE


def frame_geometry(backbone: torch.nn.Module) -> FrameGeometry:
    if isinstance(backbone, FbankBackbone):
        return FrameGeometry(int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000), int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000))
    if isinstance(backbone, SpeechEncoderBackbone):
        shift, window = 1, 1
        for kernel, stride in zip(backbone.config.conv_kernel, backbone.config.conv_stride):
            window += (kernel - 1) * shift
            shift *= stride
        return FrameGeometry(shift, window)
    raise TypeError(f"no frame geometry for backbone {type(backbone).__name__}")


def receptive_context(backbone: FbankBackbone) -> int:
    """Frames on each side that one output frame of the conv encoder depends on."""
    return sum(conv.kernel_size[0] // 2 for conv in backbone.convs)


@torch.no_grad()
def frame_chunks(backbone: torch.nn.Module, wave: torch.Tensor, chunk_frames: int, context_s: float = 2.0,
                 device: torch.device | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first frame index, x (Tc, C)) covering all frames of ``wave`` (samples,) in order."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    device = device or next(backbone.parameters()).device
    if isinstance(backbone, FbankBackbone):
        feats = backbone.prepare(wave.cpu())  # (T, F)
        T, r = feats.shape[0], receptive_context(backbone)
        for a in range(0, T, chunk_frames):
            b = min(T, a + chunk_frames)
            lo, hi = max(0, a - r), min(T, b + r)
            x = backbone(feats[lo:hi][None].to(device), torch.tensor([hi - lo], device=device))
            yield a, x[0, a - lo:b - lo]
    elif isinstance(backbone, SpeechEncoderBackbone):
        g = frame_geometry(backbone)
        T, ctx = backbone.frame_count(wave.numel()), math.ceil(context_s * SAMPLE_RATE / g.shift)
        for a in range(0, T, chunk_frames):
            b = min(T, a + chunk_frames)
            lo, hi = max(0, a - ctx), min(T, b + ctx)
            # The whole file when it fits one window: exactly what training computed.
            window = wave if (lo, hi) == (0, T) else wave[lo * g.shift:(hi - 1) * g.shift + g.window]
            feats = backbone.prepare(window)
            x = backbone(feats[None].to(device), torch.tensor([feats.shape[0]], device=device))
            yield a, x[0, a - lo:b - lo]
    else:
        raise TypeError(f"chunked inference does not know backbone {type(backbone).__name__}")


@dataclass
class Pooled:
    """A head's whole-input result. pooled: (K,) or (C,) the vector the classifier reads;
    frame_index: (K,) winning frame per prototype (prototype heads, else None); logits
    (classes,); valence: scalar tensor or None; num_frames: T; soft_evidence: (T, classes) or None
    (see lpmn_fast.inference.explanation)."""

    pooled: torch.Tensor
    frame_index: torch.Tensor | None
    logits: torch.Tensor
    valence: torch.Tensor | None
    num_frames: int
    soft_evidence: torch.Tensor | None = None


def centred_weights(head: torch.nn.Module) -> torch.Tensor:
    """(classes, K) classifier weights minus their mean over classes: adding one value to every
    class's logit leaves the probabilities unchanged, so only this part favours a class."""
    w = head.classifier.weight.detach().float()
    return w - w.mean(0, keepdim=True)


def frame_mappings(head: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x (T, C) -> s (T, K): each frame's softmax over the prototypes, eq. (2)."""
    mil = head.mil
    cos = F.normalize(x.float(), dim=-1, eps=EPS) @ F.normalize(mil.prototypes.detach().float(), dim=-1, eps=EPS).T
    s = torch.softmax(cos / mil.tau, dim=-1)
    return head.features(s) if isinstance(head, ProbeHead) else s  # a probe's K' columns


@torch.no_grad()
def run_chunked(model: torch.nn.Module, wave: torch.Tensor, chunk_frames: int, context_s: float = 2.0,
                soft_evidence: bool = False) -> Pooled:
    """``model`` (SERModel, eval mode) on ``wave`` (samples,) at 16 kHz, in chunks of ``chunk_frames``."""
    head = model.head
    prototype_head = isinstance(head, (LPMNHead, ProbeHead))
    if not prototype_head and not isinstance(head, PoolingHead):
        raise TypeError(f"chunked inference does not know head {type(head).__name__}")
    best = index = total = None
    frames, soft = 0, []
    wc = centred_weights(head) if prototype_head and soft_evidence else None
    for start, x in frame_chunks(model.backbone, wave, chunk_frames, context_s):
        frames += x.shape[0]
        if prototype_head:
            pooled, frame_index = head.mil.pool(x[None])
            value, where = pooled[0].float(), frame_index[0] + start
            if best is None:
                best, index = value, where
            else:
                better = value > best  # strict: on ties the earlier chunk keeps it, like the op
                best, index = torch.where(better, value, best), torch.where(better, where, index)
            if wc is not None:
                soft.append(frame_mappings(head, x) @ wc.T)
        elif head.mode == "mp":
            value = x.float().amax(0)
            best = value if best is None else torch.maximum(best, value)
        else:
            value = x.float().sum(0)
            total = value if total is None else total + value
    pooled = best if best is not None else total / frames
    if prototype_head:  # the maxima are the mil's; the classifier reads them through the head
        pooled, index = head.read(pooled, index)
    pooled = pooled.to(head.classifier.weight.dtype)
    regressor = getattr(head, "valence", None)
    return Pooled(pooled, index, head.classifier(pooled[None])[0],
                  None if regressor is None else regressor(pooled[None])[0], frames,
                  torch.cat(soft) if soft else None)
