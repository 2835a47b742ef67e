"""Pretrained speech encoders of the wav2vec 2.0 family, split into a cached frozen part and a trainable part.

Supported (detected from the checkpoint's ``config.json``, ``model_type``): HuBERT, wav2vec 2.0,
WavLM and data2vec-audio, each with post-LN (base) or "stable layer norm" (pre-LN, large)
blocks where transformers has both. They share one shape: a CNN feature encoder, a feature
projection, a convolutional positional embedding, then transformer blocks. The split keeps the
first ``num_layers`` blocks; ``prepare`` runs the part below the first fine-tuned block (frozen,
eval mode, one unpadded utterance, cacheable exactly), ``forward`` the blocks from there on a
padded batch. transformers' own modules (feature encoder, projection, positional conv, blocks)
do the work; only the loop over blocks is ours, because it must stop and resume at the split:

* post-LN encoders apply the encoder LayerNorm before the blocks, pre-LN ones after the last
  block (here: after the last *kept* block, as transformers does for the truncated model);
* WavLM's first block computes a relative position bias that every later block reuses (gated by
  its own input). The bias depends on the sequence length only, so the trainable part recomputes
  it with the first block's own ``compute_bias`` instead of caching a (heads, T, T) tensor.

``layer_weights=True`` replaces the last kept block's output by a learned softmax-weighted sum of
every kept block's output (the SUPERB convention); the cache then holds the output of each
frozen kept block, concatenated along the feature axis.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..ops.reference import frame_mask

# transformers model_type -> the name users know.
FAMILIES = {"hubert": "HuBERT", "wav2vec2": "wav2vec 2.0", "wavlm": "WavLM", "data2vec-audio": "data2vec-audio"}
# Architecture fields the trainable blocks depend on (a checkpoint that differs cannot host them).
SHAPE_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "conv_dim", "conv_stride",
                "conv_kernel", "do_stable_layer_norm", "feat_extract_norm")


def is_local(source: str | os.PathLike) -> bool:
    """Whether ``source`` means a local folder rather than a Hugging Face Hub id ("org/name"): a Path
    object, an existing path, or text that cannot be a repository id (absolute, ./, ~, several /)."""
    if isinstance(source, os.PathLike) or os.path.exists(source):
        return True
    text = str(source)
    return os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text


def load_encoder(source: str, revision: str | None = None):
    """``transformers.AutoModel`` of a supported family from a local directory or a Hub id, with
    errors that say what is wrong with ``source``."""
    from transformers import AutoConfig, AutoModel

    text = os.path.expanduser(str(source))
    if is_local(text) and not (Path(text) / "config.json").is_file():
        raise FileNotFoundError(
            f"speech encoder {source!r} not found: expected a directory with config.json and the weights "
            "(e.g. saved by save_pretrained), or a Hugging Face Hub id")
    try:
        config = AutoConfig.from_pretrained(text, revision=revision)
    except OSError as error:
        raise FileNotFoundError(
            f"could not load the speech encoder {source!r}: not a local directory, and the Hugging Face Hub did "
            f"not provide it (offline?). Pass a local directory. Cause: {error}") from error
    if config.model_type not in FAMILIES:
        raise ValueError(f"{source!r} is a {config.model_type!r} model; supported speech encoders are "
                         + ", ".join(f"{name} ({key!r})" for key, name in FAMILIES.items()))
    if getattr(config, "add_adapter", False):
        raise ValueError(f"{source!r} has an adapter after the encoder (add_adapter), which changes the frame rate; "
                         "not supported")
    # transformers' own layers, never Hugging Face Hub kernels: those are fetched at load time (no
    # network on training machines), need the `kernels` distribution (transformers >= 5.25 raises
    # without it) and would change the numerics between installs.
    model = AutoModel.from_pretrained(text, revision=revision, use_kernels=False)
    model.config.name_or_path = str(source)  # what the user gave, not a cache path
    return model


def resolved_revision(repo_id: str, revision: str | None = None) -> str | None:
    """The commit a Hub id (at ``revision``, default the main branch) resolved to, read from the local
    Hub cache that from_pretrained has just filled (snapshots/<commit>/config.json)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(found).parent.name if isinstance(found, str) else revision


def wants_wave_normalisation(source: str, config, revision: str | None = None) -> bool:
    """The checkpoint's feature extractor ``do_normalize`` where it has one (preprocessor_config.json),
    else fairseq's rule: the layer-norm (large) models normalise the waveform, the others do not."""
    try:
        from transformers import AutoFeatureExtractor

        return bool(AutoFeatureExtractor.from_pretrained(os.path.expanduser(str(source)), revision=revision)
                    .do_normalize)
    except (OSError, ValueError, AttributeError):
        return config.feat_extract_norm == "layer"


class SpeechEncoderBackbone(nn.Module):
    """A pretrained HuBERT / wav2vec 2.0 / WavLM / data2vec-audio truncated to its first ``num_layers`` blocks.

    source: local directory or Hub id; revision: Hub revision (None: the default branch; the
    commit actually loaded is recorded). num_layers: blocks kept (None: all). finetune_layers:
    1-based blocks trained, all other weights frozen (None: the last two kept blocks; empty: all
    frozen and the whole truncated model cacheable). layer_weights: see the module docstring.

    ``prepare(wave (samples,)) -> (T, S * C)``: the frozen part (S = 1, or with layer weights the
    number of cached block outputs); ``forward(feats (B, T, S * C), lengths (B,)) -> (B, T, C)``.
    """

    kind = "hf"  # how build_backbone names it (the hubert alias overrides)

    def __init__(self, source: str, num_layers: int | None = None, finetune_layers: Sequence[int] | None = None,
                 layer_weights: bool = False, revision: str | None = None):
        super().__init__()
        model = load_encoder(source, revision)
        self._check_family(model.config, source)
        total = model.config.num_hidden_layers
        num_layers = total if num_layers is None else int(num_layers)
        if not 1 <= num_layers <= total:
            raise ValueError(f"the number of kept blocks (--hf-layers / --hubert-layers) must be in [1, {total}] "
                             f"for {source!r}, got {num_layers}")
        if finetune_layers is None:
            finetune_layers = range(max(1, num_layers - 1), num_layers + 1)
        tuned = sorted(set(int(i) for i in finetune_layers))
        if tuned and not (1 <= tuned[0] and tuned[-1] <= num_layers):
            raise ValueError(f"fine-tuned blocks (--hf-finetune-layers / --hubert-finetune-layers) must lie in "
                             f"[1, kept blocks = {num_layers}], got {tuned}")
        self.source = str(source)
        self.revision = None if is_local(source) else resolved_revision(str(source), revision)
        self.family = model.config.model_type
        self.config = model.config
        self.config.num_hidden_layers = num_layers
        self.config.layerdrop = 0.0  # LayerDrop would make the cut non-deterministic; not used here
        self.num_layers = num_layers
        self.finetune_layers = tuple(tuned)
        self.split_at = tuned[0] - 1 if tuned else num_layers  # index of the first block run in forward
        self.stable_layer_norm = bool(getattr(self.config, "do_stable_layer_norm", False))
        self.relative_bias = self.family == "wavlm"
        self.normalize_wave = wants_wave_normalisation(source, self.config, revision)
        self.out_dim = self.config.hidden_size
        # With layer weights the cache holds the output of every frozen block (or, with none, the
        # input of the first block, which the weighted sum does not use).
        self.cached_outputs = max(self.split_at, 1) if layer_weights else 1

        encoder = model.encoder
        layers = list(encoder.layers[:num_layers])
        encoder.layers = nn.ModuleList(layers)  # the truncated model is what --bundle-backbone saves
        self.frozen = nn.ModuleDict({
            "feature_extractor": model.feature_extractor,
            "feature_projection": model.feature_projection,
            "pos_conv_embed": encoder.pos_conv_embed,
            "layer_norm": encoder.layer_norm if not self.stable_layer_norm else nn.Identity(),
            "layers": nn.ModuleList(layers[: self.split_at]),
        })
        self.top = nn.ModuleList(layers[self.split_at:])
        self.final_norm = encoder.layer_norm if self.stable_layer_norm else nn.Identity()
        # Softmax weights over the kept blocks' outputs (zeros: a plain average to start from).
        self.layer_weights = nn.Parameter(torch.zeros(num_layers)) if layer_weights else None
        self.requires_grad_(False)
        for i in tuned:
            self.top[i - 1 - self.split_at].requires_grad_(True)
        if self.layer_weights is not None:
            self.layer_weights.requires_grad_(True)
        self.frozen.eval()
        # The whole transformers model (sharing these modules), kept out of the module tree so that
        # state_dict() stays as it is; bundle_backbone saves it with save_pretrained.
        self.__dict__["hf_model"] = model

    def _check_family(self, config, source: str) -> None:
        """Subclasses restrict the family (the hubert alias)."""

    def train(self, mode: bool = True) -> "SpeechEncoderBackbone":
        super().train(mode)
        self.frozen.eval()  # the cached part must stay deterministic
        return self

    def cache_key(self) -> dict:
        """Everything ``prepare`` depends on: the checkpoint (config, weight files, revision) and the cut."""
        folder = Path(os.path.expanduser(self.source))
        weights = (sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))) if folder.is_dir() else []
        return {"backbone": self.family, "source": str(folder.resolve()) if folder.is_dir() else self.source,
                "revision": self.revision, "config": self.config.to_json_string(), "split_at": self.split_at,
                "cached_outputs": self.cached_outputs, "normalize_wave": self.normalize_wave,
                "weights": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]}

    def frame_count(self, samples: int) -> int:
        lengths = torch.tensor([samples])
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return int(lengths)

    def _block(self, block: nn.Module, h: torch.Tensor, mask, bias):
        """One transformer block; returns (h, bias). WavLM blocks take and return the position bias."""
        if self.relative_bias:
            return block(h, attention_mask=mask, position_bias=bias)
        out = block(h, attention_mask=mask)
        return (out[0] if isinstance(out, tuple) else out), None

    @torch.no_grad()
    def prepare(self, wave: torch.Tensor) -> torch.Tensor:
        """wave: (samples,) at 16 kHz -> (T, S * C): the input of the first fine-tuned block (and,
        with layer weights, the outputs of the frozen blocks before it)."""
        if wave.dim() != 1 or self.frame_count(wave.numel()) < 1:
            raise ValueError(f"need a 1-d waveform long enough for one {FAMILIES[self.family]} frame, "
                             f"got {tuple(wave.shape)}")
        device = next(self.frozen.parameters()).device
        with torch.autocast(device.type, enabled=False):  # float32 under any autocast (see backbones.py)
            return self._prepare(wave.float().to(device)[None])

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize_wave:  # as Wav2Vec2FeatureExtractor(do_normalize=True) does
            x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        h = self.frozen["feature_extractor"](x).transpose(1, 2)
        h = self.frozen["feature_projection"](h)
        h = h[0] if isinstance(h, tuple) else h  # wav2vec 2.0, WavLM, data2vec also return the pre-projection
        h = h + self.frozen["pos_conv_embed"](h)
        h = self.frozen["layer_norm"](h)
        outputs, bias = [h], None
        for layer in self.frozen["layers"]:
            h, bias = self._block(layer, h, None, bias)
            outputs.append(h)
        kept = outputs[-self.cached_outputs:]
        return torch.cat(kept, dim=-1)[0].cpu()

    def _position_bias(self, batch: int, length: int) -> torch.Tensor | None:
        """WavLM: the relative position bias the first block computes, for blocks after it (else None)."""
        if not self.relative_bias or self.split_at == 0:
            return None  # the first block is in the trainable part and computes it itself
        attention = self.frozen["layers"][0].attention
        bias = attention.compute_bias(length, length)  # (heads, T, T), depends on T only
        return bias[None].expand(batch, -1, -1, -1).reshape(batch * attention.num_heads, length, length)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch, length = feats.shape[:2]
        valid = frame_mask(lengths, length)
        stack = (feats * valid[..., None].to(feats.dtype)).unflatten(-1, (self.cached_outputs, self.out_dim))
        h = stack[:, :, -1]
        if self.relative_bias:
            mask = valid  # WavLM's attention takes the (B, T) padding mask itself
        else:
            from transformers.masking_utils import create_bidirectional_mask

            # Positional: the embeddings keyword was renamed (input_embeds -> inputs_embeds) within transformers 5.
            mask = create_bidirectional_mask(self.config, h, valid)
        outputs, bias = [], self._position_bias(batch, length)
        for layer in self.top:
            h, bias = self._block(layer, h, mask, bias)
            outputs.append(h)
        h = self.final_norm(h)
        if self.layer_weights is None:
            return h
        frozen_outputs = [stack[:, :, i] for i in range(self.cached_outputs)] if self.split_at else []
        hidden = frozen_outputs + outputs[:-1] + [h] if outputs else frozen_outputs[:-1] + [h]
        weights = torch.softmax(self.layer_weights, dim=0).to(h.dtype)
        return torch.einsum("l,lbtc->btc", weights, torch.stack(hidden))


__all__ = ["FAMILIES", "SHAPE_FIELDS", "SpeechEncoderBackbone", "is_local", "load_encoder"]
