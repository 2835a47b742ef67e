"""What every corpus loader returns: a list of labelled utterances."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The standard IEMOCAP 4-class set (excited merged into happy); the synthetic corpus uses it too.
IEMOCAP_CLASSES = ("neutral", "happy", "angry", "sad")
# MER2023's six discrete classes.
MER2023_CLASSES = ("neutral", "anger", "happiness", "sadness", "worry", "surprise")


@dataclass(frozen=True)
class Utterance:
    """One labelled utterance of a corpus.

    utt_id: unique name (IEMOCAP style, e.g. "Ses01F_impro01_F000"); path: its WAV file;
    label: a class name from the corpus's class tuple; session: 1-based session (IEMOCAP) or 0;
    speaker: speaker id (IEMOCAP: session + gender, e.g. "Ses01F"); valence: MER2023 and manifests
    with a valence column; start/end: the span of ``path`` in seconds (manifests; None = whole
    file); split: "train", "valid" or "test" from a manifest's split column, else None.
    """

    utt_id: str
    path: Path
    label: str
    session: int = 0
    speaker: str = ""
    valence: float | None = None
    start: float | None = None
    end: float | None = None
    split: str | None = None
