"""load_iemocap on fake trees in the release's format: labels, speakers, broken parts, count check."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile

from lpmn_fast.data.iemocap import RELEASE_COUNTS, load_iemocap
from lpmn_fast.data.problems import CorpusError, CorpusWarning

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def _block(utt_id: str, code: str, start: float) -> str:
    return (f"[{start:.4f} - {start + 1.5:.4f}]\t{utt_id}\t{code}\t[2.5000, 3.0000, 3.5000]\n"
            "C-E2:\tNeutral;\t()\nC-E3:\tAnger;\tFrustration;\t()\n"
            "A-E3:\tval 3; act 2; dom  2;\t()\nA-F1:\tval 3; act 3; dom  3;\t(curious)\n\n")


def _write_dialog(root: Path, session: int, dialog: str, entries: list[tuple[str, str]], *,
                  missing: tuple[str, ...] = (), corrupt: tuple[str, ...] = (), extra: str = "") -> None:
    """Label file for ``dialog`` with (utterance suffix, label code) entries, and their WAVs."""
    session_dir = root / f"Session{session}"
    label_dir = session_dir / "dialog" / "EmoEvaluation"
    label_dir.mkdir(parents=True, exist_ok=True)
    text = HEADER + "".join(_block(f"{dialog}_{suffix}", code, 2.0 * i) for i, (suffix, code) in enumerate(entries))
    (label_dir / f"{dialog}.txt").write_text(text + extra)
    wav_dir = session_dir / "sentences" / "wav" / dialog
    wav_dir.mkdir(parents=True, exist_ok=True)
    for suffix, _ in entries:
        wav = wav_dir / f"{dialog}_{suffix}.wav"
        if suffix in missing:
            continue
        if suffix in corrupt:
            wav.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
        else:
            soundfile.write(wav, np.zeros(160), 16000, subtype="PCM_16")


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "IEMOCAP_full_release"
    _write_dialog(root, 1, "Ses01F_impro01", [
        ("F000", "neu"), ("M000", "exc"), ("F001", "hap"), ("M001", "xxx"), ("F002", "fru"), ("M002", "oth"),
        ("F003", "ang"), ("M003", "sad"), ("F004", "sur"), ("M004", "fea"), ("F005", "dis"),
    ])
    # A real release also has evaluator subfolders and, on some copies, macOS "._" litter: not label files.
    categorical = root / "Session1" / "dialog" / "EmoEvaluation" / "Categorical"
    categorical.mkdir()
    (categorical / "Ses01F_impro01_e2_cat.txt").write_text("[1.0 - 2.0]\tSes01F_impro01_F009\tang\t[1, 2, 3]\n")
    (root / "Session1" / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt").write_bytes(b"\x00\x05\x16\x07[binary")
    _write_dialog(root, 2, "Ses02M_script01_1", [("M000", "ang"), ("F000", "sad"), ("M001", "neu"), ("F001", "exc")],
                  missing=("M001",), corrupt=("F001",), extra="this line is not a label line\n% nor this one\n")
    _write_dialog(root, 3, "Ses03F_impro05a", [("M000", "hap"), ("F000", "neu")])
    return root


EXPECTED = {  # utt_id: (label, session, speaker) of the kept, readable utterances
    "Ses01F_impro01_F000": ("neutral", 1, "Ses01F"),
    "Ses01F_impro01_M000": ("happy", 1, "Ses01M"),  # exc merged into happy; the M speaker in an F dialog
    "Ses01F_impro01_F001": ("happy", 1, "Ses01F"),
    "Ses01F_impro01_F003": ("angry", 1, "Ses01F"),
    "Ses01F_impro01_M003": ("sad", 1, "Ses01M"),
    "Ses02M_script01_1_M000": ("angry", 2, "Ses02M"),
    "Ses02M_script01_1_F000": ("sad", 2, "Ses02F"),
    "Ses03F_impro05a_M000": ("happy", 3, "Ses03M"),
    "Ses03F_impro05a_F000": ("neutral", 3, "Ses03F"),
}


def test_fake_tree_parses_to_the_right_utterances_with_warnings(tree):
    with pytest.warns(CorpusWarning, match="2 problem"):
        corpus = load_iemocap(tree)
    got = {u.utt_id: (u.label, u.session, u.speaker) for u in corpus.utterances}
    assert got == EXPECTED
    assert [u.utt_id for u in corpus.utterances][:3] == ["Ses01F_impro01_F000", "Ses01F_impro01_M000",
                                                         "Ses01F_impro01_F001"]  # file order
    for u in corpus.utterances:
        dialog = u.utt_id.rsplit("_", 1)[0]
        assert u.path == tree / f"Session{u.session}" / "sentences" / "wav" / dialog / f"{u.utt_id}.wav"
        assert u.path.is_file() and u.valence is None
    assert corpus.counts == {"neutral": 2, "happy": 3, "angry": 2, "sad": 2}
    assert corpus.dropped == {"dis": 1, "fea": 1, "fru": 1, "oth": 1, "sur": 1, "xxx": 1}
    assert len(corpus.warnings) == 2
    assert "missing audio file" in corpus.warnings[0] and "Ses02M_script01_1_M001.wav" in corpus.warnings[0]
    assert "corrupt" in corpus.warnings[1] and "Ses02M_script01_1_F001.wav" in corpus.warnings[1]
    assert corpus.expected_counts is None and corpus.counts_match is None  # 3 sessions: not the release


def test_strict_mode_raises_naming_every_broken_file(tree):
    with pytest.raises(CorpusError) as info:
        load_iemocap(tree, strict=True)
    assert "Ses02M_script01_1_M001.wav" in str(info.value) and "Ses02M_script01_1_F001.wav" in str(info.value)


def test_unknown_code_malformed_line_wrong_session_and_duplicate_are_reported(tmp_path):
    root = tmp_path / "odd"
    _write_dialog(root, 1, "Ses01F_impro01", [("F000", "neu"), ("M000", "zzz")],
                  extra="[1.0 - broken\tSes01F_impro01_F007\n")
    _write_dialog(root, 2, "Ses01F_impro02", [("F000", "ang")])  # session 1 name under Session2
    _write_dialog(root, 3, "Ses03M_impro01", [("F000", "sad")])
    label_file = root / "Session3" / "dialog" / "EmoEvaluation" / "Ses03M_impro01.txt"
    label_file.write_text(label_file.read_text() + _block("Ses03M_impro01_F000", "sad", 9.0))
    with pytest.raises(CorpusError) as info:
        load_iemocap(root, strict=True)
    message = str(info.value)
    assert "unknown label 'zzz'" in message and "Ses01F_impro01.txt:" in message
    assert "malformed label line" in message
    assert "'Ses01F_impro02_F000'" in message and "Ses02" in message
    assert "duplicate utterance Ses03M_impro01_F000" in message
    with pytest.warns(CorpusWarning):
        corpus = load_iemocap(root)
    assert [u.utt_id for u in corpus.utterances] == ["Ses01F_impro01_F000", "Ses03M_impro01_F000"]


def test_release_count_check_applies_only_to_a_release_like_tree(tree):
    for session in (4, 5):
        _write_dialog(tree, session, f"Ses0{session}F_impro01", [("F000", "neu")])
    with pytest.warns(CorpusWarning, match="differ from the expected"):
        corpus = load_iemocap(tree)
    assert corpus.expected_counts == RELEASE_COUNTS and corpus.counts_match is False
    assert any("1708" in w and "5531" in w for w in corpus.warnings)
    with pytest.raises(CorpusError, match="differ from the expected"):
        load_iemocap(tree, strict=True, check_audio=False)
    # Counts the tree really has pass; no check at all passes too.
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorpusWarning)
        matched = load_iemocap(tree, check_audio=False,
                               expected_counts={"neutral": 5, "happy": 4, "angry": 2, "sad": 2})
        assert matched.counts_match is True
        assert load_iemocap(tree, check_audio=False, expected_counts=None).counts_match is None
    # The synthetic corpus has 5 sessions too, and its manifest turns the release check off.
    (tree / "synthetic_manifest.json").write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorpusWarning)
        assert load_iemocap(tree, check_audio=False).expected_counts is None


def test_class_subset(tree):
    corpus = load_iemocap(tree, classes=("happy", "sad"), check_audio=False, expected_counts=None)
    assert {u.label for u in corpus.utterances} == {"happy", "sad"}
    assert corpus.counts == {"happy": 4, "sad": 2}  # unchecked audio: the corrupt happy WAV counts
    assert corpus.dropped["ang"] == 2 and corpus.dropped["neu"] == 3
    with pytest.raises(ValueError, match="unknown IEMOCAP classes"):
        load_iemocap(tree, classes=("frustrated",))


def test_missing_root_and_root_without_sessions_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*Session1"):
        load_iemocap(tmp_path / "nowhere")
    (tmp_path / "empty" / "Sessions").mkdir(parents=True)
    with pytest.raises(CorpusError, match="no session folders.*Session1 ... Session5"):
        load_iemocap(tmp_path / "empty")
