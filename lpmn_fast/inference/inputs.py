"""What ``lpmn-predict`` labels: audio files, folders, manifests and Kaldi ``wav.scp`` lists, as items.

Each command-line input is, in this order of checks:

* a folder: every audio file under it, recursively (suffixes soundfile reads; hidden files skipped),
  in sorted order;
* a manifest (``.csv``, ``.tsv``, ``.jsonl``, ``.ndjson``): the ``path`` column (relative to the
  manifest's folder), with ``id`` and ``start``/``end`` (seconds) used when present; other
  columns (a label, say) are ignored;
* a Kaldi-style list (named ``wav.scp`` or ``*.scp``): ``<utterance id> <path>`` per line; piped
  commands (``... |``) are not run and are reported per line;
* anything else: one audio file (a missing one becomes a failed item, reported in the output).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..data.folder import audio_files
from ..data.manifest import FORMATS, read_rows
from ..data.problems import CorpusError


@dataclass(frozen=True)
class Item:
    """One thing to label. file: the audio path as the output names it; id: the utterance id (wav.scp,
    a manifest's id column) or None; start/end: seconds of a span of the file, or None; error: why it
    cannot be read at all (its row then reports this), or None."""

    file: str
    id: str | None = None
    start: float | None = None
    end: float | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        """What identifies the item in an output file (for --resume): file, id and span."""
        return "|".join(["" if v is None else str(v) for v in (self.file, self.id, self.start, self.end)])


def _from_manifest(path: Path) -> list[Item]:
    header, rows = read_rows(path)
    if "path" not in header:
        raise CorpusError(f"{path}:1: a manifest to label needs a 'path' column; found {header}")
    items = []
    for line_no, row in rows:
        where = f"{path}:{line_no}"
        text = row.get("path", "")
        if not text:
            items.append(Item(where, error=f"empty path at {where}"))
            continue
        file = Path(text).expanduser()
        file = Path(os.path.normpath(file if file.is_absolute() else path.parent / file))
        try:
            start = float(row["start"]) if row.get("start") else None
            end = float(row["end"]) if row.get("end") else None
        except ValueError:
            items.append(Item(str(file), row.get("id") or None, error=f"start/end at {where} are not numbers"))
            continue
        error = None
        if start is not None and end is not None and start >= end:
            error = f"start {start:g} s >= end {end:g} s at {where}"
        items.append(Item(str(file), row.get("id") or None, start, end, error))
    return items


def _from_scp(path: Path) -> list[Item]:
    items = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{line_no}"
        key, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if not rest:
            items.append(Item(where, key, error=f"{where}: expected '<utterance id> <path>', got {line.strip()!r}"))
        elif rest.endswith("|"):
            items.append(Item(where, key, error=f"{where}: piped command {rest!r} is not run; extract the audio to "
                                                "a file (e.g. with sox or ffmpeg) and list that file"))
        else:
            file = Path(rest).expanduser()
            # Kaldi resolves relative paths from where it runs; so do we (the working directory).
            items.append(Item(str(file), key))
    return items


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Item]:
    """The items of the command-line ``inputs`` (see the module docstring), in the order given.

    Raises CorpusError for a manifest without a path column (nothing in it can be labelled);
    every other problem becomes an item with ``error`` set.
    """
    items: list[Item] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            found = [Item(str(p)) for p in audio_files(path)]
            items += found or [Item(str(given), error=f"no audio files under the folder {given} (searched recursively "
                                                       "for the suffixes soundfile reads)")]
        elif path.suffix.lower() in FORMATS and path.is_file():
            items += _from_manifest(path)
        elif (path.name == "wav.scp" or path.suffix.lower() == ".scp") and path.is_file():
            items += _from_scp(path)
        else:
            items.append(Item(str(given)))
    return items
