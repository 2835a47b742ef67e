"""Frame-level feature extractors, each split into a frozen part and a trainable part.

``prepare(wave) -> (T, F)`` is the frozen, deterministic part of one utterance (Kaldi fbank, or
a pretrained speech encoder below its first fine-tuned block in eval mode, see encoders.py); its output may be cached to
disk and the result is exact. ``forward(feats (B, T, F), lengths (B,)) -> (B, T, C)`` is the
trainable part on padded batches; frames at or beyond ``lengths`` are padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchaudio.compliance import kaldi

from ..ops.reference import frame_mask
from .encoders import SpeechEncoderBackbone

SAMPLE_RATE = 16000
FRAME_SHIFT_MS = 20.0  # HuBERT's frame rate (section 4.1), used by the fbank backbone too
FRAME_LENGTH_MS = 25.0


def fbank_features(wave: torch.Tensor, num_mel_bins: int = 40) -> torch.Tensor:
    """wave: (samples,) float at 16 kHz -> (T, num_mel_bins) log-mel fbank, 20 ms shift, per-utterance CMVN."""
    min_samples = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)
    if wave.dim() != 1 or wave.numel() < min_samples:
        raise ValueError(f"need a 1-d waveform of at least {min_samples} samples (one frame), got {tuple(wave.shape)}")
    feats = kaldi.fbank(
        wave.float()[None] * 32768.0,  # Kaldi's int16 scale
        num_mel_bins=num_mel_bins,
        frame_length=FRAME_LENGTH_MS,
        frame_shift=FRAME_SHIFT_MS,
        dither=0.0,  # deterministic, so the cache is exact
        sample_frequency=SAMPLE_RATE,
    )
    # Per-utterance mean/variance normalisation removes channel and loudness offsets... partly:
    # the log-energy contour inside the utterance (what carries the synthetic emotion) survives.
    return (feats - feats.mean(0)) / feats.std(0, unbiased=False).clamp_min(1e-5)


class FbankBackbone(nn.Module):
    """Log-mel fbank (frozen, cached) + a small conv frame encoder (trainable).

    The encoder is ``layers`` 1-d convolutions (kernel ``kernel``, GELU) and a final LayerNorm;
    padding is re-zeroed after every layer so a padded batch computes exactly what each
    utterance alone would.
    """

    # prepare() is many tiny per-utterance ops: one thread is as fast, and far faster on shared cores.
    prepare_threads = 1

    def __init__(self, num_mel_bins: int = 40, hidden: int = 64, layers: int = 2, kernel: int = 5,
                 dropout: float = 0.1):
        super().__init__()
        if layers < 1 or hidden < 1 or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"fbank encoder needs layers >= 1, hidden >= 1 and an odd kernel, "
                             f"got {layers}, {hidden}, {kernel}")
        self.num_mel_bins = num_mel_bins
        self.out_dim = hidden
        dims = [num_mel_bins] + [hidden] * layers
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel, padding=kernel // 2) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden)

    def prepare(self, wave: torch.Tensor) -> torch.Tensor:
        return fbank_features(wave, self.num_mel_bins)

    def cache_key(self) -> dict:
        """Everything ``prepare`` depends on (names the feature cache)."""
        return {"backbone": "fbank", "num_mel_bins": self.num_mel_bins, "version": 1}

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        keep = frame_mask(lengths, feats.shape[1])[:, None, :].to(feats.dtype)  # (B, 1, T)
        h = feats.transpose(1, 2) * keep
        for conv in self.convs:
            h = self.dropout(F.gelu(conv(h))) * keep
        return self.norm(h.transpose(1, 2))


class HubertBackbone(SpeechEncoderBackbone):
    """``--backbone hubert``, the paper's encoder: a :class:`SpeechEncoderBackbone` that must be a
    HuBERT, with the paper's cut as defaults (19 blocks kept, 18 and 19 fine-tuned)."""

    kind = "hubert"

    def __init__(self, path: str, num_layers: int = 19, finetune_layers: Sequence[int] = (18, 19),
                 layer_weights: bool = False, revision: str | None = None):
        super().__init__(path, num_layers, finetune_layers, layer_weights, revision)

    def _check_family(self, config, source: str) -> None:
        if config.model_type != "hubert":
            raise ValueError(f"--backbone hubert got a {config.model_type!r} model at {source!r}; use --backbone hf "
                             "--hf-model for the other speech encoders")


def build_backbone(name: str, **options) -> nn.Module:
    """``fbank``, ``hf`` (any supported speech encoder) or ``hubert`` with its options (see the classes)."""
    if name == "fbank":
        return FbankBackbone(**options)
    if name == "hf":
        return SpeechEncoderBackbone(**options)
    if name == "hubert":
        return HubertBackbone(**options)
    raise ValueError(f"unknown backbone {name!r}; choose 'fbank', 'hf' or 'hubert'")
