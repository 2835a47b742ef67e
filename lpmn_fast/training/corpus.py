"""Data preparation: the labelled utterances of the configured corpus (synthetic made on first use)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.corpus import IEMOCAP_CLASSES, Utterance


@dataclass(frozen=True)
class Corpus:
    """root; utterances; classes (index = label id); counts per class; the loader's warnings."""

    root: Path
    utterances: tuple[Utterance, ...]
    classes: tuple[str, ...]
    counts: dict[str, int] | None = None
    warnings: tuple[str, ...] = ()


def synthetic_root(config) -> Path:
    if config.data_dir is not None:
        return Path(config.data_dir)
    name = (f"u{config.synthetic_utterances_per_speaker}-d{config.synthetic_difficulty:g}"
            f"-seed{config.synthetic_seed}")
    return Path(config.cache_dir).expanduser() / "synthetic" / name


def load_corpus(config) -> Corpus:
    """The utterances of ``config.data``: IEMOCAP from data_dir, or the synthetic corpus
    (generated into :func:`synthetic_root` if not there yet; IEMOCAP layout, same loader)."""
    from ..data.iemocap import load_iemocap

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
    corpus = load_iemocap(root)
    utterances = tuple(corpus.utterances)
    if not utterances:
        raise ValueError(f"no labelled utterances found under {root}")
    unknown = sorted({u.label for u in utterances} - set(IEMOCAP_CLASSES))
    if unknown:
        raise ValueError(f"labels {unknown} in {root} are not among the classes {IEMOCAP_CLASSES}")
    return Corpus(root, utterances, IEMOCAP_CLASSES, dict(corpus.counts), tuple(corpus.warnings))
