"""Frozen-backbone features per utterance: computed once and cached on disk, or on the fly.

Cache layout: ``<cache_dir>/features/<fingerprint>/<utt_id>-<hash of the WAV path>.safetensors``,
one file per utterance holding ``feats`` (T, F) and, as metadata, the path, size and mtime of the
WAV it came from (a changed file is recomputed). The fingerprint hashes everything ``prepare``
depends on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from ..data.atomic import atomic_path
from ..data.audio import header_samples, read_utterance
from ..data.corpus import Utterance
from ..models.backbones import SAMPLE_RATE


def backbone_fingerprint(backbone: torch.nn.Module) -> str:
    """A short hash of what ``backbone.prepare`` computes (its ``cache_key()``)."""
    return hashlib.sha1(json.dumps(backbone.cache_key(), sort_keys=True).encode()).hexdigest()[:16]


def _source_stamp(path: Path) -> dict[str, str]:
    path = path.resolve()
    stat = path.stat()
    return {"source": str(path), "size": str(stat.st_size), "mtime_ns": str(stat.st_mtime_ns)}


def _load_if_fresh(file: Path, stamp: dict[str, str]) -> torch.Tensor | None:
    if not file.is_file():
        return None
    try:
        with safe_open(file, framework="pt") as f:
            if f.metadata() != stamp:
                return None
            return f.get_tensor("feats")
    except Exception:  # a corrupt cache entry is recomputed, never trusted
        return None


def cache_features(backbone: torch.nn.Module, utterances: Sequence[Utterance], cache_dir: str | Path,
                   *, progress: bool = True, desc: str = "caching features",
                   dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """(T_i, F) frozen features of every utterance, read from or written to the disk cache.

    ``dtype``: how they are stored and kept in memory; 16-bit caches live beside the float32
    one (folder suffix ``-bfloat16`` / ``-float16``), rounded from the float32 features.
    """
    folder = Path(cache_dir).expanduser() / "features" / (backbone_fingerprint(backbone) + _dtype_suffix(dtype))
    threads = torch.get_num_threads()
    torch.set_num_threads(getattr(backbone, "prepare_threads", None) or threads)
    try:
        return [_cached(backbone, utt, folder, dtype)
                for utt in tqdm(utterances, desc=desc, unit="utt", disable=not progress)]
    finally:
        torch.set_num_threads(threads)


def _dtype_suffix(dtype: torch.dtype) -> str:
    return "" if dtype == torch.float32 else "-" + str(dtype).removeprefix("torch.")


def feature_bytes(features) -> int:
    """Bytes the features take in memory (= the tensor payload of their cache files); 0 when computed on the fly."""
    if isinstance(features, OnTheFlyFeatures):
        return 0
    return sum(f.numel() * f.element_size() for f in features)


def _cached(backbone: torch.nn.Module, utt: Utterance, folder: Path, dtype: torch.dtype = torch.float32
            ) -> torch.Tensor:
    stamp = _source_stamp(Path(utt.path))
    if utt.start is not None or utt.end is not None:  # a segment of a longer file: its span is part of the source
        stamp["span"] = f"{utt.start}-{utt.end}"
    file = folder / f"{utt.utt_id}-{hashlib.sha1(stamp['source'].encode()).hexdigest()[:10]}.safetensors"
    feats = _load_if_fresh(file, stamp)
    if feats is not None and feats.dtype != dtype:
        feats = None  # written by something else: recompute
    if feats is None:
        feats = backbone.prepare(read_utterance(utt)).to(dtype).contiguous()
        with atomic_path(file) as tmp:
            save_file({"feats": feats}, str(tmp), metadata=stamp)
    return feats


class OnTheFlyFeatures:
    """Recomputes the frozen part of one utterance on every access (cache_features off)."""

    def __init__(self, backbone: torch.nn.Module, utterances: Sequence[Utterance]):
        self.backbone = backbone
        self.utterances = list(utterances)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.backbone.prepare(read_utterance(self.utterances[i]))

    @property
    def prepare_on_gpu(self) -> bool:
        """Whether the frozen part's weights are on a GPU: DataLoader workers (forked processes,
        which cannot use CUDA) then only decode and resample, and the training process prepares."""
        return any(p.device.type != "cpu" for p in self.backbone.parameters())

    def waveform(self, i: int) -> torch.Tensor:
        """Utterance ``i`` decoded, mono, at 16 kHz (the part a worker does when :attr:`prepare_on_gpu`)."""
        return read_utterance(self.utterances[i])

    def from_waveform(self, wave: torch.Tensor) -> torch.Tensor:
        return self.backbone.prepare(wave)

    def frame_estimates(self) -> list[int]:
        """Frames per utterance from the audio headers, without decoding anything (for length
        bucketing): exact for 16 kHz files, whose sample count is known; others are resampled
        first, and their count estimated (ceil(n * 16000 / rate), as the resampler makes it)."""
        counts = []
        for u in self.utterances:  # a span counts its own samples, cut as read_wav cuts
            samples = header_samples(u.path, SAMPLE_RATE, start=u.start, end=u.end)
            counts.append(max(1, int(self.backbone.frame_count(samples))))
        return counts
