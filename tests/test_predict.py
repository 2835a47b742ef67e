"""What a user does after training: load the exported model, predict files and waveforms, explain.

Covers the Python API (lpmn_fast.load, Predictor.predict), chunking of long inputs, resampling
and mono mixing, the explanation's definitions, and lpmn-predict with good and bad files.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional
from training_fixtures import save_tiny_hubert, write_tiny_corpus

import lpmn_fast
import lpmn_fast.training.corpus as training_corpus
from lpmn_fast.inference import InputError, Predictor
from lpmn_fast.inference.chunks import centred_weights, frame_chunks, run_chunked
from lpmn_fast.models import SERModel
from lpmn_fast.predict import main as predict_main
from lpmn_fast.training import make_config, resolve, train
from lpmn_fast.training.build import build_model

TINY = dict(fbank_mel_bins=16, encoder_hidden=16, num_prototypes=8, top_k=4, tau=0.2, lr=1e-2, batch_size=4,
            epochs=1, probe_epochs=2, kmeans_frames=500, progress=False, test_session=3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus):
    """A trained tiny LPMN run (it exports model/ and model-probe/)."""
    root = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training_corpus, "load_corpus", lambda config: corpus)
        train(make_config(**TINY, cache_dir=str(root / "cache"), run_dir=str(root / "run")))
    return root / "run"


def _long_wave(corpus, n=6) -> torch.Tensor:
    return torch.cat([torch.from_numpy(soundfile.read(u.path, dtype="float32")[0]) for u in corpus.utterances[:n]])


def _write(path, data, rate=16000):
    soundfile.write(path, np.asarray(data, dtype=np.float32), rate)
    return path


def test_training_exports_loadable_models(run_dir, corpus):
    assert (run_dir / "model" / "config.json").is_file() and (run_dir / "model-probe" / "config.json").is_file()
    predictor = lpmn_fast.load(run_dir)  # a run directory: its probed model
    assert predictor.source.endswith("model-probe") and predictor.classes == list(corpus.classes)
    assert predictor.model.head.classifier.in_features == predictor.model.head.selected.numel() == TINY["top_k"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert predictor.model.head.selected.tolist() == metrics["probe"]["selected"]


@pytest.mark.parametrize("which", ["model", "model-probe"])
def test_prediction_equals_the_model_on_training_features(run_dir, corpus, which):
    predictor = lpmn_fast.load(run_dir / which)
    model = SERModel.from_pretrained(run_dir / which)
    wave = torch.from_numpy(soundfile.read(corpus.utterances[0].path, dtype="float32")[0])
    p = predictor.predict(wave, 16000)
    feats = model.backbone.prepare(wave)[None]
    logits = model(feats, torch.tensor([feats.shape[1]])).logits[0]
    expected = torch.softmax(logits, -1)
    torch.testing.assert_close(torch.tensor([p.probabilities[c] for c in predictor.classes]), expected)
    assert p.label == predictor.classes[int(expected.argmax())]
    assert p.num_frames == feats.shape[1] and p.duration_s == pytest.approx(wave.numel() / 16000)


def test_other_rates_and_channels_are_resampled_and_mixed(run_dir, corpus):
    predictor = lpmn_fast.load(run_dir)
    wave = _long_wave(corpus, 2)
    reference = predictor.predict(wave, 16000)
    stereo = predictor.predict(torch.stack([wave, wave]), 16000)
    assert stereo.probabilities == reference.probabilities
    at_44k = torchaudio.functional.resample(wave, 16000, 44100)
    resampled = predictor.predict(at_44k.numpy(), 44100)
    assert resampled.num_frames == reference.num_frames
    for c in predictor.classes:  # a resampling round trip changes the audio a little, the decision not
        assert resampled.probabilities[c] == pytest.approx(reference.probabilities[c], abs=0.05)


@pytest.mark.parametrize("head", ["lpmn", "ap", "mp"])
def test_chunked_long_input_equals_one_pass(tmp_path, corpus, head):
    """fbank models: whole-file fbank + encoder chunks with receptive-field context + exact pooling merge."""
    torch.manual_seed(0)
    model = build_model(resolve(make_config(**TINY, head=head, run_dir=str(tmp_path))), 4).eval()
    wave = _long_wave(corpus, 3)
    one = run_chunked(model, wave, 10**6, soft_evidence=True)
    for chunk in (3, 50):  # 3 < the encoder's receptive context of 4 frames each side
        many = run_chunked(model, wave, chunk, soft_evidence=True)
        assert many.num_frames == one.num_frames
        torch.testing.assert_close(many.pooled, one.pooled)
        torch.testing.assert_close(many.logits, one.logits)
        if head == "lpmn":
            assert torch.equal(many.frame_index, one.frame_index)
            torch.testing.assert_close(many.soft_evidence, one.soft_evidence)
    feats = model.backbone.prepare(wave)[None]
    torch.testing.assert_close(one.logits, model(feats, torch.tensor([feats.shape[1]])).logits[0])


def test_hubert_chunks_cover_every_frame_once(tmp_path):
    """HuBERT chunks are an approximation (attention sees the window), but frame-aligned: a file that
    fits one chunk is the training computation, and chunked frames line up with it."""
    hubert = save_tiny_hubert(tmp_path / "hubert")
    torch.manual_seed(0)
    c = resolve(make_config(**TINY, backbone="hubert", hubert_path=str(hubert), hubert_layers=2,
                            hubert_finetune_layers=[2], run_dir=str(tmp_path)))
    model = build_model(c, 4).eval()
    wave = torch.randn(16000) * 0.1
    T = model.backbone.frame_count(wave.numel())
    whole = torch.cat([x for _, x in frame_chunks(model.backbone, wave, 10**6)])
    feats = model.backbone.prepare(wave)[None]
    torch.testing.assert_close(whole, model.backbone(feats, torch.tensor([T]))[0])
    starts, parts = zip(*frame_chunks(model.backbone, wave, 17, context_s=0.3))
    assert list(starts) == list(range(0, T, 17)) and sum(p.shape[0] for p in parts) == T
    # With a context as long as the file, every window is the whole file again: exact.
    full_context = torch.cat([x for _, x in frame_chunks(model.backbone, wave, 17, context_s=10.0)])
    torch.testing.assert_close(full_context, whole)


def test_explanation_splits_the_logits_among_frames(run_dir, corpus):
    predictor = lpmn_fast.load(run_dir / "model", top_k=3)
    wave = _long_wave(corpus, 3)
    p = predictor.predict(wave, 16000)
    e = p.explanation
    result = run_chunked(predictor.model, wave, predictor.chunk_frames)
    centred = result.logits - predictor.model.head.classifier.bias
    centred = centred - centred.mean()
    torch.testing.assert_close(e.evidence.sum(0), centred, rtol=1e-5, atol=1e-5)  # exact decomposition
    won = set(result.frame_index.tolist())
    assert all((e.evidence[t] == 0).all() for t in range(e.num_frames) if t not in won)
    assert e.evidence_soft.shape == e.evidence.shape == (p.num_frames, 4)
    # evidence_soft[t] is the centred logit of frame t alone, minus the bias.
    t = p.num_frames // 2
    wc = centred_weights(predictor.model.head)
    x = torch.cat([x for _, x in frame_chunks(predictor.model.backbone, wave, 10**6)])
    single = predictor.model.head.mil(x[t:t + 1][None]).pooled[0]
    torch.testing.assert_close(e.evidence_soft[t], wc @ single)
    # top prototypes: by Fisher importance, each with its winning frame
    importance = predictor.model.head.mil.fisher_importance
    listed = [q["prototype"] for q in e.top_prototypes]
    assert listed == torch.topk(importance, 3).indices.tolist() and e.ranked_by == "fisher"
    assert all(q["frame"] == int(result.frame_index[q["prototype"]]) for q in e.top_prototypes)
    saved = e.to_dict()
    assert len(saved["evidence"]["angry"]) == p.num_frames and saved["winning_frames"] == e.winning_frames()


def test_bad_waveforms_raise_input_errors(run_dir):
    predictor = lpmn_fast.load(run_dir)
    cases = [(torch.zeros(0), "empty"), (torch.zeros(16000), r"all-silent audio \(peak amplitude 0 <"),
             (-3e-5 * torch.ones(16000), r"peak amplitude 3e-05 <"), (torch.full((16000,), float("nan")), "NaN"),
             (torch.randn(16000).index_fill_(0, torch.tensor([7]), float("nan")), "NaN"),
             (torch.randn(16000).index_fill_(0, torch.tensor([9]), -float("inf")), "Inf"),
             (torch.randn(100) * 0.1, "too short"), (torch.randn(2, 3, 4), "must be"), ]
    for wave, message in cases:
        with pytest.raises(InputError, match=message):
            predictor.predict(wave, 16000)
    with pytest.raises(InputError, match="sample_rate"):
        predictor.predict(torch.randn(16000), 0)


def test_cli_table_json_and_explanations(run_dir, corpus, tmp_path, capsys):
    files = [str(u.path) for u in corpus.utterances[:2]]
    assert predict_main([str(run_dir), *files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["file", "label", *corpus.classes] and len(lines) == 3
    predictor = lpmn_fast.load(run_dir)
    expected = predictor.predict_file(files[0], explain=False)
    assert lines[1].split()[1] == expected.label

    assert predict_main([str(run_dir), *files, "--json", "--explain", str(tmp_path / "ex")]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in records] == files and records[0]["label"] == expected.label
    for r in records:
        saved = json.loads(open(r["explanation_json"]).read())
        assert saved["label"] == r["label"] and len(saved["explanation"]["top_prototypes"]) == 4  # K' = 4
        with open(r["explanation_png"], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_each_bad_file_and_runs_the_others(run_dir, corpus, tmp_path, capsys):
    good = str(corpus.utterances[0].path)
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all")
    bad = {
        "missing": (str(tmp_path / "missing.wav"), "not found"),
        "not audio": (str(text), "cannot decode"),
        "empty": (str(_write(tmp_path / "empty.wav", [])), "empty"),
        "silent": (str(_write(tmp_path / "silent.wav", np.zeros(16000))), "all-silent"),
        "short": (str(_write(tmp_path / "short.wav", 0.1 * np.ones(200), 16000)), "too short"),
    }
    code = predict_main([str(run_dir), bad["missing"][0], good, *(p for p, _ in list(bad.values())[1:]), "--json"])
    assert code == 1
    captured = capsys.readouterr()
    records = {r["file"]: r for r in json.loads(captured.out)}
    assert "label" in records[good]
    for name, (path, message) in bad.items():
        assert message in records[path]["error"] and path in records[path]["error"], name
        assert any(path in line and message in line for line in captured.err.splitlines()), name
    assert "5 of 6 files failed" in captured.err


def test_cli_on_a_pooling_model_predicts_without_explanation(tmp_path, corpus, capsys):
    torch.manual_seed(0)
    build_model(resolve(make_config(**TINY, head="ap", run_dir=str(tmp_path))), 4).save_pretrained(
        tmp_path / "ap", list(corpus.classes))
    wav = str(corpus.utterances[0].path)
    assert predict_main([str(tmp_path / "ap"), wav, "--explain", str(tmp_path / "ex")]) == 0
    captured = capsys.readouterr()
    assert "explanations need a prototype (LPMN) head" in captured.err
    saved = json.loads((tmp_path / "ex" / f"{corpus.utterances[0].path.stem}.json").read_text())
    assert "explanation" not in saved and "'ap' head" in saved["explanation_unsupported"]
    assert not (tmp_path / "ex" / f"{corpus.utterances[0].path.stem}.png").exists()


def test_cli_model_errors_and_module_entry_point(tmp_path, run_dir, corpus, capsys):
    assert predict_main([str(tmp_path / "nowhere"), "a.wav"]) == 2
    assert "does not exist" in capsys.readouterr().err
    done = subprocess.run([sys.executable, "-m", "lpmn_fast.predict", str(run_dir / "model"),
                           str(corpus.utterances[1].path), "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["label"] in corpus.classes


def test_predictor_wraps_a_model_in_memory(tmp_path, corpus):
    torch.manual_seed(0)
    model = build_model(resolve(make_config(**TINY, run_dir=str(tmp_path))), 4)
    predictor = Predictor(model, list(corpus.classes))  # no Fisher estimate yet: ranked by contribution
    p = predictor.predict(_long_wave(corpus, 1), 16000)
    assert p.explanation.ranked_by == "contribution" and sum(p.probabilities.values()) == pytest.approx(1)
