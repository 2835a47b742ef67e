"""Your own corpus as class folders: ``DIR/<class>/**/<file>`` (the ``audiofolder`` / ImageFolder layout).

    emotions/
      angry/    a1.wav  a2.flac  session2/a3.wav
      neutral/  n1.wav  ...

Every sub-folder of DIR is a class (hidden ones aside); its audio files, searched recursively,
are its utterances. A file counts as audio by its suffix (:data:`AUDIO_SUFFIXES`: what soundfile
reads); other files are ignored. The folder's class names go through the same ``label_map`` and
``classes`` as a manifest's labels, and the same audio checks (each problem names the file).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import soundfile

from .manifest import LabelledCorpus, _Row, build_corpus
from .problems import CorpusError

# What soundfile (libsndfile) reads, by file suffix, plus common spellings of the same formats;
# headerless RAW aside (it needs the rate and sample format given, which a folder cannot say).
AUDIO_SUFFIXES = frozenset({f".{name.lower()}" for name in soundfile.available_formats() if name != "RAW"}
                           | {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf"})


def is_audio_file(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")


def audio_files(folder: Path) -> list[Path]:
    """Audio files under ``folder`` (recursive, hidden files and folders skipped), sorted."""
    found = []
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [Path(directory) / f for f in files if is_audio_file(Path(f))]
    return sorted(found)


def load_folder(root: str | os.PathLike, *, classes: str | Iterable[str] | None = None,
                label_map: str | Mapping[str, str | None] | None = None, strict: bool = False,
                check_audio: bool = True) -> LabelledCorpus:
    """Read ``root/<class>/**/<audio file>`` as a LabelledCorpus (see the module docstring).

    Raises FileNotFoundError for a missing root and CorpusError when it has no class folder or a
    class folder is not among ``classes``; unreadable audio skips the file with a CorpusWarning
    (CorpusError with ``strict=True``).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"class folder root {root} does not exist or is not a folder "
                                "(expected one sub-folder of audio files per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise CorpusError(f"no class folders in {root}: expected one sub-folder per class, e.g. "
                          f"{root}/angry/*.wav and {root}/neutral/*.wav")
    rows = [_Row(str(path), 0, path, folder.name) for folder in folders for path in audio_files(folder)]
    if not rows:
        raise CorpusError(f"no audio files in the class folders of {root} (looked for {sorted(AUDIO_SUFFIXES)})")
    stray = [p for p in root.iterdir() if p.is_file() and is_audio_file(p)]
    corpus = build_corpus(root, rows, classes=classes, label_map=label_map, strict=strict, check_audio=check_audio,
                          columns=("path", "label"), base=root)
    if stray:
        corpus.warnings.append(f"{len(stray)} audio file(s) directly in {root} have no class folder and were ignored, "
                               f"e.g. {stray[0].name}")
    return corpus
