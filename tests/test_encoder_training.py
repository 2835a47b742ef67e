"""Every supported speech encoder family through what a user does: lpmn-train --backbone hf (two
epochs, from the exact feature cache), the exported model reloaded from its recorded source or from
its bundled copy, lpmn-predict and chunked inference. Tiny random encoders, tiny corpus."""

from __future__ import annotations

import json
import shutil

import pytest
import soundfile
import torch
from training_fixtures import save_tiny_encoder, write_tiny_corpus

import lpmn_fast
import lpmn_fast.training.corpus as training_corpus
from lpmn_fast.inference.chunks import frame_chunks, run_chunked
from lpmn_fast.models import SERModel
from lpmn_fast.predict import main as predict_main
from lpmn_fast.training import make_config, train

TINY = dict(num_prototypes=8, top_k=4, tau=0.2, lr=1e-2, batch_size=6, epochs=2, probe_epochs=2,
            kmeans_frames=500, progress=False, test_session=3, hf_layers=3)
# (family, stable layer norm, extra training fields): one variant per family, between them both
# block orders, layer weights, an all-frozen encoder and a bundled one.
CASES = {
    "hubert": ("hubert", False, {"hf_finetune_layers": [3]}),
    "wav2vec2": ("wav2vec2", True, {"hf_finetune_layers": [2, 3], "layer_weights": True}),
    "wavlm": ("wavlm", False, {"hf_finetune_layers": [3], "layer_weights": True, "bundle_backbone": True}),
    "data2vec-audio": ("data2vec-audio", False, {"hf_finetune_layers": []}),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, tmp_path_factory, corpus):
    """(encoder dir, run dir, training results) of a two-epoch LPMN run on one encoder family."""
    family, stable, extra = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    encoder = save_tiny_encoder(root / "encoder", family, stable)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training_corpus, "load_corpus", lambda config: corpus)
        results = train(make_config(**TINY, **extra, backbone="hf", hf_model=str(encoder),
                                    cache_dir=str(root / "cache"), run_dir=str(root / "run")))
    return request.param, encoder, root / "run", results


def test_two_epochs_train_and_export_the_encoder_record(trained):
    name, encoder, run_dir, results = trained
    family, _, extra = CASES[name]
    assert len(results["history"]) == 2 and 0 <= results["test"]["wa"] <= 1
    assert list((run_dir.parent / "cache" / "features").glob("*/*.safetensors"))  # the frozen part, cached
    record = json.loads((run_dir / "model" / "config.json").read_text())["backbone"]
    assert record["type"] == "hf" and record["family"] == family and record["num_layers"] == 3
    assert record["source"] == str(encoder) and record["path"] == str(encoder.resolve())
    assert record["finetune_layers"] == extra["hf_finetune_layers"]
    assert record["layer_weights"] == extra.get("layer_weights", False)
    assert ("bundled" in record) == extra.get("bundle_backbone", False)


def test_exported_model_predicts_like_the_trained_one(trained, corpus, capsys):
    _, _, run_dir, _ = trained
    predictor = lpmn_fast.load(run_dir / "model")
    wav = corpus.utterances[0].path
    wave = torch.from_numpy(soundfile.read(wav, dtype="float32")[0])
    model = predictor.model
    feats = model.backbone.prepare(wave)[None]
    expected = torch.softmax(model(feats, torch.tensor([feats.shape[1]])).logits[0], -1)
    p = predictor.predict(wave, 16000)
    torch.testing.assert_close(torch.tensor([p.probabilities[c] for c in predictor.classes]), expected)
    assert predict_main([str(run_dir), str(wav), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert record["label"] in corpus.classes and record["num_frames"] == feats.shape[1]


def test_chunks_line_up_with_the_whole_utterance(trained, corpus):
    """Chunked inference: a window covering the whole file is the training computation, so with a
    context longer than the file every chunk is exact; shorter contexts still cover each frame once."""
    _, _, run_dir, _ = trained
    model = SERModel.from_pretrained(run_dir / "model")
    wave = torch.cat([torch.from_numpy(soundfile.read(u.path, dtype="float32")[0]) for u in corpus.utterances[:3]])
    T = model.backbone.frame_count(wave.numel())
    feats = model.backbone.prepare(wave)[None]
    whole = model.backbone(feats, torch.tensor([T]))[0]
    exact = torch.cat([x for _, x in frame_chunks(model.backbone, wave, 7, context_s=100.0)])
    torch.testing.assert_close(exact, whole)
    starts, parts = zip(*frame_chunks(model.backbone, wave, 7, context_s=0.2))
    assert list(starts) == list(range(0, T, 7)) and sum(p.shape[0] for p in parts) == T
    one = run_chunked(model, wave, 10**6)
    torch.testing.assert_close(one.logits, model(feats, torch.tensor([T])).logits[0])


BUNDLED = [name for name, (_, _, extra) in CASES.items() if extra.get("bundle_backbone")]
UNBUNDLED = [name for name in CASES if name not in BUNDLED]


@pytest.mark.parametrize("trained", BUNDLED, indirect=True)
def test_a_bundled_model_loads_without_its_encoder(trained, corpus, tmp_path):
    name, encoder, run_dir, _ = trained
    for folder in ("model", "model-probe"):
        assert (run_dir / folder / "backbone" / "config.json").is_file()
    wave = torch.from_numpy(soundfile.read(corpus.utterances[1].path, dtype="float32")[0])
    before = lpmn_fast.load(run_dir).predict(wave, 16000).probabilities
    moved = shutil.move(str(run_dir), str(tmp_path / "elsewhere"))  # the run folder, copied anywhere
    hidden = encoder.rename(encoder.parent / "gone")  # and the original encoder gone
    try:
        after = lpmn_fast.load(moved).predict(wave, 16000).probabilities
    finally:
        hidden.rename(encoder)
        shutil.move(moved, str(run_dir))
    assert after == pytest.approx(before, abs=1e-6)


@pytest.mark.parametrize("trained", UNBUNDLED, indirect=True)
def test_an_unbundled_model_names_its_missing_encoder(trained, tmp_path):
    name, encoder, run_dir, _ = trained
    hidden = encoder.rename(encoder.parent / "gone")
    try:
        with pytest.raises(FileNotFoundError, match=r"recorded as .*encoder'.*--bundle-backbone"):
            SERModel.from_pretrained(run_dir / "model")
        reloaded = SERModel.from_pretrained(run_dir / "model", hubert_path=str(hidden))  # or told where it is
        assert reloaded.backbone.family == CASES[name][0]
    finally:
        hidden.rename(encoder)


def test_a_hub_id_is_recorded_with_its_revision_and_reloads(tmp_path):
    """An encoder given as a Hub id is recorded as that id plus the commit it resolved to (not a cache
    path), and reloads from it. Offline: the id is served from a Hub cache laid out as
    huggingface_hub writes it; a fresh interpreter, since the hub settings are read at import."""
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--lpmn-test--tiny-wavlm"
    save_tiny_encoder(repo / "snapshots" / commit, "wavlm", True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    probe = (
        "import json, sys\n"
        "from lpmn_fast.models import SERModel, build_backbone, build_head\n"
        "backbone = build_backbone('hf', source='lpmn-test/tiny-wavlm', num_layers=2, finetune_layers=[2])\n"
        "model = SERModel(backbone, build_head('ap', backbone.out_dim, 4)).eval()\n"
        "model.save_pretrained(sys.argv[1])\n"
        "record = json.load(open(sys.argv[1] + '/config.json'))['backbone']\n"
        "print(record['source'], record['revision'], record['path'])\n"
        "again = SERModel.from_pretrained(sys.argv[1])\n"
        "print(again.backbone.revision, again.backbone.family)\n"
    )
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "saved")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["lpmn-test/tiny-wavlm", commit, "None", commit, "wavlm"]


def test_runs_saved_before_the_encoder_fields_still_resume():
    """A config saved before hf_model, layer_weights, ... existed lacks them: they count as their defaults."""
    from lpmn_fast.training.config import changed_fields, config_dict, resolve

    current = config_dict(resolve(make_config(run_dir="run")))
    old = {k: v for k, v in current.items()
           if k not in ("hf_model", "hf_layers", "hf_finetune_layers", "layer_weights", "bundle_backbone")}
    assert changed_fields(old, current) == []
    assert changed_fields(old, {**current, "layer_weights": True}) == ["layer_weights"]
