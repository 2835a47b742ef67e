"""The synthetic corpus: deterministic, balanced, in the IEMOCAP layout, with localized emotion cues."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from lpmn_fast.data.corpus import IEMOCAP_CLASSES
from lpmn_fast.data.iemocap import load_iemocap
from lpmn_fast.data.synthetic import (
    MANIFEST_NAME, CorpusExistsError, SyntheticConfig, generate_corpus, main, read_segments,
)

# Tiny but with the default durations: 2 sessions x 2 speakers x 8 utterances, 8 per class.
SMALL = dict(sessions=2, utterances_per_speaker=8, progress=False)
SR = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return generate_corpus(tmp_path_factory.mktemp("synthetic") / "corpus", seed=3, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _labels(root: Path) -> dict[str, str]:
    return {u.utt_id: u.label for u in load_iemocap(root).utterances}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(corpus, tmp_path):
    again = generate_corpus(tmp_path / "again", seed=3, **SMALL)
    assert _files(again) == _files(corpus)
    other = _files(generate_corpus(tmp_path / "other", seed=4, **SMALL))
    reference = _files(corpus)
    wavs = [name for name in reference if name.endswith(".wav")]
    assert sorted(wavs) == sorted(n for n in other if n.endswith(".wav"))  # same layout, new audio
    assert all(other[name] != reference[name] for name in wavs)
    assert other["segments.json"] != reference["segments.json"]


def test_labels_are_balanced_per_speaker_and_overall(corpus, tmp_path):
    utts = load_iemocap(corpus).utterances
    assert Counter(u.label for u in utts) == {c: 8 for c in IEMOCAP_CLASSES}
    for speaker in {u.speaker for u in utts}:
        assert Counter(u.label for u in utts if u.speaker == speaker) == {c: 2 for c in IEMOCAP_CLASSES}
    # 5 per speaker does not divide by 4 classes: still within one of balanced overall.
    odd = load_iemocap(generate_corpus(tmp_path / "odd", sessions=2, utterances_per_speaker=5, max_duration_s=2.5,
                                       progress=False))
    assert len(odd.utterances) == 20
    assert max(odd.counts.values()) - min(odd.counts.values()) <= 1


def test_durations_and_segments_lie_in_range(corpus):
    cfg = SyntheticConfig()
    segments = read_segments(corpus)
    loaded = load_iemocap(corpus).utterances
    assert set(segments) == {u.utt_id for u in loaded}
    for u in loaded:
        duration = soundfile.info(u.path).frames / SR
        assert cfg.min_duration_s - 1 / SR <= duration <= cfg.max_duration_s + 1 / SR
        seg = segments[u.utt_id]
        if u.label == "neutral":
            assert seg is None
            continue
        assert seg["label"] == u.label
        assert 0 < seg["start_s"] < seg["end_s"] < duration
        assert cfg.min_segment_s - 1 / SR <= seg["end_s"] - seg["start_s"] <= cfg.max_segment_s + 1 / SR


def test_iemocap_layout_parses_back_with_sessions_speakers_and_times(corpus):
    loaded = load_iemocap(corpus, strict=True)
    assert loaded.warnings == [] and loaded.expected_counts is None  # synthetic: no release count check
    assert len(loaded.utterances) == 2 * 2 * 8
    assert {u.speaker for u in loaded.utterances} == {"Ses01F", "Ses01M", "Ses02F", "Ses02M"}
    for u in loaded.utterances:
        assert u.session == int(u.utt_id[3:5]) and u.speaker == u.utt_id[:5] + u.utt_id[-4]
        dialog = u.utt_id.rsplit("_", 1)[0]
        assert u.path == corpus / f"Session{u.session}" / "sentences" / "wav" / dialog / f"{u.utt_id}.wav"
    # Each label line's [start - end] spans its WAV's duration.
    for label_file in corpus.glob("Session*/dialog/EmoEvaluation/*.txt"):
        lines = label_file.read_text().splitlines()
        assert lines[0].startswith("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]")
        for line in lines:
            if line.startswith("["):
                span, utt_id, code, vad = line.split("\t")
                start, end = (float(t) for t in span.strip("[]").split(" - "))
                wav = next(corpus.glob(f"Session*/sentences/wav/*/{utt_id}.wav"))
                assert abs((end - start) - soundfile.info(wav).frames / SR) < 2e-4
                assert len(json.loads(vad)) == 3 and code in {"neu", "hap", "ang", "sad"}


def _frames(x: np.ndarray, size: int = 640, hop: int = 320) -> np.ndarray:
    n = 1 + (len(x) - size) // hop
    return np.stack([x[i * hop:i * hop + size] for i in range(n)])


def _f0(frames: np.ndarray) -> np.ndarray:
    """Autocorrelation pitch (Hz) per 40 ms frame, searched in 70-400 Hz."""
    frames = frames - frames.mean(1, keepdims=True)
    spec = np.fft.rfft(frames * np.hanning(frames.shape[1]), 2 * frames.shape[1])
    ac = np.fft.irfft(np.abs(spec) ** 2)[:, : frames.shape[1]]
    lo, hi = SR // 400, SR // 70
    return SR / (lo + ac[:, lo:hi].argmax(1))


def _tilt(spectrum: np.ndarray) -> float:
    """Spectral tilt (dB): 2-6 kHz power over 0-1 kHz power, summed over frames (loud frames weigh most)."""
    freqs = np.fft.rfftfreq(2 * (spectrum.shape[1] - 1), 1 / SR)
    high, low = spectrum[:, (freqs >= 2000) & (freqs < 6000)].sum(), spectrum[:, freqs < 1000].sum()
    return 10 * np.log10(high / low)


def _cues(root: Path) -> dict[str, np.ndarray]:
    """Per utterance: segment minus rest of level (dB), spectral tilt (dB) and median F0 (ratio),
    over speech frames; plus the utterance's overall level (dB). Neutral: the middle 0.6 s."""
    segments = read_segments(root)
    rows: dict[str, list] = {c: [] for c in IEMOCAP_CLASSES}
    for u in load_iemocap(root).utterances:
        x, _ = soundfile.read(u.path)
        frames = _frames(x)
        power = (frames**2).mean(1)
        speech = power > 0.1 * np.median(power)  # drop pauses and the noise floor
        seg = segments[u.utt_id] or {"start_s": len(x) / SR / 2 - 0.3, "end_s": len(x) / SR / 2 + 0.3}
        t = (np.arange(len(frames)) * 320 + 320) / SR  # frame centres
        inside = (t > seg["start_s"] + 0.02) & (t < seg["end_s"] - 0.02)
        spectrum = np.abs(np.fft.rfft(frames * np.hanning(640))) ** 2
        f0 = _f0(frames)
        a, b = inside & speech, ~inside & speech
        rows[u.label].append([10 * np.log10(power[a].mean() / power[b].mean()), _tilt(spectrum[a]) - _tilt(spectrum[b]),
                              np.median(f0[a]) / np.median(f0[b]), 10 * np.log10(power.mean())])
    return {c: np.array(v) for c, v in rows.items()}


def test_emotion_is_local_segment_differs_while_utterance_levels_overlap(corpus):
    cues = _cues(corpus)
    level, tilt, pitch, overall = (0, 1, 2, 3)
    mean = {c: v.mean(0) for c, v in cues.items()}
    # Neutral "segments" match the rest of their utterance.
    assert abs(mean["neutral"][level]) < 1.5 and abs(mean["neutral"][pitch] - 1) < 0.05
    # angry: louder, brighter, higher; sad: quieter, darker, lower; happy: higher pitch. (Tilt is
    # the noisiest measure on 8 utterances a class, hence the comparison of the two extremes.)
    assert mean["angry"][level] > 4 and mean["angry"][pitch] > 1.15
    assert mean["sad"][level] < -4 and mean["sad"][pitch] < 0.9
    assert mean["angry"][tilt] > mean["neutral"][tilt] > mean["sad"][tilt]
    assert mean["angry"][tilt] - mean["sad"][tilt] > 6
    assert mean["happy"][pitch] > 1.15
    # Nuisance (level jitter) makes the utterance's overall level a poor cue: the loudest class's
    # quietest utterance is quieter than the quietest class's loudest.
    assert cues["angry"][:, overall].min() < cues["sad"][:, overall].max()
    assert cues["angry"][:, overall].min() < cues["neutral"][:, overall].max()


def test_happy_segments_have_wide_pitch_movement(corpus):
    segments = read_segments(corpus)
    spread = {"happy": [], "angry": []}
    for u in load_iemocap(corpus).utterances:
        if u.label in spread:
            x, _ = soundfile.read(u.path)
            seg = segments[u.utt_id]
            frames = _frames(x[int(seg["start_s"] * SR):int(seg["end_s"] * SR)])
            power = (frames**2).mean(1)
            f0 = _f0(frames[power > 0.3 * power.max()])
            spread[u.label].append(np.log2(np.percentile(f0, 90) / np.percentile(f0, 10)))
    assert np.median(spread["happy"]) > 2 * np.median(spread["angry"])  # rising-falling vs flat


def test_regenerating_is_a_no_op_and_a_different_corpus_is_refused(corpus, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*")}
    assert generate_corpus(corpus, seed=3, **SMALL) == corpus
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*")} == before
    with pytest.raises(CorpusExistsError, match="seed=3 \\(asked 4\\)"):
        generate_corpus(corpus, seed=4, **SMALL)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CorpusExistsError, match="not empty"):
        generate_corpus(foreign, **SMALL)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_an_interrupted_run_is_completed(corpus, tmp_path):
    root = tmp_path / "interrupted"
    generate_corpus(root, seed=3, **SMALL)
    manifest = (root / MANIFEST_NAME).read_text()
    (root / MANIFEST_NAME).unlink()  # as if killed before the last write...
    (root / ".synthetic_in_progress.json").write_text(
        json.dumps({k: v for k, v in json.loads(manifest).items() if k != "summary"}))
    next(root.rglob("*.wav")).unlink()  # ...and before the last WAV
    generate_corpus(root, seed=3, **SMALL)
    assert _files(root) == _files(corpus)


@pytest.mark.parametrize("bad, message", [
    (dict(difficulty=1.5), "difficulty"),
    (dict(utterances_per_speaker=0), "utterances_per_speaker"),
    (dict(min_duration_s=1.0), "min_duration_s"),
    (dict(min_segment_s=0.8, max_segment_s=0.5), "min_segment_s"),
])
def test_bad_parameters_are_named(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        generate_corpus(tmp_path / "bad", progress=False, **bad)
    assert not (tmp_path / "bad").exists()


def test_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--out", "--seed", "--sessions", "--utterances-per-speaker", "--min-duration", "--max-duration",
                 "--min-segment", "--max-segment", "--difficulty", "--utterances-per-dialog", "--quiet"):
        assert flag in help_text
    assert main(["--out", str(tmp_path / "cli"), "--sessions", "1", "--utterances-per-speaker", "4",
                 "--max-duration", "2.5", "--quiet"]) == 0
    assert "8 utterances" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "cli"), "--seed", "1", "--quiet"])
    assert exit_info.value.code == 2 and "different synthetic corpus" in capsys.readouterr().err
