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
from ..data.audio import read_utterance
from ..data.corpus import Utterance


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
                   *, progress: bool = True, desc: str = "caching features") -> list[torch.Tensor]:
    """(T_i, F) frozen features of every utterance, read from or written to the disk cache."""
    folder = Path(cache_dir).expanduser() / "features" / backbone_fingerprint(backbone)
    threads = torch.get_num_threads()
    torch.set_num_threads(getattr(backbone, "prepare_threads", None) or threads)
    try:
        return [_cached(backbone, utt, folder)
                for utt in tqdm(utterances, desc=desc, unit="utt", disable=not progress)]
    finally:
        torch.set_num_threads(threads)


def _cached(backbone: torch.nn.Module, utt: Utterance, folder: Path) -> torch.Tensor:
    stamp = _source_stamp(Path(utt.path))
    if utt.start is not None or utt.end is not None:  # a segment of a longer file: its span is part of the source
        stamp["span"] = f"{utt.start}-{utt.end}"
    file = folder / f"{utt.utt_id}-{hashlib.sha1(stamp['source'].encode()).hexdigest()[:10]}.safetensors"
    feats = _load_if_fresh(file, stamp)
    if feats is None:
        feats = backbone.prepare(read_utterance(utt)).contiguous()
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
