"""save_pretrained / from_pretrained: round trips per head and backbone, and the errors a user meets."""

from __future__ import annotations

import json

import pytest
import torch
from training_fixtures import save_tiny_hubert

from lpmn_fast.models import SERModel
from lpmn_fast.models.pretrained import CONFIG_NAME, WEIGHTS_NAME
from lpmn_fast.training import make_config, resolve
from lpmn_fast.training.build import build_model, build_optimizer
from lpmn_fast.training.batching import collate
from lpmn_fast.training.probe import build_probe_model
from lpmn_fast.training.steps import train_step

CLASSES = ["neutral", "happy", "angry", "sad"]
SMALL = dict(fbank_mel_bins=16, encoder_hidden=16, num_prototypes=8, top_k=4, tau=0.2)


def _model(tmp_path, **fields) -> SERModel:
    torch.manual_seed(0)
    c = resolve(make_config(**{**SMALL, "run_dir": str(tmp_path / "run"), **fields}))
    return build_model(c, len(CLASSES))


def _batch(model, n=3):
    feats = [model.backbone.prepare(torch.randn(int(16000 * (0.3 + 0.1 * i))) * 0.1) for i in range(n)]
    return collate(feats, [i % 4 for i in range(n)], list(range(n)))


def _trained(model, steps=2):
    """A few steps, so that Fisher importance, idle counts and weights are not their initial values."""
    batch = _batch(model)
    optimizer = build_optimizer(resolve(make_config(**SMALL)), model)
    for _ in range(steps):
        train_step(model, batch, optimizer)
    return model.eval()


@pytest.mark.parametrize("head", ["lpmn", "ap", "mp", "probe"])
def test_round_trip_gives_the_same_model(tmp_path, head):
    model = _model(tmp_path, head="lpmn" if head == "probe" else head)
    model = _trained(model)
    if head == "probe":
        model = build_probe_model(model, 4, len(CLASSES)).eval()
    model.save_pretrained(tmp_path / "saved", CLASSES, {"note": "x"})
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]

    loaded = SERModel.from_pretrained(tmp_path / "saved")
    assert not loaded.training and loaded.classes == CLASSES
    assert loaded.pretrained_config["extra"] == {"note": "x"}
    assert loaded.persistent_state().keys() == model.persistent_state().keys()
    for k, v in model.persistent_state().items():
        assert torch.equal(loaded.persistent_state()[k], v), k
    batch = _batch(model)
    torch.testing.assert_close(loaded(batch.feats, batch.lengths).logits, model(batch.feats, batch.lengths).logits,
                               rtol=0, atol=0)
    if head in ("lpmn", "probe"):
        assert int(loaded.head.mil.fisher_updates) == 2  # explanations rank prototypes by this importance
    if head == "probe":
        assert torch.equal(loaded.head.selected, model.head.selected)


def test_hubert_model_reloads_its_frozen_bottom_from_the_recorded_path(tmp_path):
    hubert = save_tiny_hubert(tmp_path / "hubert")
    fields = dict(backbone="hubert", hubert_path=str(hubert), hubert_layers=3, hubert_finetune_layers=[3])
    model = _model(tmp_path, **fields).eval()
    model.save_pretrained(tmp_path / "saved", CLASSES)
    config = json.loads((tmp_path / "saved" / CONFIG_NAME).read_text())
    assert config["backbone"]["path"] == str(hubert.resolve())
    from safetensors.torch import load_file

    assert not any(k.startswith("backbone.frozen.") for k in load_file(tmp_path / "saved" / WEIGHTS_NAME))

    wave = torch.randn(8000) * 0.1
    feats = model.backbone.prepare(wave)[None]
    lengths = torch.tensor([feats.shape[1]])
    loaded = SERModel.from_pretrained(tmp_path / "saved")
    torch.testing.assert_close(loaded(loaded.backbone.prepare(wave)[None], lengths).logits,
                               model(feats, lengths).logits)

    moved = hubert.rename(tmp_path / "hubert-moved")
    with pytest.raises(FileNotFoundError, match=r"recorded as .*hubert'.*hubert_path"):
        SERModel.from_pretrained(tmp_path / "saved")
    reloaded = SERModel.from_pretrained(tmp_path / "saved", hubert_path=str(moved))
    torch.testing.assert_close(reloaded(reloaded.backbone.prepare(wave)[None], lengths).logits,
                               model(feats, lengths).logits)


def test_a_different_hubert_is_refused_or_flagged(tmp_path):
    from transformers import HubertModel
    from training_fixtures import tiny_hubert_config

    hubert = save_tiny_hubert(tmp_path / "hubert")
    model = _model(tmp_path, backbone="hubert", hubert_path=str(hubert), hubert_layers=3,
                   hubert_finetune_layers=[3]).eval()
    model.save_pretrained(tmp_path / "saved", CLASSES)
    wider = tiny_hubert_config()
    wider.intermediate_size = 48
    HubertModel(wider).save_pretrained(tmp_path / "wider")
    with pytest.raises(ValueError, match="intermediate_size 48 .trained with 64"):
        SERModel.from_pretrained(tmp_path / "saved", hubert_path=str(tmp_path / "wider"))
    save_tiny_hubert(tmp_path / "reseeded", seed=1)  # same shapes, other weights
    with pytest.warns(UserWarning, match="differ from those"):
        SERModel.from_pretrained(tmp_path / "saved", hubert_path=str(tmp_path / "reseeded"))


def test_bad_model_directories_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        SERModel.from_pretrained(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        SERModel.from_pretrained(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / CONFIG_NAME).write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="does not describe an lpmn_fast model"):
        SERModel.from_pretrained(tmp_path / "other")

    _model(tmp_path).save_pretrained(tmp_path / "k8", CLASSES)
    _model(tmp_path, num_prototypes=6).save_pretrained(tmp_path / "k6", CLASSES)
    (tmp_path / "k6" / WEIGHTS_NAME).replace(tmp_path / "k8" / WEIGHTS_NAME)  # weights of another architecture
    with pytest.raises(ValueError, match="does not fit"):
        SERModel.from_pretrained(tmp_path / "k8")
    (tmp_path / "k8" / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        SERModel.from_pretrained(tmp_path / "k8")


def test_save_keeps_other_files_and_checks_class_names(tmp_path):
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "notes.txt").write_text("mine")
    model = _model(tmp_path, head="ap")
    model.save_pretrained(tmp_path / "saved", CLASSES)
    assert (tmp_path / "saved" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="3 class names given for a model with 4 classes"):
        model.save_pretrained(tmp_path / "saved", CLASSES[:3])
