"""The choices the paper leaves open (issue 22): what the classifier sees of the pooled mappings,
the probe's reading of the selected prototypes, restarts, the Fisher importance's forms and the
loso-speaker validation speaker."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lpmn_fast.data.corpus import Utterance
from lpmn_fast.models import LPMNHead, ProbeHead
from lpmn_fast.models.heads import FEATURE_NORMS, PooledTransform
from lpmn_fast.models.pretrained import build_head_from_description, describe_head
from lpmn_fast.nn import PrototypeMIL
from lpmn_fast.protocol import make_split
from lpmn_fast.protocol.splits import loso_valid_speaker
from lpmn_fast.training.config import BEFORE_FIELD, changed_fields, saved_fields
from lpmn_fast.training.probe import _fold_standardization


def _pooled(B=6, K=16, tau=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mil = PrototypeMIL(K, 8, tau=tau, kernel="torch")
    x = torch.randn(B, 10, 8, generator=g)
    return mil, x, mil(x).pooled


@pytest.mark.parametrize("mode", FEATURE_NORMS)
def test_pooled_transform_modes(mode):
    _, _, pooled = _pooled()
    t = PooledTransform(mode, pooled.shape[1]).train()
    y = t(pooled)
    assert y.shape == pooled.shape and torch.isfinite(y).all()
    if mode == "none":
        assert torch.equal(y, pooled)
    elif mode == "scale":
        torch.testing.assert_close(y, pooled * pooled.shape[1])
    elif mode == "log":
        torch.testing.assert_close(y, pooled.log())
    elif mode == "standard":  # per utterance, over its K values
        torch.testing.assert_close(y.mean(-1), torch.zeros(len(y)), atol=1e-5, rtol=0)
        torch.testing.assert_close(y.std(-1, unbiased=False), torch.ones(len(y)), atol=1e-4, rtol=0)
    else:  # batch: per prototype, over the batch
        torch.testing.assert_close(y.mean(0), torch.zeros(y.shape[1]), atol=1e-5, rtol=0)


def test_unknown_feature_norm_is_named():
    with pytest.raises(ValueError, match="feature_norm"):
        PooledTransform("softmax", 4)


def _logit_spread_after_training(feature_norm: str, steps: int = 30) -> float:
    """Train an LPMN head at tau = 1 (lr 2e-3, the demo's) on a separable toy task; the mean gap
    between the true class's logit and the others' afterwards."""
    torch.manual_seed(0)
    B, T, C, K = 32, 12, 8, 64
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(B) % 2
    x = torch.randn(B, T, C, generator=g)
    x[labels == 1, 3] += 3 * torch.nn.functional.one_hot(torch.tensor(0), C)  # one frame carries class 1
    head = LPMNHead(C, 2, K, tau=1.0, kernel="torch", quant_weight=0.0, feature_norm=feature_norm)
    lengths = torch.full((B,), T)
    opt = torch.optim.Adam(head.classifier.parameters(), lr=2e-3)  # the classifier alone: the mechanism
    for _ in range(steps):
        loss = F.cross_entropy(head(x, lengths).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        head.mil.update_fisher()
    with torch.no_grad():
        logits = head.eval()(x, lengths).logits
    return float((logits.gather(1, labels[:, None]) - logits.gather(1, 1 - labels[:, None])).mean())


def test_at_tau_1_a_normalised_pooled_vector_learns_where_the_plain_one_barely_moves():
    plain, standard = _logit_spread_after_training("none"), _logit_spread_after_training("standard")
    # Adam's step does not grow with the input: with Y about 1/K the logits move by lr x spread(Y)
    assert standard > 10 * abs(plain)
    assert standard > 0.05


def test_probe_readings_columns_of_the_full_vector_or_renormalised_over_k_prime():
    mil, x, pooled = _pooled(tau=0.2)
    mil.update_fisher = None  # not used
    top = torch.tensor([5, 2, 11])
    columns = ProbeHead(mil.subset(torch.arange(16)), 3, top, reading="columns")
    renorm = ProbeHead(mil.subset(top), 3, top, reading="renormalise")
    with torch.no_grad():
        a = columns.features(columns.mil(x).pooled)
        b = renorm.features(renorm.mil(x).pooled)
    torch.testing.assert_close(a, pooled[:, top].detach())
    assert (b >= a - 1e-6).all() and (b > a).any()  # re-normalising over fewer prototypes raises every value
    with pytest.raises(ValueError, match="renormalise"):
        ProbeHead(mil, 3, top, reading="renormalise")


@pytest.mark.parametrize("reading", ["columns", "renormalise"])
def test_probe_description_round_trips_its_reading(reading):
    mil, x, _ = _pooled()
    top = torch.tensor([3, 1])
    head = ProbeHead(mil.subset(top) if reading == "renormalise" else mil, 4, top, reading=reading).eval()
    desc = describe_head(head)
    rebuilt = build_head_from_description(desc)
    rebuilt.load_state_dict(head.state_dict())
    assert (desc["reading"], desc["top_k"]) == (reading, 2)
    torch.testing.assert_close(rebuilt(x, torch.full((6,), 10)).logits, head(x, torch.full((6,), 10)).logits)


def test_old_descriptions_build_what_they_were():
    desc = {"type": "lpmn", "dim": 8, "num_prototypes": 4, "tau": 0.2, "kernel": "torch", "fisher_momentum": 0.99,
            "num_classes": 3, "quant_weight": 0.1}
    head = build_head_from_description(desc)
    assert (head.feature_norm, head.restart) == ("none", "frame")
    probe = build_head_from_description({**desc, "type": "probe"})
    assert probe.reading == "renormalise" and probe.selected.numel() == 4


def test_standardisation_folds_into_the_classifier():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 5, generator=g) * 0.01 + 0.2
    mean, std = x.mean(0), x.std(0, unbiased=False)
    linear = torch.nn.Linear(5, 3)
    expected = linear((x - mean) / std).detach()
    _fold_standardization(linear, mean, std)
    torch.testing.assert_close(linear(x).detach(), expected, atol=1e-4, rtol=1e-4)


def _fisher_step(mil, x, labels, classifier):
    loss = F.cross_entropy(classifier(mil(x).pooled), labels)
    loss.backward()
    return mil.update_fisher()


def test_direction_importance_is_the_gradient_one_times_the_norm_squared_and_ignores_norms():
    torch.manual_seed(0)
    mil = PrototypeMIL(6, 8, tau=0.5, kernel="torch").train()
    x, labels = torch.randn(4, 7, 8), torch.tensor([0, 1, 0, 1])
    classifier = torch.nn.Linear(6, 2)
    estimate = _fisher_step(mil, x, labels, classifier)
    norms_sq = mil.prototypes.detach().pow(2).sum(-1)
    torch.testing.assert_close(mil.fisher_direction, estimate * norms_sq)
    # scaling one prototype changes no cosine: the direction importance stays, the gradient one shrinks
    scaled = PrototypeMIL(6, 8, tau=0.5, kernel="torch").train()
    with torch.no_grad():
        scaled.prototypes.copy_(mil.prototypes)
        scaled.prototypes[2] *= 10
    _fisher_step(scaled, x, labels, classifier)
    torch.testing.assert_close(scaled.fisher_direction, mil.fisher_direction)
    torch.testing.assert_close(scaled.fisher_importance[2], mil.fisher_importance[2] / 100)
    assert scaled.select_top(6, "direction").tolist() == mil.select_top(6, "direction").tolist()
    with pytest.raises(ValueError, match="importance"):
        mil.select_top(2, "hessian")


def test_models_saved_before_fisher_direction_load_it_derived():
    mil = PrototypeMIL(4, 8, kernel="torch")
    with torch.no_grad():
        mil.fisher_importance.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    state = {k: v for k, v in mil.state_dict().items() if k != "fisher_direction"}
    fresh = PrototypeMIL(4, 8, kernel="torch")
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.fisher_direction, mil.fisher_importance * mil.prototypes.detach().pow(2).sum(-1))


@pytest.mark.parametrize("restart", ["codebook", "frame"])
def test_restarts_keep_the_codebook_geometry(restart):
    torch.manual_seed(0)
    head = LPMNHead(16, 3, 5, kernel="torch", restart=restart)
    with torch.no_grad():
        head.mil.prototypes.copy_(F.normalize(torch.randn(5, 16), dim=-1))
        head.mil.fisher_importance.fill_(1.0)
        head.mil.fisher_direction.fill_(1.0)
    head.idle_steps.copy_(torch.tensor([0, 200, 0, 0, 150]))
    frames = 5 * torch.randn(30, 16)  # raw frames: norm about 5 sqrt(16) = 20
    dead = head.restart_dead(frames, 100, torch.Generator().manual_seed(0))
    assert dead.nonzero().flatten().tolist() == [1, 4]
    norms = head.mil.prototypes.detach().norm(dim=-1)
    if restart == "codebook":
        torch.testing.assert_close(norms, torch.ones(5))
        assert head.mil.fisher_importance.tolist() == [1, 0, 1, 1, 0]
        assert head.mil.fisher_direction.tolist() == [1, 0, 1, 1, 0]
    else:
        assert (norms[dead] > 5).all() and head.mil.fisher_importance.tolist() == [1] * 5
    assert head.idle_steps.tolist() == [0, 0, 0, 0, 0]


def test_loso_speaker_validation_alternates_between_speakers():
    utts = [Utterance(f"u{s}{g}{i}", "x.wav", "neutral", session=s, speaker=f"Ses{s:02d}{g}")
            for s in range(1, 6) for g in "FM" for i in range(2)]
    chosen = [loso_valid_speaker([u for u in utts if u.session == s], s) for s in range(1, 6)]
    assert chosen == ["Ses01M", "Ses02F", "Ses03M", "Ses04F", "Ses05M"]
    swapped = [loso_valid_speaker([u for u in utts if u.session == s], s, seed=1) for s in range(1, 6)]
    assert all(a != b for a, b in zip(chosen, swapped))
    split = make_split("loso-speaker", utts, 3)
    assert {u.speaker for u in split.valid} == {"Ses03M"} and {u.speaker for u in split.test} == {"Ses03F"}


def test_runs_saved_before_the_options_rebuild_and_resume_as_they_were():
    old = {"tau": 0.05, "head": "lpmn"}
    filled = saved_fields(old)
    assert (filled["feature_norm"], filled["restart"], filled["probe_reading"], filled["probe_standardize"],
            filled["importance"]) == ("none", "frame", "renormalise", False, "gradient")
    current = {"feature_norm": "standard", "restart": "frame"}
    assert changed_fields(old, current) == ["feature_norm"]
    assert set(BEFORE_FIELD) >= {"feature_norm", "restart", "probe_reading", "probe_standardize", "importance"}
