"""What a new user hits in the first five minutes: audio as soundfile hands it over, predict(path),
--version and grouped --help, one-line warnings naming the flag, train.log's last lines, skipped
manifest rows, an --output file written after the first batch, and the model folder's metadata."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from training_fixtures import tiny_config

import lpmn_fast
from lpmn_fast.data.manifest import read_rows
from lpmn_fast.data.problems import CorpusWarning
from lpmn_fast.inference import InputError
from lpmn_fast.inference.audio import to_mono_16k
from lpmn_fast.training import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus):
    """A trained tiny LPMN run, with train.log."""
    root = tmp_path_factory.mktemp("first")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("lpmn_fast.training.corpus.load_corpus", lambda config: corpus)
        train(tiny_config(root))
    return root / "run"


@pytest.fixture(scope="module")
def stereo(tmp_path_factory, corpus):
    """A stereo 22.05 kHz file (the channels differ) made from two utterances of the corpus."""
    wave = np.concatenate([soundfile.read(u.path, dtype="float32")[0] for u in corpus.utterances[:2]])
    path = tmp_path_factory.mktemp("audio") / "stereo.wav"
    soundfile.write(path, np.stack([wave, 0.3 * wave[::-1]], axis=1)[::2], 8000)  # 8 kHz: resampled too
    return path


# ---- audio layouts and predict(path) ----------------------------------------------------------

def test_soundfile_layout_gives_the_transposed_arrays_label(run_dir, stereo):
    predictor = lpmn_fast.load(run_dir)
    w, sr = soundfile.read(stereo)  # (samples, channels), float64
    assert w.ndim == 2 and w.shape[1] == 2
    as_read = predictor.predict(w, sr)
    transposed = predictor.predict(w.T, sr)  # (channels, samples), torchaudio's layout
    assert as_read.label == transposed.label
    assert as_read.probabilities == transposed.probabilities
    assert as_read.duration_s == pytest.approx(w.shape[0] / sr)
    pipeline = predictor(w, sr, top_k=None)  # the pipeline-style call takes the same layout
    assert pipeline[0]["label"] == as_read.label


def test_predict_takes_a_path(run_dir, stereo):
    predictor = lpmn_fast.load(run_dir)
    by_path = predictor.predict(stereo)
    assert by_path.probabilities == predictor.predict_file(stereo).probabilities
    assert by_path.explanation is not None
    w, sr = soundfile.read(stereo, dtype="float32")
    for c, p in predictor.predict(w, sr).probabilities.items():  # decoded the same way up to rounding
        assert by_path.probabilities[c] == pytest.approx(p, abs=1e-4)
    assert predictor(str(stereo), top_k=1)[0]["label"] == by_path.label
    with pytest.raises(InputError, match="sample_rate"):
        predictor.predict(w)
    with pytest.raises(InputError, match="missing.wav"):
        predictor.predict(stereo.parent / "missing.wav")


def test_two_dimensional_layouts():
    torch.manual_seed(0)
    wave = torch.randn(3, 1600)
    expected = wave.mean(0)
    torch.testing.assert_close(to_mono_16k(wave, 16000), expected)
    torch.testing.assert_close(to_mono_16k(wave.T.numpy(), 16000), expected)  # (samples, channels)
    torch.testing.assert_close(to_mono_16k(torch.randn(1600, 8), 16000).shape, torch.Size([1600]))
    with pytest.raises(InputError, match="neither dimension"):
        to_mono_16k(torch.randn(9, 1600), 16000)
    with pytest.warns(UserWarning, match=r"ambiguous: read as \(channels, samples\) = \(4, 6\)"):
        assert to_mono_16k(torch.randn(4, 6), 16000).shape == (6,)


# ---- command lines ------------------------------------------------------------------------------

def _run(main, argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit:
        main(argv)
    return exit.value.code, out.getvalue()


@pytest.mark.parametrize("module", ["train", "predict", "experiment", "demo"])
def test_every_command_has_version(module):
    import importlib

    main = importlib.import_module(f"lpmn_fast.{module}").main
    code, text = _run(main, ["--version"])
    assert code == 0 and text.startswith(f"lpmn-{module} {lpmn_fast.__version__} (torch ")


def test_help_in_groups_with_one_style_of_choices():
    from lpmn_fast import experiment, predict, train
    from lpmn_fast.training import TrainConfig

    _, text = _run(train.main, ["--help"])
    assert text.startswith("usage: lpmn-train [--config FILE] [--FLAG VALUE ...]\n")
    for _, title in train.FLAG_GROUPS:
        assert f"\n{title}:\n" in text
    assert "one of ('" not in text and "one of {fbank,hf,hubert}" in text
    parser = train.build_parser()  # no flag lost: one per TrainConfig field
    dests = {a.dest for a in parser._actions}
    assert {f.name for f in TrainConfig.__dataclass_fields__.values()} <= dests
    _, text = _run(experiment.main, ["--help"])
    assert "\ntraining (as lpmn-train): data and protocol:\n" in text and "--head " not in text
    _, text = _run(predict.main, ["--help"])
    for _, title in predict.FLAG_GROUPS:
        assert f"\n{title}:\n" in text
    assert "{auto,triton,torch}" in text and "num_frames" in text


def test_warnings_are_one_line_naming_the_flag():
    """As a command shows them (a fresh interpreter: pytest records warnings instead of showing them)."""
    code = ("import warnings\n"
            "from lpmn_fast.cli import readable_warnings\n"
            "from lpmn_fast.data.problems import CorpusWarning\n"
            "with readable_warnings('lpmn-train'):\n"
            "    warnings.warn('2 problem(s) in labels:\\n  a.csv:3: missing file\\n(skipped; pass strict=True to "
            "make these errors)', CorpusWarning)\n"
            "    warnings.warn('plain', UserWarning)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ("lpmn-train: warning (CorpusWarning): 2 problem(s) in labels: a.csv:3: missing file "
                           "(skipped; pass --strict to make these errors)\nlpmn-train: warning: plain\n")


# ---- train.log, manifests -----------------------------------------------------------------------

def test_train_log_ends_with_the_test_results_and_stops(run_dir, tmp_path, use_corpus):
    text = (run_dir / "train.log").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"test LPMN-8 (best epoch {metrics['best_epoch']} on valid ua): WA {metrics['test']['wa']:.4f}" in text
    assert f"test LPMN-8-4 (best epoch" in text and f"results in {run_dir}" in text
    result = train(tiny_config(tmp_path, stop_after_steps=3))
    assert result["interrupted"]
    assert "stopped after step 3 as asked" in (tmp_path / "run" / "train.log").read_text()


def test_blank_and_empty_manifest_rows_are_counted(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.wav,angry\n\n,\nb.wav,sad\n , \n")
    with pytest.warns(CorpusWarning, match=r"3 blank or all-empty row\(s\) skipped \(line 3, 4, 6\)"):
        _, rows = read_rows(manifest)
    assert [line for line, _ in rows] == [2, 5]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "a.wav", "label": "angry"}\n\n{"path": "b.wav", "label": "sad"}\n')
    with pytest.warns(CorpusWarning, match=r"1 blank or all-empty row\(s\) skipped \(line 2\)"):
        read_rows(jsonl)


# ---- lpmn-predict --output ----------------------------------------------------------------------

def test_output_is_written_after_the_first_batch(run_dir, corpus, tmp_path, monkeypatch):
    """Killed after its first batch, a run leaves that batch's rows on disk (not only after 30 s)."""
    from lpmn_fast import predict
    from lpmn_fast.inference.table import OutputTable

    files = [str(u.path) for u in corpus.utterances[:6]]
    out = tmp_path / "labels.csv"
    writes = []
    real_write = OutputTable.write

    def write(self):
        real_write(self)
        writes.append(out.read_text().count("\n") - 1)  # data rows on disk
        if len(writes) == 1:
            raise KeyboardInterrupt  # killed right after the first write

    monkeypatch.setattr(OutputTable, "write", write)
    with pytest.raises(KeyboardInterrupt):
        predict.main([str(run_dir), *files, "--output", str(out), "--batch-size", "2", "--no-progress"])
    assert writes[0] == 2  # one batch
    rows = out.read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("file,label,")


def test_output_table_flushes_every_n_rows(tmp_path):
    from lpmn_fast.inference.table import OutputTable

    class Item:
        def __init__(self, n):
            self.key = f"f{n}"

    path = tmp_path / "t.jsonl"
    table = OutputTable(path, ["a", "b"], flush_seconds=3600, flush_rows=3, first_rows=2)
    lines = []
    for n in range(7):
        table.add(Item(n), {"file": f"f{n}", "label": "a", "probabilities": {"a": 1.0, "b": 0.0}})
        lines.append(len(path.read_text().splitlines()) if path.exists() else 0)
    assert lines == [0, 2, 2, 2, 5, 5, 5]  # after the first batch (2), then every 3 rows


# ---- the model folder ---------------------------------------------------------------------------

def test_config_has_id2label_and_the_card_a_working_snippet(run_dir, corpus):
    from lpmn_fast.models.card import base_model

    folder = run_dir / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {str(i): c for i, c in enumerate(config["classes"])}
    assert config["label2id"] == {c: i for i, c in enumerate(config["classes"])}
    card = (folder / "README.md").read_text()
    assert "path/to/this/folder" not in card and f'lpmn_fast.load("{folder.as_posix()}")' in card
    snippet = card.split("```python\n")[1].split("```")[0]
    with contextlib.redirect_stdout(io.StringIO()):
        exec(snippet.replace("speech.wav", str(corpus.utterances[0].path)), {})
    assert base_model(config["backbone"]) is None  # fbank: trained from scratch
    assert base_model({"type": "hf", "source": "facebook/hubert-large-ll60k", "path": None}) == \
        "facebook/hubert-large-ll60k"
    assert base_model({"type": "hubert", "source": "/models/hubert", "path": "/models/hubert"}) is None
