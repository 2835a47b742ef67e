"""load_mer2023 on a fake release folder: label spellings, valence, and errors naming the row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from lpmn_fast.data.corpus import MER2023_CLASSES
from lpmn_fast.data.mer2023 import load_mer2023
from lpmn_fast.data.problems import CorpusError, CorpusWarning

ROWS = [  # name, the release's spelling, valence
    ("sample_00000007", "neutral", "0.0"), ("sample_00000010", "angry", "-2.75"),
    ("sample_00000012", "happy", "1.5"), ("sample_00000021", "sad", "-1.25"),
    ("sample_00000033", "worried", "-0.5"), ("sample_00000042", "surprise", "0.75"),
    ("sample_00000050", "Happy", "2"),
]


def _release(tmp_path: Path, rows=ROWS, *, header="name,discrete,valence", bom=False,
             skip_wavs=()) -> tuple[Path, Path]:
    wav_dir = tmp_path / "wav"
    wav_dir.mkdir(exist_ok=True)
    for name, *_ in rows:
        if name not in skip_wavs:
            soundfile.write(wav_dir / f"{name}.wav", np.zeros(160), 16000, subtype="PCM_16")
    csv_path = tmp_path / "train-label.csv"
    text = header + "\n" + "".join(",".join(row) + "\n" for row in rows)
    csv_path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return csv_path, wav_dir


def test_spellings_map_to_the_canonical_classes_with_valence(tmp_path):
    csv_path, wav_dir = _release(tmp_path, bom=True)
    corpus = load_mer2023(csv_path, wav_dir)
    got = [(u.utt_id, u.label, u.valence) for u in corpus.utterances]
    assert got == [("sample_00000007", "neutral", 0.0), ("sample_00000010", "anger", -2.75),
                   ("sample_00000012", "happiness", 1.5), ("sample_00000021", "sadness", -1.25),
                   ("sample_00000033", "worry", -0.5), ("sample_00000042", "surprise", 0.75),
                   ("sample_00000050", "happiness", 2.0)]
    assert {u.label for u in corpus.utterances} == set(MER2023_CLASSES)
    assert corpus.counts == {"neutral": 1, "anger": 1, "happiness": 2, "sadness": 1, "worry": 1, "surprise": 1}
    assert all(u.path == wav_dir / f"{u.utt_id}.wav" and u.session == 0 for u in corpus.utterances)
    assert corpus.warnings == []


def test_unknown_or_misspelled_label_names_the_label_and_row(tmp_path):
    rows = ROWS[:2] + [("sample_00000099", "hapy", "1.0")]
    csv_path, wav_dir = _release(tmp_path, rows)
    with pytest.raises(CorpusError, match=r"unknown emotion label 'hapy' for 'sample_00000099' at .*train-label.csv:4"):
        load_mer2023(csv_path, wav_dir)


@pytest.mark.parametrize("valence", ["", "high", "nan"])
def test_bad_valence_names_the_row(tmp_path, valence):
    csv_path, wav_dir = _release(tmp_path, ROWS[:1] + [("sample_00000011", "sad", valence)])
    with pytest.raises(CorpusError, match="valence .* for 'sample_00000011' at .*train-label.csv:3"):
        load_mer2023(csv_path, wav_dir)


def test_missing_wav_warns_or_raises_in_strict_mode(tmp_path):
    csv_path, wav_dir = _release(tmp_path, skip_wavs=("sample_00000021",))
    with pytest.warns(CorpusWarning, match="sample_00000021.wav"):
        corpus = load_mer2023(csv_path, wav_dir)
    assert len(corpus.utterances) == len(ROWS) - 1 and corpus.counts["sadness"] == 0
    assert len(corpus.warnings) == 1 and "train-label.csv:5" in corpus.warnings[0]
    with pytest.raises(CorpusError, match="sample_00000021.wav"):
        load_mer2023(csv_path, wav_dir, strict=True)


def test_table_problems_are_errors(tmp_path):
    csv_path, wav_dir = _release(tmp_path, header="name,label,valence")
    with pytest.raises(CorpusError, match=r"lacks column\(s\) \['discrete'\]"):
        load_mer2023(csv_path, wav_dir)
    csv_path, wav_dir = _release(tmp_path, ROWS[:2] + [ROWS[0]])
    duplicate = r"duplicate name 'sample_00000007' at .*train-label.csv:4 \(first at line 2\)"
    with pytest.raises(CorpusError, match=duplicate):
        load_mer2023(csv_path, wav_dir)
    csv_path, wav_dir = _release(tmp_path, [])
    with pytest.raises(CorpusError, match="no rows"):
        load_mer2023(csv_path, wav_dir)
    with pytest.raises(FileNotFoundError, match="train-label.csv"):
        load_mer2023(tmp_path / "nope" / "train-label.csv", wav_dir)
    with pytest.raises(FileNotFoundError, match="audio folder"):
        load_mer2023(csv_path, tmp_path / "no-wavs")
