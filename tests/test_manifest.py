"""Your own corpus: manifests (CSV, TSV, JSON Lines), class folders, label maps, classes, splits,
and every problem named with its file and line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from lpmn_fast.data.audio import read_utterance
from lpmn_fast.data.folder import load_folder
from lpmn_fast.data.manifest import load_manifest, manifest_columns, parse_classes, parse_label_map, write_manifest
from lpmn_fast.data.problems import CorpusError, CorpusWarning
from lpmn_fast.protocol import make_split
from lpmn_fast.protocol.splits import fold_ids
from lpmn_fast.training import make_config, resolve

LABELS = ("angry", "happy", "neutral", "sad")


def _tone(path: Path, seconds: float = 0.5, rate: int = 16000, freq: float = 220.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave.astype(np.float32), rate)
    return path


@pytest.fixture
def clips(tmp_path) -> Path:
    """tmp/clips/c<i>.wav, 12 files; speakers s1..s6, sessions 1..3, labels cycling LABELS."""
    for i in range(12):
        _tone(tmp_path / "clips" / f"c{i}.wav", 0.4 + 0.05 * i, freq=200 + 40 * (i % 4), seed=i)
    return tmp_path


def _rows(n: int = 12) -> list[dict]:
    return [{"path": f"clips/c{i}.wav", "label": LABELS[i % 4], "speaker": f"s{i % 6 + 1}",
             "session": str(i % 6 // 2 + 1), "valence": f"{(i % 4) - 1.5:.1f}"} for i in range(n)]


def _write(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({c: r[c] for c in columns if c in r}) + "\n" for r in rows))
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        path.write_text("\n".join([sep.join(columns)] + [sep.join(str(r.get(c, "")) for c in columns)
                                                          for r in rows]) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_manifest_formats_read_alike(clips, suffix):
    corpus = load_manifest(_write(clips / f"m{suffix}", _rows()))
    assert corpus.classes == LABELS  # sorted labels found
    assert [u.utt_id for u in corpus.utterances] == [f"c{i}" for i in range(12)]
    assert [u.path for u in corpus.utterances] == [clips / "clips" / f"c{i}.wav" for i in range(12)]
    assert [u.label for u in corpus.utterances] == [LABELS[i % 4] for i in range(12)]
    assert [u.session for u in corpus.utterances] == [i % 6 // 2 + 1 for i in range(12)]
    assert [u.speaker for u in corpus.utterances] == [f"s{i % 6 + 1}" for i in range(12)]
    assert [u.valence for u in corpus.utterances] == [(i % 4) - 1.5 for i in range(12)]
    assert corpus.counts == {c: 3 for c in LABELS} and corpus.warnings == []
    assert manifest_columns(clips / f"m{suffix}") == ("path", "label", "speaker", "session", "valence")


def test_write_manifest_round_trips(clips, tmp_path):
    corpus = load_manifest(_write(clips / "m.csv", _rows()))
    for suffix in (".csv", ".tsv", ".jsonl"):
        again = load_manifest(write_manifest(corpus.utterances, tmp_path / "out" / f"copy{suffix}"))
        assert again.utterances == corpus.utterances


def test_classes_fix_the_order_and_label_map_renames_merges_drops(clips):
    rows = _rows()
    rows[0]["label"], rows[1]["label"], rows[2]["label"] = "exc", "fru", "ANGRY"
    path = _write(clips / "m.csv", rows)
    corpus = load_manifest(path, label_map="exc:happy,fru:-,ANGRY:angry", classes="sad,neutral,happy,angry")
    assert corpus.classes == ("sad", "neutral", "happy", "angry")
    assert corpus.dropped == {"fru": 1} and len(corpus.utterances) == 11
    assert corpus.utterances[0].label == "happy" and corpus.utterances[1].label == "angry"
    assert corpus.counts == {"sad": 3, "neutral": 2, "happy": 3, "angry": 3}
    assert parse_label_map({"a": "b", "c": None}) == {"a": "b", "c": None}
    assert parse_classes(["x", "y"]) == ("x", "y") and parse_classes(None) is None


@pytest.mark.parametrize("text, match", [("exc", "is not OLD:NEW"), ("a:b,a:c", "names 'a' twice"),
                                         (":x", "needs a label on both sides")])
def test_bad_label_maps_are_named(text, match):
    with pytest.raises(ValueError, match=match):
        parse_label_map(text)


def test_bad_classes_are_named():
    with pytest.raises(ValueError, match="repeats"):
        parse_classes("a,b,a")
    with pytest.raises(ValueError, match="names no class"):
        parse_classes(" , ")


# Each label problem (row 3 of the manifest, i.e. line 4 after the header) stops the load naming FILE:4.
@pytest.mark.parametrize("change, match", [
    ({"label": ""}, "empty label"),
    ({"label": "bored"}, "unknown label 'bored'"),
    ({"path": ""}, "empty path"),
    ({"valence": "high"}, "valence 'high'"),
    ({"valence": "nan"}, "valence 'nan'"),
    ({"valence": ""}, "empty valence"),
    ({"session": ""}, "empty session"),
    ({"split": "holdout"}, "split 'holdout'"),
    ({"start": "0.3", "end": "0.2"}, r"start 0.3 s >= end 0.2 s"),
    ({"start": "-1"}, "start -1 s .* is negative"),
    ({"start": "x"}, "start 'x'"),
    ({"path": "clips/c0.wav"}, r"duplicate row .* is already at .*m.csv:2"),
    ({"id": "c0"}, r"duplicate id 'c0' .*first at .*m.csv:2"),
])
def test_label_problems_stop_and_name_file_and_line(clips, change, match):
    rows = [{**r, "split": "train", "start": "", "end": "", "id": ""} for r in _rows()]
    rows[2].update(change)
    path = _write(clips / "m.csv", rows)
    with pytest.raises(CorpusError, match=match) as error:
        load_manifest(path, classes=",".join(LABELS), strict=False)
    assert f"{path}:4" in str(error.value)


def test_missing_columns_and_empty_or_malformed_files_are_named(clips):
    with pytest.raises(CorpusError, match=r"m.csv:1: manifest lacks required column\(s\) \['label'\]"):
        load_manifest(_write(clips / "m.csv", _rows(), ["path", "speaker"]))
    (clips / "e.csv").write_text("")
    with pytest.raises(CorpusError, match="is empty"):
        load_manifest(clips / "e.csv")
    (clips / "h.csv").write_text("path,label\n")
    with pytest.raises(CorpusError, match="header but no rows"):
        load_manifest(clips / "h.csv")
    (clips / "w.csv").write_text("path,label\nclips/c0.wav,angry,extra\n")
    with pytest.raises(CorpusError, match=r"w.csv:2: 3 fields but the header has 2"):
        load_manifest(clips / "w.csv")
    (clips / "j.jsonl").write_text('{"path": "clips/c0.wav", "label": "angry"}\n\n{"path": oops}\n')
    with pytest.raises(CorpusError, match=r"j.jsonl:3: not valid JSON"):
        load_manifest(clips / "j.jsonl")
    (clips / "l.jsonl").write_text('["clips/c0.wav", "angry"]\n')
    with pytest.raises(CorpusError, match=r"l.jsonl:1: .* one object per line"):
        load_manifest(clips / "l.jsonl")
    (clips / "b.csv").write_text("path,label,session,fold\n")
    with pytest.raises(CorpusError, match="not both"):
        load_manifest(clips / "b.csv")
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        load_manifest(clips / "nope.csv")
    with pytest.raises(ValueError, match="unknown format '.xlsx'"):
        load_manifest(clips / "m.xlsx")


def test_audio_problems_skip_the_row_with_a_warning_or_stop_with_strict(clips):
    (clips / "clips" / "c3.wav").write_bytes(b"not audio at all")
    rows = _rows()
    rows[5]["path"] = "clips/missing.wav"
    rows.append({**rows[0], "path": "clips/c0.wav", "start": "0.1", "end": "9.0"})  # past the end of a 0.4 s file
    rows[0].update(start="", end="")
    path = _write(clips / "m.csv", rows, list(rows[-1]))
    with pytest.warns(CorpusWarning, match="3 problem"):
        corpus = load_manifest(path)
    assert len(corpus.utterances) == 10 and len(corpus.warnings) == 3
    assert any("corrupt or unreadable audio file" in w and f"{path}:5" in w for w in corpus.warnings)
    assert any("missing audio file" in w and f"{path}:7" in w for w in corpus.warnings)
    assert any("end 9 s" in w and "past the end" in w and f"{path}:14" in w for w in corpus.warnings)
    with pytest.raises(CorpusError, match="3 problem"):
        load_manifest(path, strict=True)


def test_segments_are_cut_out_of_longer_files(clips):
    rows = [{"path": "clips/c11.wav", "label": "angry", "start": "0.1", "end": "0.3"},
            {"path": "clips/c11.wav", "label": "sad", "start": "0.3", "end": ""},
            {"path": "clips/c10.wav", "label": "sad", "start": "", "end": "0.2"}]
    corpus = load_manifest(_write(clips / "m.csv", rows))
    assert [u.utt_id for u in corpus.utterances] == ["c11_0.1-0.3", "c11_0.3-end", "c10_0-0.2"]
    whole, _ = soundfile.read(clips / "clips" / "c11.wav", dtype="float32")
    torch.testing.assert_close(read_utterance(corpus.utterances[0]), torch.from_numpy(whole[1600:4800]))
    torch.testing.assert_close(read_utterance(corpus.utterances[1]), torch.from_numpy(whole[4800:]))
    assert read_utterance(corpus.utterances[2]).numel() == 3200


def test_segments_get_their_own_feature_cache_entries(clips, tmp_path):
    from lpmn_fast.models import FbankBackbone
    from lpmn_fast.training.features import cache_features

    rows = [{"path": "clips/c11.wav", "label": "angry", "start": "0.1", "end": "0.3"},
            {"path": "clips/c11.wav", "label": "sad", "start": "0.3", "end": "0.5"}]
    utterances = load_manifest(_write(clips / "m.csv", rows)).utterances
    backbone = FbankBackbone(num_mel_bins=16)
    first = cache_features(backbone, utterances, tmp_path / "cache", progress=False)
    again = cache_features(backbone, utterances, tmp_path / "cache", progress=False)  # read back
    for u, a, b in zip(utterances, first, again):
        expected = backbone.prepare(read_utterance(u))
        torch.testing.assert_close(a, expected)
        torch.testing.assert_close(b, expected)
    assert first[0].shape == (9, 16) and not torch.equal(first[0], first[1])


def test_repeated_stems_get_ids_from_their_relative_paths(tmp_path):
    _tone(tmp_path / "a" / "x.wav")
    _tone(tmp_path / "b" / "x.wav")
    corpus = load_manifest(_write(tmp_path / "m.csv", [{"path": "a/x.wav", "label": "sad"},
                                                      {"path": str(tmp_path / "b" / "x.wav"), "label": "sad"}]))
    assert [u.utt_id for u in corpus.utterances] == ["a__x", "b__x"]


def test_string_sessions_are_numbered_in_sorted_order(clips):
    rows = _rows()
    for r in rows:
        r["session"] = {"1": "Mon", "2": "Tue", "3": "Wed"}[r["session"]]
    corpus = load_manifest(_write(clips / "m.csv", rows))
    assert corpus.sessions == {1: "Mon", 2: "Tue", 3: "Wed"}
    assert [u.session for u in corpus.utterances] == [i % 6 // 2 + 1 for i in range(12)]


def test_class_folders(tmp_path):
    root = tmp_path / "emotions"
    for i, label in enumerate(["sad", "angry", "angry", "neutral", "neutral", "neutral"]):
        _tone(root / label / ("deep" if i == 5 else "") / f"{label}{i}.{'flac' if i % 2 else 'wav'}", seed=i)
    (root / "angry" / "notes.txt").write_text("not audio")
    (root / ".hidden").mkdir()
    _tone(root / "stray.wav")
    corpus = load_folder(root)
    assert corpus.classes == ("angry", "neutral", "sad")
    assert corpus.counts == {"angry": 2, "neutral": 3, "sad": 1}
    assert [u.utt_id for u in corpus.utterances] == ["angry1", "angry2", "neutral5", "neutral3", "neutral4", "sad0"]
    assert any("stray.wav" in w for w in corpus.warnings)
    merged = load_folder(root, label_map="sad:-,angry:negative")
    assert merged.classes == ("negative", "neutral") and merged.dropped == {"sad": 1}
    with pytest.raises(CorpusError, match=r"unknown label 'sad' at .*sad0.wav"):
        load_folder(root, classes="angry,neutral")
    (root / "sad" / "sad0.wav").write_bytes(b"broken")
    with pytest.warns(CorpusWarning, match="sad0.wav"):
        assert len(load_folder(root).utterances) == 5
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    with pytest.raises(CorpusError, match="no class folders"):
        load_folder(tmp_path / "flat")


# ---- splits ---------------------------------------------------------------------------------

def test_split_column(clips):
    rows = _rows()
    for i, r in enumerate(rows):
        r["split"] = ("train", "train", "validation", "test")[i % 4]
    corpus = load_manifest(_write(clips / "m.csv", rows))
    split = make_split("column", corpus.utterances, 1)
    assert [u.utt_id for u in split.valid] == ["c2", "c6", "c10"] and len(split.train) == 6 and len(split.test) == 3
    assert split.protocol.startswith("column(") and fold_ids("column", corpus.utterances) == [1]
    rows[3]["split"] = rows[7]["split"] = rows[11]["split"] = "train"
    with pytest.raises(ValueError, match=r"leaves \['test'\] empty"):
        make_split("column", load_manifest(_write(clips / "m.csv", rows)).utterances, 1)


def test_loso_over_the_session_column(clips):
    corpus = load_manifest(_write(clips / "m.csv", _rows()))
    assert fold_ids("loso", corpus.utterances) == [1, 2, 3]
    split = make_split("loso", corpus.utterances, 2)
    assert {u.session for u in split.test} == {2} and {u.session for u in split.train} == {1, 3}
    split = make_split("loso-speaker", corpus.utterances, 2)
    assert {u.speaker for u in split.valid} == {"s3"} and {u.speaker for u in split.test} == {"s4"}


def test_loso_without_sessions_is_refused(clips):
    corpus = load_manifest(_write(clips / "m.csv", _rows(), ["path", "label"]))
    with pytest.raises(ValueError, match="needs sessions"):
        make_split("loso", corpus.utterances, 1)


def test_speaker_kfold_keeps_test_speakers_out_of_training(tmp_path):
    rows = []
    for i in range(60):
        _tone(tmp_path / f"u{i}.wav", 0.1, seed=i)
        rows.append({"path": f"u{i}.wav", "label": LABELS[i % 4], "speaker": f"spk{i % 10}"})
    corpus = load_manifest(_write(tmp_path / "m.csv", rows))
    tested = []
    for fold in fold_ids("speaker-kfold", corpus.utterances, folds=5):
        split = make_split("speaker-kfold", corpus.utterances, fold, folds=5, seed=3)
        train, valid, test = ({u.speaker for u in part} for part in (split.train, split.valid, split.test))
        assert train and valid and test and not (train & test) and not (train & valid) and not (valid & test)
        assert len(split.train) + len(split.valid) + len(split.test) == 60
        tested += [u.utt_id for u in split.test]
    assert sorted(tested) == sorted(u.utt_id for u in corpus.utterances)  # every utterance tested once
    assert make_split("speaker-kfold", corpus.utterances, 2, seed=3) == make_split("speaker-kfold", corpus.utterances,
                                                                                    2, seed=3)
    with pytest.raises(ValueError, match="at least 7 speakers"):
        make_split("speaker-kfold", corpus.utterances[:6], 1)


# ---- config ---------------------------------------------------------------------------------

def _resolve(tmp_path, **fields):
    return resolve(make_config(run_dir=str(tmp_path / "run"), **fields))


def test_default_split_and_valence_follow_the_manifest_columns(clips, tmp_path):
    rows = _rows()
    assert _resolve(tmp_path, data="manifest", manifest=str(_write(clips / "a.csv", rows))).split == "loso"
    c = _resolve(tmp_path, data="manifest", manifest=str(_write(clips / "b.csv", rows, ["path", "label", "speaker"])))
    assert c.split == "speaker-kfold" and c.valence_weight == 0
    c = _resolve(tmp_path, data="manifest", manifest=str(_write(clips / "c.csv", rows, ["path", "label"])))
    assert c.split == "kfold"
    assert _resolve(tmp_path, data="manifest", manifest=str(clips / "a.csv")).valence_weight == 1.0
    split_rows = [{**r, "split": "train"} for r in rows]
    assert _resolve(tmp_path, data="manifest", manifest=str(_write(clips / "d.csv", split_rows))).split == "column"
    assert _resolve(tmp_path, data="folder", data_dir=str(clips)).split == "kfold"


@pytest.mark.parametrize("fields, match", [
    ({"data": "manifest"}, "needs manifest"),
    ({"data": "folder"}, "needs data_dir"),
    ({"data": "synthetic", "classes": "a,b"}, "classes and label_map apply to"),
    ({"data": "synthetic", "manifest": "x.csv"}, "read by data 'manifest' only"),
    ({"data": "manifest", "manifest": "MANIFEST", "split": "column"}, "needs a manifest with a split column"),
    ({"data": "manifest", "manifest": "NOSESSION", "split": "loso"}, "needs sessions"),
    ({"data": "manifest", "manifest": "NOSESSION", "valence_weight": 1.0}, "has no valence labels"),
    ({"data": "manifest", "manifest": "MANIFEST", "label_map": "oops"}, "is not OLD:NEW"),
])
def test_bad_own_data_configs_are_named(clips, tmp_path, fields, match):
    manifests = {"MANIFEST": str(_write(clips / "m.csv", _rows())),
                 "NOSESSION": str(_write(clips / "n.csv", _rows(), ["path", "label"]))}
    fields = {k: manifests.get(v, v) if isinstance(v, str) else v for k, v in fields.items()}
    with pytest.raises(ValueError, match=match):
        _resolve(tmp_path, **fields)


def test_a_clean_manifest_warns_nothing(clips):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_manifest(_write(clips / "m.csv", _rows()))
