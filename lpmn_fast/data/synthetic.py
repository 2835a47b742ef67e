"""The embedded synthetic localized-emotion corpus, written in the IEMOCAP layout.

Every utterance is neutral speech except one short segment (min_segment_s..max_segment_s, at a
random position) whose prosody carries the label (see speech_synth.PROSODY): angry is louder,
higher, flatter, faster and brighter; happy is higher with wide rising-falling contours; sad is
quieter, lower, slower, darker and breathier; neutral utterances have no such segment.
Per-utterance nuisance (level, pitch, rate, channel tilt, noise floor) and speaker differences
make utterance-level averages weak cues, so the segment is the reliable one.

Layout under ``root`` (what lpmn_fast.data.iemocap.load_iemocap reads):
    SessionN/sentences/wav/<dialog>/<utt_id>.wav       16 kHz mono 16-bit PCM
    SessionN/dialog/EmoEvaluation/<dialog>.txt         IEMOCAP label lines
    segments.json               utt_id -> {"label", "start_s", "end_s"} of the segment; null for neutral
    synthetic_manifest.json     the generator's parameters (written last: its presence means complete)

    python -m lpmn_fast.data.synthetic --out data/synthetic
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .atomic import write_text_atomic
from .audio import write_wav
from .corpus import IEMOCAP_CLASSES
from .iemocap import SYNTHETIC_MANIFEST as MANIFEST_NAME  # by it the loader tells this corpus from the release
from .speech_synth import SAMPLE_RATE, blend, random_nuisance, random_voice, render_utterance

GENERATOR_VERSION = 1  # bump whenever the same parameters would give different audio
SEGMENTS_NAME = "segments.json"
_IN_PROGRESS_NAME = ".synthetic_in_progress.json"  # parameters of a run that has not finished yet
_MARGIN_S = 0.3  # room before and after the segment for the leading/trailing silence and pauses
# IEMOCAP's label code, evaluator category and a typical [valence, activation, dominance] per class.
_IEMOCAP_STYLE = {
    "neutral": ("neu", "Neutral", (2.5, 2.5, 2.5)),
    "happy": ("hap", "Happiness", (4.0, 3.0, 3.0)),
    "angry": ("ang", "Anger", (1.5, 4.0, 4.0)),
    "sad": ("sad", "Sadness", (1.5, 2.0, 2.0)),
}


class CorpusExistsError(FileExistsError):
    """The output folder holds something other than this exact synthetic corpus."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic corpus (all durations in seconds).

    difficulty in [0, 1] sets both the strength of the emotional modification
    (1.25 - 0.75 * difficulty of the full PROSODY profiles) and the spread of per-utterance
    nuisance variation (0.5 + difficulty times the base spreads).
    """

    seed: int = 0
    sessions: int = 5
    utterances_per_speaker: int = 40
    min_duration_s: float = 2.0
    max_duration_s: float = 6.0
    min_segment_s: float = 0.3
    max_segment_s: float = 1.0
    difficulty: float = 0.5
    utterances_per_dialog: int = 10

    @property
    def strength(self) -> float:
        return 1.25 - 0.75 * self.difficulty

    @property
    def nuisance(self) -> float:
        return 0.5 + self.difficulty

    def check(self) -> None:
        """Raise ValueError naming the first inconsistent parameter."""
        if not 1 <= self.sessions <= 99:
            raise ValueError(f"sessions must be in 1..99, got {self.sessions}")
        if not 1 <= self.utterances_per_speaker <= 1000:
            raise ValueError(f"utterances_per_speaker must be in 1..1000, got {self.utterances_per_speaker}")
        if not 2 <= self.utterances_per_dialog <= 200:
            raise ValueError(f"utterances_per_dialog must be in 2..200, got {self.utterances_per_dialog}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {self.difficulty}")
        if not 0.1 <= self.min_segment_s <= self.max_segment_s:
            raise ValueError(f"need 0.1 <= min_segment_s <= max_segment_s, got {self.min_segment_s}, "
                             f"{self.max_segment_s}")
        if not self.max_segment_s + 2 * _MARGIN_S <= self.min_duration_s <= self.max_duration_s <= 60:
            raise ValueError(f"need max_segment_s + {2 * _MARGIN_S} <= min_duration_s <= max_duration_s <= 60, got "
                             f"{self.max_segment_s}, {self.min_duration_s}, {self.max_duration_s}")


@dataclass(frozen=True)
class _Planned:
    """One utterance before rendering."""

    index: int
    utt_id: str
    session: int
    dialog: str
    gender: str
    label: str
    duration_s: float
    segment: tuple[float, float]  # sample-aligned start and end (s) of the segment
    dialog_span: tuple[float, float]  # position inside the dialog, for the label line
    vad: tuple[float, float, float]


def _plan(cfg: SyntheticConfig) -> tuple[list[_Planned], dict]:
    """Every utterance's name, label, duration and segment, and the speakers' voices, from cfg.seed."""
    master = np.random.default_rng(cfg.seed)
    n = cfg.utterances_per_speaker
    voices, labels = {}, {}
    for s in range(cfg.sessions):
        for g_i, gender in enumerate("FM"):
            speaker = f"Ses{s + 1:02d}{gender}"
            voices[speaker] = random_voice(master, gender)
            # Consecutive runs through the class cycle: every speaker within one of balanced, the
            # corpus too.
            offset = (2 * s + g_i) * n
            cycle = [IEMOCAP_CLASSES[(offset + i) % len(IEMOCAP_CLASSES)] for i in range(n)]
            labels[speaker] = [cycle[i] for i in master.permutation(n)]
    per_dialog = max(1, cfg.utterances_per_dialog // 2)  # from each speaker
    planned = []
    for s in range(cfg.sessions):
        for d in range(math.ceil(n / per_dialog)):
            lead = "F" if d % 4 < 2 else "M"  # the speaker wearing markers, first letter of the dialog name
            kind = f"impro{d // 2 + 1:02d}" if d % 2 == 0 else f"script{d // 2 + 1:02d}_1"
            dialog = f"Ses{s + 1:02d}{lead}_{kind}"
            t = 0.0
            picks = [(g, i) for i in range(d * per_dialog, min(n, (d + 1) * per_dialog)) for g in "FM"]
            for gender, i in picks:
                index = len(planned)
                rng = np.random.default_rng([cfg.seed, index, 0])
                duration = rng.uniform(cfg.min_duration_s, cfg.max_duration_s)
                seg_len = rng.uniform(cfg.min_segment_s, cfg.max_segment_s)
                start = rng.uniform(_MARGIN_S, duration - seg_len - _MARGIN_S)
                # Align to samples so the recorded times are exactly where the audio changes.
                duration = round(duration * SAMPLE_RATE) / SAMPLE_RATE
                start = round(start * SAMPLE_RATE) / SAMPLE_RATE
                end = round((start + seg_len) * SAMPLE_RATE) / SAMPLE_RATE
                t += rng.uniform(0.3, 2.0)
                label = labels[f"Ses{s + 1:02d}{gender}"][i]
                vad = tuple(float(np.clip(v + rng.normal(0, 0.3), 1, 5)) for v in _IEMOCAP_STYLE[label][2])
                utt_id = f"{dialog}_{gender}{i - d * per_dialog:03d}"
                planned.append(_Planned(index, utt_id, s + 1, dialog, gender, label, duration, (start, end),
                                        (t, t + duration), vad))
                t += duration
    return planned, voices


def _render(cfg: SyntheticConfig, p: _Planned, voices: dict) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, p.index, 1])
    nuisance = random_nuisance(rng, cfg.nuisance)
    # Neutral utterances get a "segment" spoken neutrally, so every utterance has the same framing.
    prosody = blend(p.label, cfg.strength if p.label != "neutral" else 0.0)
    return render_utterance(rng, voices[f"Ses{p.session:02d}{p.gender}"], nuisance, p.duration_s, p.segment, prosody)


def _label_file(utts: list[_Planned]) -> str:
    """An EmoEvaluation file: header, then per utterance a label line and evaluator lines."""
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for p in sorted(utts, key=lambda p: p.dialog_span):
        code, category, _ = _IEMOCAP_STYLE[p.label]
        v, a, d = p.vad
        lines.append(f"[{p.dialog_span[0]:.4f} - {p.dialog_span[1]:.4f}]\t{p.utt_id}\t{code}\t"
                     f"[{v:.4f}, {a:.4f}, {d:.4f}]")
        lines += [f"C-E{e}:\t{category};\t()" for e in (2, 3, 4)] + [f"C-F1:\t{category};\t()"]
        lines += [f"A-E{e}:\tval {round(v)}; act {round(a)}; dom  {round(d)};\t()" for e in (3, 4)]
        lines.append("")
    return "\n".join(lines) + "\n"


def _wav_path(root: Path, session: int, utt_id: str) -> Path:
    return root / f"Session{session}" / "sentences" / "wav" / utt_id.rsplit("_", 1)[0] / f"{utt_id}.wav"


def _identity(cfg: SyntheticConfig) -> dict:
    return {"generator": "lpmn_fast.data.synthetic", "version": GENERATOR_VERSION, "params": asdict(cfg)}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _complete(root: Path, identity: dict) -> bool:
    """Whether root already holds this corpus; raise CorpusExistsError if it holds anything else."""
    manifest, marker = root / MANIFEST_NAME, root / _IN_PROGRESS_NAME
    if root.exists() and not root.is_dir():
        raise CorpusExistsError(f"{root} exists and is not a folder")
    for path in (manifest, marker):
        if path.exists():
            found = _read_json(path)
            if found is None or {k: found.get(k) for k in identity} != identity:
                differ = ", ".join(f"{k}={v!r} (asked {identity['params'][k]!r})"
                                   for k, v in ((found or {}).get("params") or {}).items()
                                   if identity["params"].get(k) != v)
                raise CorpusExistsError(f"{root} holds a different synthetic corpus ({path.name}: "
                                        f"{differ or 'unreadable or another generator version'}); "
                                        "choose another folder or delete this one")
            break
    else:
        if root.exists() and any(root.iterdir()):
            raise CorpusExistsError(f"{root} is not empty and holds no {MANIFEST_NAME}; refusing to write a "
                                    "synthetic corpus into it")
        return False
    if not manifest.exists():
        return False  # an interrupted run with the same parameters: generate again over it
    segments = _read_json(root / SEGMENTS_NAME)
    return segments is not None and all(_wav_path(root, int(u[3:5]), u).is_file() for u in segments)


def generate_corpus(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    sessions: int = 5,
    utterances_per_speaker: int = 40,
    min_duration_s: float = 2.0,
    max_duration_s: float = 6.0,
    min_segment_s: float = 0.3,
    max_segment_s: float = 1.0,
    difficulty: float = 0.5,
    utterances_per_dialog: int = 10,
    progress: bool = True,
) -> Path:
    """Write the synthetic corpus under ``root`` (IEMOCAP layout, see the module docstring); return root.

    2 * sessions speakers (one F, one M per session), utterances_per_speaker each, labels
    balanced (per speaker and overall, within one). Idempotent: a root that already holds the
    same corpus is left untouched; a root holding a different corpus or other files raises
    CorpusExistsError; an interrupted run is completed. Every file is written atomically.
    """
    cfg = SyntheticConfig(seed, sessions, utterances_per_speaker, min_duration_s, max_duration_s, min_segment_s,
                          max_segment_s, difficulty, utterances_per_dialog)
    cfg.check()
    root, identity = Path(root), _identity(cfg)
    if _complete(root, identity):
        return root
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(root / _IN_PROGRESS_NAME, json.dumps(identity, indent=2))

    planned, voices = _plan(cfg)
    counts = Counter(p.label for p in planned)
    if max(counts[c] for c in IEMOCAP_CLASSES) - min(counts[c] for c in IEMOCAP_CLASSES) > 1:
        raise RuntimeError(f"synthetic corpus labels are unbalanced: {dict(counts)}")
    for p in tqdm(planned, desc="synthetic corpus", unit="utt", disable=not progress):
        write_wav(_wav_path(root, p.session, p.utt_id), _render(cfg, p, voices).astype(np.float32), SAMPLE_RATE)
    for dialog in sorted({(p.session, p.dialog) for p in planned}):
        utts = [p for p in planned if (p.session, p.dialog) == dialog]
        write_text_atomic(root / f"Session{dialog[0]}" / "dialog" / "EmoEvaluation" / f"{dialog[1]}.txt",
                          _label_file(utts))
    segments = {p.utt_id: None if p.label == "neutral" else
                {"label": p.label, "start_s": p.segment[0], "end_s": p.segment[1]} for p in planned}
    write_text_atomic(root / SEGMENTS_NAME, json.dumps(segments, indent=1))
    summary = {"utterances": len(planned), "counts": {c: counts[c] for c in IEMOCAP_CLASSES},
               "hours": round(sum(p.duration_s for p in planned) / 3600, 4), "sample_rate": SAMPLE_RATE,
               "emotion_strength": cfg.strength, "nuisance_scale": cfg.nuisance}
    write_text_atomic(root / MANIFEST_NAME, json.dumps({**identity, "summary": summary}, indent=2))
    (root / _IN_PROGRESS_NAME).unlink()
    return root


def read_segments(root: str | os.PathLike) -> dict[str, dict | None]:
    """segments.json of a synthetic corpus: utt_id -> {"label", "start_s", "end_s"}, None for neutral."""
    path = Path(root) / SEGMENTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a synthetic corpus (generate_corpus)?")
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    d = SyntheticConfig()
    parser = argparse.ArgumentParser(prog="python -m lpmn_fast.data.synthetic",
                                     description="Write the synthetic localized-emotion corpus in the IEMOCAP layout.")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; must be empty, or hold "
                        "this same corpus, in which case nothing is done)")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    parser.add_argument("--sessions", type=int, default=d.sessions,
                        help=f"sessions, each with one female and one male speaker (default {d.sessions})")
    parser.add_argument("--utterances-per-speaker", type=int, default=d.utterances_per_speaker,
                        help=f"utterances per speaker, labels balanced (default {d.utterances_per_speaker})")
    parser.add_argument("--min-duration", type=float, default=d.min_duration_s,
                        help=f"shortest utterance in seconds (default {d.min_duration_s})")
    parser.add_argument("--max-duration", type=float, default=d.max_duration_s,
                        help=f"longest utterance in seconds (default {d.max_duration_s})")
    parser.add_argument("--min-segment", type=float, default=d.min_segment_s,
                        help=f"shortest emotional segment in seconds (default {d.min_segment_s})")
    parser.add_argument("--max-segment", type=float, default=d.max_segment_s,
                        help=f"longest emotional segment in seconds (default {d.max_segment_s})")
    parser.add_argument("--difficulty", type=float, default=d.difficulty,
                        help="0..1: higher means weaker emotional cues and more per-utterance nuisance variation "
                        f"(default {d.difficulty})")
    parser.add_argument("--utterances-per-dialog", type=int, default=d.utterances_per_dialog,
                        help=f"utterances per dialog, i.e. per label file (default {d.utterances_per_dialog})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        root = generate_corpus(args.out, seed=args.seed, sessions=args.sessions,
                               utterances_per_speaker=args.utterances_per_speaker, min_duration_s=args.min_duration,
                               max_duration_s=args.max_duration, min_segment_s=args.min_segment,
                               max_segment_s=args.max_segment, difficulty=args.difficulty,
                               utterances_per_dialog=args.utterances_per_dialog, progress=not args.quiet)
    except (ValueError, CorpusExistsError) as e:
        parser.exit(2, f"error: {e}\n")
    summary = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))["summary"]
    print(f"{root}: {summary['utterances']} utterances, {summary['hours'] * 60:.1f} min, {summary['counts']} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
