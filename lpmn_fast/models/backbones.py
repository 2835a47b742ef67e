"""Frame-level feature extractors, each split into a frozen part and a trainable part.

``prepare(wave) -> (T, F)`` is the frozen, deterministic part of one utterance (Kaldi fbank, or
a pretrained speech encoder below its first fine-tuned block in eval mode, see encoders.py); its output may be cached to
disk and the result is exact. It computes in float32 under any autocast: training caches it so,
and prediction must see the same features (the background thread that prepares batches, where
the caller's autocast does not reach, and the caller's thread alike). ``frame_count(samples)`` is
T for a wave of that many samples. ``forward(feats (B, T, F), lengths (B,)) -> (B, T, C)`` is the
trainable part on padded batches; frames at or beyond ``lengths`` are padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.reference import frame_mask
from .encoders import SpeechEncoderBackbone
from .fbank import (FRAME_LENGTH_MS, FRAME_SHIFT_MS, SAMPLE_RATE, fbank_features, fbank_features_batch,
                    frame_count)

__all__ = ["FRAME_LENGTH_MS", "FRAME_SHIFT_MS", "SAMPLE_RATE", "FbankBackbone", "HubertBackbone", "build_backbone",
           "fbank_features"]


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
        with torch.autocast("cpu", enabled=False):  # float32 under any autocast, as the training cache holds it
            return fbank_features(wave, self.num_mel_bins)

    def prepare_batch(self, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``prepare`` of each of ``waves`` in one pass (see lpmn_fast.models.fbank), equal up to float rounding."""
        with torch.autocast("cpu", enabled=False):
            return fbank_features_batch(waves, self.num_mel_bins)

    def frame_count(self, samples: int) -> int:
        return frame_count(samples)

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
