"""Data preparation: the labelled utterances of the configured corpus (synthetic made on first use)
and their frozen features as a LabelledSet."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ..data.corpus import IEMOCAP_CLASSES, MER2023_CLASSES, Utterance
from ..protocol import Split, make_split
from .features import OnTheFlyFeatures, cache_features
from .steps import LabelledSet


@dataclass(frozen=True)
class Corpus:
    """root; utterances; classes (index = label id); counts per class; the loader's warnings;
    expected_counts: what the class counts were checked against (IEMOCAP release), None if unchecked;
    details: what else a results file records (your own corpus: source, columns, label map, sessions)."""

    root: Path
    utterances: tuple[Utterance, ...]
    classes: tuple[str, ...]
    counts: dict[str, int] | None = None
    warnings: tuple[str, ...] = ()
    expected_counts: dict[str, int] | None = None
    details: dict | None = None

    def describe(self) -> dict:
        """What a results file records about the corpus (the counts, and any mismatch or skipped part)."""
        return {"root": str(self.root), "utterances": len(self.utterances), "counts": self.counts,
                "expected_counts": self.expected_counts,
                "counts_match": None if self.expected_counts is None else self.counts == self.expected_counts,
                "warnings": list(self.warnings), **({"details": self.details} if self.details is not None else {})}


def synthetic_root(config) -> Path:
    if config.data_dir is not None:
        return Path(config.data_dir)
    name = (f"u{config.synthetic_utterances_per_speaker}-d{config.synthetic_difficulty:g}"
            f"-seed{config.synthetic_seed}")
    return Path(config.cache_dir).expanduser() / "synthetic" / name


def mer2023_paths(config) -> tuple[Path, Path]:
    """(label CSV, WAV folder) of a mer2023 config: the explicit fields, else under data_dir."""
    root = Path(config.data_dir).expanduser() if config.data_dir is not None else None
    label_csv = Path(config.label_csv).expanduser() if config.label_csv is not None else root / "train-label.csv"
    wav_dir = Path(config.wav_dir).expanduser() if config.wav_dir is not None else root / "wav"
    return label_csv, wav_dir


def load_corpus(config) -> Corpus:
    """The utterances of ``config.data``: IEMOCAP from data_dir, MER2023 from its label CSV and WAV
    folder, or the synthetic corpus (generated into :func:`synthetic_root` if not there yet;
    IEMOCAP layout, same loader). ``config.strict`` turns the loaders' warnings into errors."""
    from ..data.iemocap import load_iemocap

    strict = getattr(config, "strict", False)
    if config.data in ("manifest", "folder"):
        return load_own_corpus(config, strict)
    if config.data == "mer2023":
        from ..data.mer2023 import load_mer2023

        label_csv, wav_dir = mer2023_paths(config)
        mer = load_mer2023(label_csv, wav_dir, strict=strict)
        return Corpus(label_csv.parent, tuple(mer.utterances), MER2023_CLASSES, dict(mer.counts), tuple(mer.warnings))
    if config.data == "synthetic":
        from ..data.synthetic import generate_corpus

        root = generate_corpus(synthetic_root(config), seed=config.synthetic_seed,
                               utterances_per_speaker=config.synthetic_utterances_per_speaker,
                               difficulty=config.synthetic_difficulty, progress=config.progress)
    elif config.data == "iemocap":
        root = Path(config.data_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"IEMOCAP directory not found: {root} (pass --data-dir IEMOCAP_full_release)")
    else:
        raise ValueError(f"unknown data {config.data!r}")
    corpus = load_iemocap(root, strict=strict)
    utterances = tuple(corpus.utterances)
    if not utterances:
        raise ValueError(f"no labelled utterances found under {root}")
    unknown = sorted({u.label for u in utterances} - set(IEMOCAP_CLASSES))
    if unknown:
        raise ValueError(f"labels {unknown} in {root} are not among the classes {IEMOCAP_CLASSES}")
    return Corpus(root, utterances, IEMOCAP_CLASSES, dict(corpus.counts), tuple(corpus.warnings),
                  corpus.expected_counts)


def load_own_corpus(config, strict: bool = False) -> Corpus:
    """Your own corpus: ``config.manifest`` (data 'manifest') or the class folders in
    ``config.data_dir`` (data 'folder'), with ``config.classes`` and ``config.label_map``."""
    options = {"classes": config.classes, "label_map": config.label_map, "strict": strict}
    if config.data == "manifest":
        from ..data.manifest import load_manifest

        own = load_manifest(config.manifest, **options)
        root = own.source.parent
    else:
        from ..data.folder import load_folder

        own = load_folder(config.data_dir, **options)
        root = own.source
    return Corpus(root, tuple(own.utterances), own.classes, dict(own.counts), tuple(own.warnings),
                  details={"data": config.data, **own.details()})


def labelled_set(backbone, utterances: Sequence[Utterance], classes: Sequence[str], c, desc: str) -> LabelledSet:
    """The frozen features (cached or on the fly, as ``c`` says), label ids and, when every
    utterance has one, valence of ``utterances``."""
    if c.cache_features:
        features = cache_features(backbone, utterances, c.cache_dir, progress=c.progress, desc=desc,
                                  dtype=getattr(torch, getattr(c, "cache_dtype", "float32")))
    else:
        features = OnTheFlyFeatures(backbone, utterances)
    labels = torch.tensor([list(classes).index(u.label) for u in utterances], dtype=torch.int64)
    has_valence = bool(utterances) and all(u.valence is not None for u in utterances)
    valence = torch.tensor([u.valence for u in utterances], dtype=torch.float32) if has_valence else None
    return LabelledSet(features, labels, tuple(u.utt_id for u in utterances), valence)


class PreparedData(NamedTuple):
    """Everything a run needs before its model: the corpus, its split, the classes, the backbone
    that computed the frozen features, and the train/valid/test LabelledSets."""

    corpus: Corpus
    split: Split
    classes: list[str]
    backbone: torch.nn.Module
    sets: dict[str, LabelledSet]


def prepare_data(c) -> PreparedData:
    """Corpus, split and feature sets of the resolved config ``c`` (features from the cache)."""
    from .build import build_backbone_from_config

    corpus = load_corpus(c)
    split = make_split(c.split, corpus.utterances, c.test_session, folds=c.folds, seed=c.fold_seed,
                       valid_fraction=c.valid_fraction)
    classes = list(corpus.classes)
    backbone = build_backbone_from_config(c)
    sets = {name: labelled_set(backbone, utts, classes, c, f"features ({name})")
            for name, utts in (("train", split.train), ("valid", split.valid), ("test", split.test))}
    return PreparedData(corpus, split, classes, backbone, sets)
