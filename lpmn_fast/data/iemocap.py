"""IEMOCAP (the user's ``IEMOCAP_full_release`` folder, or the synthetic corpus) as labelled utterances.

Labels come from the label lines of ``SessionN/dialog/EmoEvaluation/*.txt``:
    [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]
audio from ``SessionN/sentences/wav/<dialog>/<utt_id>.wav``. The standard 4-class set keeps
neutral, happy (excited merged in), angry and sad, scripted and improvised alike, and drops
frustration, surprise, fear, disgust, other and no-agreement (xxx). On the full release that gives
5531 utterances (neutral 1708, happy+excited 1636, angry 1103, sad 1084).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .audio import audio_problem
from .corpus import IEMOCAP_CLASSES, Utterance
from .problems import CorpusError, settle

# IEMOCAP's label codes -> class name; None = dropped from the 4-class set.
LABEL_CODES = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad",
               "fru": None, "sur": None, "fea": None, "dis": None, "oth": None, "xxx": None}
# What the full release gives with the standard 4-class set.
RELEASE_COUNTS = {"neutral": 1708, "happy": 1636, "angry": 1103, "sad": 1084}
RELEASE_SESSIONS = 5
SYNTHETIC_MANIFEST = "synthetic_manifest.json"  # written by lpmn_fast.data.synthetic
_LABEL_LINE = re.compile(r"^\[(\d+(?:\.\d+)?) - (\d+(?:\.\d+)?)\]\t(\S+)\t(\S+)\t\[[^\]]*\]\s*$")
_UTT_ID = re.compile(r"^Ses(\d{2})[FM]_\S+_([FM])\d{3}$")  # session, gender of the utterance's speaker
_SESSION_DIR = re.compile(r"^Session(\d+)$")


@dataclass
class IemocapCorpus:
    """The loaded corpus.

    utterances: in session, dialog-file and line order; counts: utterances per class (every class
    present, zeros included); dropped: label lines per dropped code (xxx, fru, ...);
    warnings: one message per skipped part; expected_counts: what the count check compared
    against (None: no check); counts_match: the check's outcome (None: no check).
    """

    root: Path
    utterances: list[Utterance]
    counts: dict[str, int]
    dropped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    expected_counts: dict[str, int] | None = None

    @property
    def counts_match(self) -> bool | None:
        return None if self.expected_counts is None else self.counts == self.expected_counts


def _session_dirs(root: Path) -> dict[int, Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"IEMOCAP root {root} does not exist or is not a folder "
                                "(expected IEMOCAP_full_release with Session1 ... Session5 inside)")
    sessions = {int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := _SESSION_DIR.match(p.name))}
    if not sessions:
        raise CorpusError(f"no session folders in {root}: expected Session1 ... Session5, each with "
                          "dialog/EmoEvaluation/*.txt and sentences/wav/<dialog>/<utterance>.wav")
    return dict(sorted(sessions.items()))


def _release_check(root: Path, sessions: dict, classes: tuple[str, ...]) -> dict[str, int] | None:
    """The release's counts when root looks like the full release (not the synthetic corpus)."""
    looks_like_release = (set(sessions) == set(range(1, RELEASE_SESSIONS + 1))
                          and not (root / SYNTHETIC_MANIFEST).exists() and tuple(classes) == IEMOCAP_CLASSES)
    return dict(RELEASE_COUNTS) if looks_like_release else None


def load_iemocap(
    root: str | os.PathLike,
    *,
    strict: bool = False,
    classes: tuple[str, ...] = IEMOCAP_CLASSES,
    expected_counts: dict[str, int] | None | str = "auto",
    check_audio: bool = True,
) -> IemocapCorpus:
    """Read the IEMOCAP label files under ``root`` and return the utterances of ``classes``.

    Every label line of ``SessionN/dialog/EmoEvaluation/*.txt`` (not the Categorical/, Attribute/
    subfolders) is read; other lines are ignored. Each kept utterance's WAV must exist and be
    readable (header check with soundfile.info, skipped with check_audio=False). Problems (missing
    or corrupt WAV, unknown label code, malformed label line, duplicate utterance, count mismatch)
    are skipped with a CorpusWarning and listed in ``warnings``; with ``strict=True`` they raise
    CorpusError. ``expected_counts``: "auto" checks the release's counts (5531 utterances) when
    root has Session1..Session5, no synthetic manifest and the default classes; a dict checks
    those counts; None checks nothing.
    """
    root = Path(root)
    unknown = [c for c in classes if c not in IEMOCAP_CLASSES]
    if unknown:
        raise ValueError(f"unknown IEMOCAP classes {unknown}; choose from {IEMOCAP_CLASSES}")
    sessions = _session_dirs(root)
    if expected_counts == "auto":
        expected_counts = _release_check(root, sessions, classes)
    elif isinstance(expected_counts, str):
        raise ValueError(f"expected_counts must be 'auto', None or a dict of counts, got {expected_counts!r}")
    problems: list[str] = []
    utterances: list[Utterance] = []
    dropped: Counter = Counter()
    seen: dict[str, Path] = {}
    for session, session_dir in sessions.items():
        label_dir = session_dir / "dialog" / "EmoEvaluation"
        label_files = sorted(p for p in label_dir.glob("*.txt") if not p.name.startswith("."))  # ._* = macOS litter
        if not label_files:
            problems.append(f"no label files {label_dir}/*.txt")
        for label_file in label_files:
            text = label_file.read_text(encoding="utf-8", errors="replace")
            for line_no, line in enumerate(text.splitlines(), 1):
                if not line.startswith("["):
                    continue  # header, evaluator lines (C-E2:, A-E3: ...), blank lines
                where = f"{label_file}:{line_no}"
                m = _LABEL_LINE.match(line)
                if m is None:
                    problems.append(f"malformed label line at {where}: {line.strip()!r}")
                    continue
                utt_id, code = m.group(3), m.group(4)
                if code not in LABEL_CODES:
                    problems.append(f"unknown label {code!r} for {utt_id} at {where}")
                    continue
                label = LABEL_CODES[code]
                if label is None or label not in classes:
                    dropped[code] += 1
                    continue
                ident = _UTT_ID.match(utt_id)
                if ident is None or int(ident.group(1)) != session:
                    problems.append(f"utterance name {utt_id!r} at {where} is not Ses{session:02d}<F|M>_..._<F|M>NNN")
                    continue
                if utt_id in seen:
                    problems.append(f"duplicate utterance {utt_id} at {where} (first in {seen[utt_id]})")
                    continue
                seen[utt_id] = label_file
                wav = session_dir / "sentences" / "wav" / label_file.stem / f"{utt_id}.wav"
                bad = audio_problem(wav) if check_audio else None
                if bad is not None:
                    problems.append(f"{bad} (labelled at {where})")
                    continue
                speaker = f"Ses{session:02d}{ident.group(2)}"
                utterances.append(Utterance(utt_id, wav, label, session=session, speaker=speaker))
    counted = Counter(u.label for u in utterances)
    counts = {c: counted[c] for c in classes}
    if expected_counts is not None and counts != dict(expected_counts):
        problems.append(f"class counts {counts} (total {sum(counts.values())}) differ from the expected "
                        f"{dict(expected_counts)} (total {sum(expected_counts.values())})")
    settle(problems, strict=strict, source=f"IEMOCAP tree {root}")
    if not utterances:
        raise CorpusError(f"no utterances of classes {classes} found under {root}")
    return IemocapCorpus(root, utterances, counts, dict(sorted(dropped.items())), problems,
                         None if expected_counts is None else dict(expected_counts))
