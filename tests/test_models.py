"""Backbones (tiny random HuBERT, fbank), heads and k-means: shapes, freezing, exact caching."""

from __future__ import annotations

import pytest
import torch
from training_fixtures import save_tiny_hubert

from lpmn_fast.models import (
    FbankBackbone, HubertBackbone, LPMNHead, PoolingHead, ProbeHead, build_backbone, build_head, kmeans_codebook,
)


@pytest.fixture(scope="module", params=[False, True], ids=["post-ln", "stable-ln"])
def hubert_dir(request, tmp_path_factory):
    return save_tiny_hubert(tmp_path_factory.mktemp("hubert"), stable_layer_norm=request.param)


# The split of HuBERT (and of the other encoder families) into a cached and a trainable part, its
# equality with transformers' forward, padding and freezing: tests/test_encoders.py.


def test_hubert_bad_configs(hubert_dir, tmp_path):
    missing = tmp_path / "no-such-hubert"
    with pytest.raises(FileNotFoundError, match="no-such-hubert"):
        HubertBackbone(str(missing))
    with pytest.raises(ValueError, match=r"--hubert-layers\) must be in \[1, 4\]"):
        HubertBackbone(str(hubert_dir), num_layers=5, finetune_layers=())
    with pytest.raises(ValueError, match="--hubert-finetune-layers"):
        HubertBackbone(str(hubert_dir), num_layers=2, finetune_layers=(3,))


def test_fbank_frame_rate_and_padding():
    backbone = FbankBackbone(num_mel_bins=24, hidden=16).eval()
    a, b = backbone.prepare(torch.randn(16000)), backbone.prepare(torch.randn(7000))
    assert a.shape == (1 + (16000 - 400) // 320, 24)  # 25 ms window, 20 ms shift: HuBERT's frame rate
    torch.testing.assert_close(a.mean(0), torch.zeros(24), atol=1e-4, rtol=0)  # per-utterance CMVN
    batch = torch.nn.utils.rnn.pad_sequence([a, b], batch_first=True)
    with torch.no_grad():
        out = backbone(batch, torch.tensor([len(a), len(b)]))
        alone = backbone(b[None], torch.tensor([len(b)]))
    assert out.shape == (2, len(a), 16)
    torch.testing.assert_close(out[1, : len(b)], alone[0])
    with pytest.raises(ValueError, match="at least 400 samples"):
        backbone.prepare(torch.randn(100))


def test_unknown_backbone_and_head():
    with pytest.raises(ValueError, match="unknown backbone 'wav2vec'"):
        build_backbone("wav2vec")
    with pytest.raises(ValueError, match="unknown head 'attention'"):
        build_head("attention", 8, 4)


@pytest.mark.parametrize("mode", ["ap", "mp"])
def test_pooling_heads_ignore_padding(mode):
    head = PoolingHead(6, 4, mode)
    x = torch.randn(2, 5, 6)
    lengths = torch.tensor([5, 3])
    garbage = x.clone()
    garbage[1, 3:] = 1e6
    pooled = head.pool(garbage, lengths)
    expected = x[1, :3].mean(0) if mode == "ap" else x[1, :3].amax(0)
    torch.testing.assert_close(pooled[1], expected)
    assert head(x, lengths).logits.shape == (2, 4)


def test_lpmn_head_output_and_quantization_loss():
    head = LPMNHead(6, 4, num_prototypes=5, tau=0.5, kernel="torch", quant_weight=0.5)
    x, lengths = torch.randn(3, 7, 6), torch.tensor([7, 4, 1])
    out = head(x, lengths)
    assert out.logits.shape == (3, 4) and out.nearest.shape == (3, 7)
    assert (out.nearest[1, 4:] == -1).all()
    expected = 0.5 * head.mil.quantization_loss(x, lengths, out.nearest)  # eq. (1), weighted
    torch.testing.assert_close(out.aux_loss, expected)
    head.eval()
    assert head(x, lengths).aux_loss == 0  # evaluation reports the cross-entropy only


def test_dead_prototype_is_restarted_from_a_frame():
    torch.manual_seed(0)
    head = LPMNHead(4, 2, num_prototypes=3, tau=0.5, kernel="torch")
    x = torch.randn(2, 6, 4).abs()  # positive frames
    with torch.no_grad():
        head.mil.prototypes[0] = -torch.ones(4)  # opposite every frame: never nearest
    lengths = torch.tensor([6, 6])
    for _ in range(3):
        head(x, lengths)
    assert head.idle_steps[0] == 3
    restarted = head.restart_dead(x.reshape(-1, 4), patience=3, generator=torch.Generator().manual_seed(0))
    assert restarted.nonzero().flatten().tolist() == [0]
    assert head.idle_steps[0] == 0
    assert any(torch.equal(head.mil.prototypes[0].detach(), frame) for frame in x.reshape(-1, 4))


def test_probe_head_trains_only_its_classifier():
    head = LPMNHead(4, 2, num_prototypes=6, kernel="torch")
    probe = ProbeHead(head.mil.subset(torch.tensor([4, 1])), 2, torch.tensor([4, 1]))
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]
    torch.testing.assert_close(probe.mil.prototypes, head.mil.prototypes[[4, 1]].detach())
    assert probe.selected.tolist() == [4, 1]


def test_kmeans_codebook():
    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    frames = (centres[torch.arange(300) % 3] + 0.01 * torch.randn(300, 8)) * 5  # scale is irrelevant to cosine
    codebook = kmeans_codebook(frames, 3, seed=0)
    assert codebook.shape == (3, 8)
    torch.testing.assert_close(codebook.norm(dim=-1), torch.ones(3))
    # every true centre is found (cosine ~ 1 to some prototype)
    assert (centres @ codebook.T).amax(1).min() > 0.99
    with pytest.raises(ValueError, match="at least K = 400"):
        kmeans_codebook(frames, 400)
