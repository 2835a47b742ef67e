"""Pretrained speech encoders (HuBERT, wav2vec 2.0, WavLM, data2vec-audio; post-LN and stable-LN):
the cached frozen part + the trainable part equal transformers' own forward, padding changes nothing,
layer weights, freezing, and clear errors. Tiny random models saved with save_pretrained."""

from __future__ import annotations

import json

import pytest
import torch
from training_fixtures import ENCODER_VARIANTS, save_tiny_encoder

from lpmn_fast.models import HubertBackbone, SpeechEncoderBackbone, build_backbone

# float32 throughout; the split runs the same modules in the same order as transformers, so only
# attention kernels with and without a mask may differ, by rounding.
ATOL = RTOL = 1e-5


def _id(variant):
    family, stable = variant
    return f"{family}-{'stable-ln' if stable else 'post-ln'}"


@pytest.fixture(scope="module", params=ENCODER_VARIANTS, ids=_id)
def encoder_dir(request, tmp_path_factory):
    family, stable = request.param
    return save_tiny_encoder(tmp_path_factory.mktemp(_id(request.param)), family, stable)


def _reference(path, num_layers, wave):
    """transformers' own forward of the first num_layers blocks, in eval mode:
    (last_hidden_state (T, C), kept blocks' outputs [(T, C)] * num_layers as the model reports them)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path).eval()
    model.encoder.layers = model.encoder.layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    x = wave[None]
    if model.config.feat_extract_norm == "layer":  # the waveform normalisation of the large models
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    assert len(out.hidden_states) == num_layers + 1
    # hidden_states[0] is the input of block 1; the last block's output is last_hidden_state
    # (after the final LayerNorm in stable-LN models).
    blocks = [h[0] for h in out.hidden_states[1:-1]] + [out.last_hidden_state[0]]
    return out.last_hidden_state[0], blocks


@pytest.mark.parametrize("finetune", [(3,), (2, 3), (1,), ()], ids=str)
def test_cached_part_plus_trainable_part_equals_the_model_forward(encoder_dir, finetune):
    torch.manual_seed(1)
    wave = torch.randn(9600)
    backbone = SpeechEncoderBackbone(str(encoder_dir), num_layers=3, finetune_layers=finetune).eval()
    feats = backbone.prepare(wave)
    assert feats.shape == (backbone.frame_count(wave.numel()), 32)
    with torch.no_grad():
        out = backbone(feats[None], torch.tensor([feats.shape[0]]))[0]
    torch.testing.assert_close(out, _reference(encoder_dir, 3, wave)[0], atol=ATOL, rtol=RTOL)


def test_the_frozen_part_ignores_autocast(encoder_dir):
    # training caches float32 features; prediction under --precision bf16 must see the same ones
    wave = torch.randn(9600, generator=torch.Generator().manual_seed(3))
    backbone = SpeechEncoderBackbone(str(encoder_dir), num_layers=3, finetune_layers=(3,)).eval()
    plain = backbone.prepare(wave)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(backbone.prepare(wave), plain)


@pytest.mark.parametrize("finetune", [(3,), (1, 2), ()], ids=str)
def test_layer_weights_sum_the_kept_blocks_outputs(encoder_dir, finetune):
    torch.manual_seed(2)
    wave = torch.randn(8000)
    backbone = SpeechEncoderBackbone(str(encoder_dir), num_layers=3, finetune_layers=finetune,
                                     layer_weights=True).eval()
    with torch.no_grad():
        backbone.layer_weights.copy_(torch.tensor([0.3, -1.0, 2.0]))
        feats = backbone.prepare(wave)
        out = backbone(feats[None], torch.tensor([feats.shape[0]]))[0]
    assert feats.shape[1] == 32 * max(backbone.split_at, 1)
    _, blocks = _reference(encoder_dir, 3, wave)
    weights = torch.softmax(torch.tensor([0.3, -1.0, 2.0]), 0)
    expected = sum(w * h for w, h in zip(weights, blocks))
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)


def test_padded_batch_equals_each_utterance_alone(encoder_dir):
    torch.manual_seed(3)
    for layer_weights in (False, True):
        backbone = SpeechEncoderBackbone(str(encoder_dir), num_layers=4, finetune_layers=(3, 4),
                                         layer_weights=layer_weights).eval()
        parts = [backbone.prepare(torch.randn(n)) for n in (9600, 4800, 3300)]
        lengths = torch.tensor([p.shape[0] for p in parts])
        batch = torch.nn.utils.rnn.pad_sequence(parts, batch_first=True)
        with torch.no_grad():
            out = backbone(batch, lengths)
            for i, p in enumerate(parts):
                alone = backbone(p[None], lengths[i:i + 1])[0]
                torch.testing.assert_close(out[i, : lengths[i]], alone, atol=ATOL, rtol=RTOL)


def test_only_chosen_blocks_and_layer_weights_train(encoder_dir):
    backbone = SpeechEncoderBackbone(str(encoder_dir), num_layers=3, finetune_layers=(2, 3), layer_weights=True)
    assert len(backbone.frozen["layers"]) + len(backbone.top) == 3
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    block_params = {f"top.{n}" for n, _ in backbone.top.named_parameters()}
    assert trainable == block_params | {"layer_weights"}
    feats = backbone.prepare(torch.randn(8000))
    assert not feats.requires_grad
    backbone.train()
    backbone(feats[None], torch.tensor([feats.shape[0]])).pow(2).mean().backward()
    for name, p in backbone.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert not backbone.frozen.training  # train() keeps the cached part in eval mode


def test_defaults_keep_every_block_and_tune_the_last_two(encoder_dir):
    backbone = build_backbone("hf", source=str(encoder_dir))
    assert backbone.num_layers == 4 and backbone.finetune_layers == (3, 4) and backbone.split_at == 2
    assert backbone.family == json.loads((encoder_dir / "config.json").read_text())["model_type"]
    assert backbone.source == str(encoder_dir) and backbone.kind == "hf"


def test_cache_key_changes_with_the_cut_and_the_weights(encoder_dir, tmp_path):
    a = SpeechEncoderBackbone(str(encoder_dir), num_layers=3, finetune_layers=(3,))
    b = SpeechEncoderBackbone(str(encoder_dir), num_layers=3, finetune_layers=(2, 3))
    c = SpeechEncoderBackbone(str(encoder_dir), num_layers=3, finetune_layers=(3,), layer_weights=True)
    keys = [json.dumps(x.cache_key(), sort_keys=True) for x in (a, b, c)]
    assert len(set(keys)) == 3
    family = a.family
    other = save_tiny_encoder(tmp_path / "other", family, a.stable_layer_norm, seed=5)
    d = SpeechEncoderBackbone(str(other), num_layers=3, finetune_layers=(3,))
    assert d.cache_key()["source"] != a.cache_key()["source"]


def test_bad_encoders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-encoder"):
        SpeechEncoderBackbone(str(tmp_path / "no-such-encoder"))
    wavlm = save_tiny_encoder(tmp_path / "wavlm", "wavlm")
    with pytest.raises(ValueError, match=r"kept blocks .* must be in \[1, 4\]"):
        SpeechEncoderBackbone(str(wavlm), num_layers=5)
    with pytest.raises(ValueError, match="fine-tuned blocks"):
        SpeechEncoderBackbone(str(wavlm), num_layers=2, finetune_layers=(3,))
    with pytest.raises(ValueError, match="use --backbone hf"):
        HubertBackbone(str(wavlm), num_layers=2, finetune_layers=(2,))
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' model; supported speech encoders are HuBERT"):
        SpeechEncoderBackbone(str(tmp_path / "bert"))
    backbone = SpeechEncoderBackbone(str(wavlm), num_layers=2)
    with pytest.raises(ValueError, match="long enough for one WavLM frame"):
        backbone.prepare(torch.randn(100))


def test_waveform_normalisation_follows_the_checkpoint_feature_extractor(tmp_path):
    """preprocessor_config.json's do_normalize decides; without one, the large (layer-norm) models normalise."""
    from transformers import Wav2Vec2FeatureExtractor

    large = save_tiny_encoder(tmp_path / "large", "wav2vec2", stable_layer_norm=True)
    base = save_tiny_encoder(tmp_path / "base", "wav2vec2")
    assert SpeechEncoderBackbone(str(large), num_layers=1).normalize_wave
    assert not SpeechEncoderBackbone(str(base), num_layers=1).normalize_wave
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(large)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(base)
    assert not SpeechEncoderBackbone(str(large), num_layers=1).normalize_wave
    assert SpeechEncoderBackbone(str(base), num_layers=1).normalize_wave
