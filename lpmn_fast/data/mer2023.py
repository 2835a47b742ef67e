"""MER2023 (the MER-MULTI training set's labels and audio) as labelled utterances with valence.

Input: the release's ``train-label.csv`` (columns ``name``, ``discrete``, ``valence``) and a folder
of 16 kHz mono WAVs ``<wav_dir>/<name>.wav``. The release ships videos; extract their audio with
ffmpeg, e.g. for every video:

    ffmpeg -nostdin -loglevel error -i video/<name>.mp4 -vn -ac 1 -ar 16000 -sample_fmt s16 wav/<name>.wav

(-vn drops the picture, -ac 1 mixes to mono, -ar 16000 resamples, -sample_fmt s16 = 16-bit PCM).
In bash: ``for v in video/*.mp4; do n=$(basename "$v" .mp4); ffmpeg -nostdin -loglevel error -i "$v"
-vn -ac 1 -ar 16000 -sample_fmt s16 "wav/$n.wav"; done`` (``-nostdin`` keeps ffmpeg from
swallowing the loop's input). Files at another rate or with more channels still load:
lpmn_fast.data.audio.read_wav mixes and resamples.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .audio import audio_problem
from .corpus import MER2023_CLASSES, Utterance
from .problems import CorpusError, settle

# The release's spellings (and the canonical names themselves) -> MER2023_CLASSES.
LABEL_SPELLINGS = {
    "neutral": "neutral", "angry": "anger", "anger": "anger", "happy": "happiness", "happiness": "happiness",
    "sad": "sadness", "sadness": "sadness", "worried": "worry", "worry": "worry", "surprise": "surprise",
}
REQUIRED_COLUMNS = ("name", "discrete", "valence")


@dataclass
class Mer2023Corpus:
    """The loaded corpus: utterances (CSV order, valence set), counts per class (zeros included),
    warnings (one message per skipped row)."""

    label_csv: Path
    wav_dir: Path
    utterances: list[Utterance]
    counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)


def load_mer2023(
    label_csv: str | os.PathLike,
    wav_dir: str | os.PathLike,
    *,
    strict: bool = False,
    check_audio: bool = True,
) -> Mer2023Corpus:
    """Read ``label_csv`` and pair each row with ``<wav_dir>/<name>.wav``.

    Raises CorpusError naming the row for an unknown emotion label, a valence that is not a finite
    number, an empty name or a duplicate name, and for missing columns or an empty file: these
    make the labels themselves untrustworthy. A missing or corrupt WAV (header check with
    soundfile.info, skipped with check_audio=False) skips the row with a CorpusWarning, or raises
    CorpusError with ``strict=True``.
    """
    label_csv, wav_dir = Path(label_csv), Path(wav_dir)
    if not label_csv.is_file():
        raise FileNotFoundError(f"MER2023 label file not found: {label_csv} (expected the release's train-label.csv)")
    if not wav_dir.is_dir():
        raise FileNotFoundError(f"MER2023 audio folder not found: {wav_dir} (expected <name>.wav files)")
    with label_csv.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: tolerate a byte-order mark
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CorpusError(f"{label_csv} lacks column(s) {missing}; found {header}")
    if not rows:
        raise CorpusError(f"{label_csv} has a header but no rows")
    problems: list[str] = []
    utterances: list[Utterance] = []
    seen: dict[str, int] = {}
    for line_no, row in enumerate(rows, 2):  # line 1 is the header
        where = f"{label_csv}:{line_no}"
        name = (row["name"] or "").strip()
        if not name:
            raise CorpusError(f"empty name at {where}")
        if name in seen:
            raise CorpusError(f"duplicate name {name!r} at {where} (first at line {seen[name]})")
        seen[name] = line_no
        spelling = (row["discrete"] or "").strip()
        label = LABEL_SPELLINGS.get(spelling.lower())
        if label is None:
            raise CorpusError(f"unknown emotion label {spelling!r} for {name!r} at {where}; known spellings: "
                              f"{sorted(LABEL_SPELLINGS)}")
        try:
            valence = float(row["valence"])
        except (TypeError, ValueError):
            valence = math.nan
        if not math.isfinite(valence):
            raise CorpusError(f"valence {row['valence']!r} for {name!r} at {where} is not a finite number")
        wav = wav_dir / f"{name}.wav"
        bad = audio_problem(wav) if check_audio else None
        if bad is not None:
            problems.append(f"{bad} (row {where})")
            continue
        utterances.append(Utterance(name, wav, label, valence=valence))
    settle(problems, strict=strict, source=f"MER2023 labels {label_csv} with audio {wav_dir}")
    if not utterances:
        raise CorpusError(f"no usable utterances: every row of {label_csv} lacks its WAV in {wav_dir}")
    counted = Counter(u.label for u in utterances)
    return Mer2023Corpus(label_csv, wav_dir, utterances, {c: counted[c] for c in MER2023_CLASSES}, problems)

