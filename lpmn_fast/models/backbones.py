"""Frame-level feature extractors, each split into a frozen part and a trainable part.

``prepare(wave) -> (T, F)`` is the frozen, deterministic part of one utterance (Kaldi fbank, or
the HuBERT layers below the first fine-tuned block in eval mode); its output may be cached to
disk and the result is exact. ``forward(feats (B, T, F), lengths (B,)) -> (B, T, C)`` is the
trainable part on padded batches; frames at or beyond ``lengths`` are padding.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchaudio.compliance import kaldi

from ..ops.reference import frame_mask

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


class HubertBackbone(nn.Module):
    """A pretrained ``transformers.HubertModel`` truncated to its first ``num_layers`` blocks.

    Blocks in ``finetune_layers`` (1-based; the paper: 18 and 19 of 19) are trained, all other
    weights frozen. ``prepare`` runs the frozen bottom (CNN, projection, positional conv, blocks
    before the first fine-tuned one) in eval mode on one unpadded utterance; ``forward`` runs the
    remaining blocks (frozen ones among them still frozen) and, for pre-LN models, the final
    LayerNorm. With no block fine-tuned the whole truncated model is frozen and cacheable.
    """

    def __init__(self, path: str, num_layers: int = 19, finetune_layers: Sequence[int] = (18, 19)):
        super().__init__()
        from transformers import HubertModel

        model = _load_hubert(HubertModel, path)
        total = model.config.num_hidden_layers
        if not 1 <= num_layers <= total:
            raise ValueError(f"hubert_layers must be in [1, {total}] for {path!r}, got {num_layers}")
        tuned = sorted(set(int(i) for i in finetune_layers))
        if tuned and not (1 <= tuned[0] and tuned[-1] <= num_layers):
            raise ValueError(f"hubert_finetune_layers must lie in [1, hubert_layers = {num_layers}], got {tuned}")
        self.config = model.config
        self.config.num_hidden_layers = num_layers
        self.config.layerdrop = 0.0  # LayerDrop would make the cut non-deterministic; not used here
        self.num_layers = num_layers
        self.finetune_layers = tuple(tuned)
        self.split_at = tuned[0] - 1 if tuned else num_layers  # index of the first block run in forward
        self.stable_layer_norm = bool(self.config.do_stable_layer_norm)
        # fairseq/HF normalise the waveform for the layer-norm (large) models only.
        self.normalize_wave = self.config.feat_extract_norm == "layer"
        self.out_dim = self.config.hidden_size

        layers = list(model.encoder.layers[:num_layers])
        self.frozen = nn.ModuleDict({
            "feature_extractor": model.feature_extractor,
            "feature_projection": model.feature_projection,
            "pos_conv_embed": model.encoder.pos_conv_embed,
            "layer_norm": model.encoder.layer_norm if not self.stable_layer_norm else nn.Identity(),
            "layers": nn.ModuleList(layers[: self.split_at]),
        })
        self.top = nn.ModuleList(layers[self.split_at:])
        self.final_norm = model.encoder.layer_norm if self.stable_layer_norm else nn.Identity()
        self.requires_grad_(False)
        for i in tuned:
            self.top[i - 1 - self.split_at].requires_grad_(True)
        self.frozen.eval()

    def train(self, mode: bool = True) -> "HubertBackbone":
        super().train(mode)
        self.frozen.eval()  # the cached part must stay deterministic
        return self

    def cache_key(self) -> dict:
        """Everything ``prepare`` depends on: the checkpoint (config, weight files) and the cut."""
        folder = Path(str(self.config.name_or_path))
        weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
        return {"backbone": "hubert", "path": str(folder), "config": self.config.to_json_string(),
                "split_at": self.split_at, "normalize_wave": self.normalize_wave,
                "weights": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]}

    def frame_count(self, samples: int) -> int:
        lengths = torch.tensor([samples])
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return int(lengths)

    @torch.no_grad()
    def prepare(self, wave: torch.Tensor) -> torch.Tensor:
        """wave: (samples,) at 16 kHz -> (T, C) input of the first fine-tuned block."""
        if wave.dim() != 1 or self.frame_count(wave.numel()) < 1:
            raise ValueError(f"need a 1-d waveform long enough for one HuBERT frame, got {tuple(wave.shape)}")
        device = next(self.frozen.parameters()).device
        x = wave.float().to(device)[None]
        if self.normalize_wave:
            x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        h = self.frozen["feature_extractor"](x).transpose(1, 2)
        h = self.frozen["feature_projection"](h)
        h = h + self.frozen["pos_conv_embed"](h)
        h = self.frozen["layer_norm"](h)
        for layer in self.frozen["layers"]:
            h = layer(h, attention_mask=None)
        return h[0].cpu()

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        valid = frame_mask(lengths, feats.shape[1])
        h = feats * valid[..., None].to(feats.dtype)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=h, attention_mask=valid)
        for layer in self.top:
            h = layer(h, attention_mask=mask)
        return self.final_norm(h)


def _load_hubert(model_class, path: str):
    """from_pretrained with an error that says what is wrong with ``path``."""
    text = os.path.expanduser(str(path))
    local = os.path.isabs(text) or text.startswith(".") or Path(text).exists()
    if local and not (Path(text) / "config.json").is_file():
        raise FileNotFoundError(
            f"HuBERT checkpoint {path!r} not found: expected a directory with config.json and the weights "
            "(e.g. saved by HubertModel.save_pretrained)"
        )
    try:
        return model_class.from_pretrained(text)
    except OSError as error:
        raise FileNotFoundError(
            f"could not load HuBERT from {path!r}: not a local directory, and the Hugging Face hub "
            f"did not provide it (offline?). Pass a local directory. Cause: {error}"
        ) from error


def build_backbone(name: str, **options) -> nn.Module:
    """``fbank`` or ``hubert`` with its options (see the classes)."""
    if name == "fbank":
        return FbankBackbone(**options)
    if name == "hubert":
        return HubertBackbone(**options)
    raise ValueError(f"unknown backbone {name!r}; choose 'fbank' or 'hubert'")
