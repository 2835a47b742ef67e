"""PrototypeMIL: forward, Fisher EMA scaling, quantization loss, top-K' selection, subsets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from naive import random_lengths

from lpmn_fast import PrototypeMIL, prototype_mil


def make_batch(seed, B=4, T=9, C=6, K=7, classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    lengths = random_lengths(B, T, g)
    labels = torch.randint(0, classes, (B,), generator=g)
    layer = PrototypeMIL(K, C, tau=0.5, kernel="torch", fisher_momentum=0.9).double()
    classifier = torch.nn.Linear(K, classes).double()
    return x, lengths, labels, layer, classifier


def test_forward_equals_functional_op():
    x, lengths, _, layer, _ = make_batch(0)
    out = layer(x, lengths)
    ref = prototype_mil(x, layer.prototypes, lengths, tau=0.5, backend="torch")
    assert torch.equal(out.pooled, ref.pooled) and torch.equal(out.frame_index, ref.frame_index)
    assert "num_prototypes=7" in repr(layer)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 9, 6, 7), (3, 1, 5, 2), (5, 37, 11, 33)])
def test_pool_is_forwards_pooled_and_frame_index_bit_for_bit(dtype, shape):
    B, T, C, K = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(B, T, C, generator=g).to(dtype)
    lengths = random_lengths(B, T, g)
    if T > 1:
        lengths[0] = T - 1
        x[0, -1] = float("nan")  # padding of a ragged utterance: must not matter
    layer = PrototypeMIL(K, C, tau=0.3, kernel="torch").to(dtype).eval()
    for frames, lens in ((x, lengths), (x.nan_to_num(), None)):
        pooled, frame_index = layer.pool(frames, lens)
        out = layer(frames, lens)
        assert pooled.dtype == out.pooled.dtype and torch.equal(pooled, out.pooled)
        assert torch.equal(frame_index, out.frame_index)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as lpmn-predict --precision bf16 runs it
        pooled, frame_index = layer.float().pool(x.float(), lengths)
        out = layer(x.float(), lengths)
    assert torch.equal(pooled, out.pooled) and torch.equal(frame_index, out.frame_index)
    with pytest.raises(ValueError, match="lengths"):
        layer.pool(x.float(), torch.full((B,), T + 1))


def test_update_fisher_estimates_eq4_on_per_utterance_log_likelihood():
    x, lengths, labels, layer, classifier = make_batch(1)
    out = layer(x, lengths)
    F.cross_entropy(classifier(out.pooled), labels).backward()  # batch mean
    estimate = layer.update_fisher()

    # eq. (4) directly: per-utterance log-likelihood gradients, squared per frame, averaged over frames
    expected = torch.zeros(layer.num_prototypes)
    for b in range(x.shape[0]):
        acc = torch.zeros(layer.num_prototypes)
        o = prototype_mil(x[b : b + 1], layer.prototypes, lengths[b : b + 1], tau=0.5, fisher=acc, backend="torch")
        log_p = F.log_softmax(classifier(o.pooled), dim=-1)[0, labels[b]]
        log_p.backward()
        expected += acc
    expected /= lengths.sum()
    assert expected.abs().max() > 0
    torch.testing.assert_close(estimate, expected, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(layer.fisher_importance, expected, rtol=1e-5, atol=1e-12)
    assert int(layer.fisher_updates) == 1 and float(layer.fisher_grad_sq.abs().sum()) == 0


def test_update_fisher_is_an_ema_and_respects_loss_scale():
    x, lengths, labels, layer, classifier = make_batch(2)
    estimates = []
    for scale in (1.0, 3.0):
        out = layer(x, lengths)
        (scale * F.cross_entropy(classifier(out.pooled), labels, reduction="sum")).backward()
        estimates.append(layer.update_fisher(loss_scale=scale))
    # the same batch and parameters: both estimates agree once the loss scale is divided out
    torch.testing.assert_close(estimates[0], estimates[1], rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(layer.fisher_importance, 0.9 * estimates[0] + 0.1 * estimates[1])


def test_no_accumulation_in_eval_or_without_grad():
    x, lengths, labels, layer, classifier = make_batch(3)
    layer.eval()
    F.cross_entropy(classifier(layer(x, lengths).pooled), labels).backward()
    assert float(layer.fisher_frames) == 0
    with pytest.raises(RuntimeError, match="no squared gradients accumulated"):
        layer.update_fisher()
    layer.train()
    with torch.no_grad():
        layer(x, lengths)
    assert float(layer.fisher_frames) == 0


def test_quantization_loss_values_and_stop_gradients():
    x, lengths, _, layer, _ = make_batch(4)
    x.requires_grad_(True)
    out = layer(x, lengths)
    valid = out.nearest >= 0
    cos_nearest = F.cosine_similarity(x[valid], layer.prototypes[out.nearest[valid]], dim=-1)
    loss = layer.quantization_loss(x, lengths, out.nearest, commitment=0.25)
    torch.testing.assert_close(loss, (1.25 * (2 - 2 * cos_nearest)).mean())

    # codebook term moves only prototypes; commitment term moves only features
    layer.zero_grad()
    layer.quantization_loss(x, lengths, out.nearest, commitment=0.0).backward()
    assert torch.all(x.grad == 0) and layer.prototypes.grad.abs().sum() > 0
    unused = torch.ones(layer.num_prototypes, dtype=torch.bool)
    unused[out.nearest[valid]] = False
    assert torch.all(layer.prototypes.grad[unused] == 0)

    layer.zero_grad()
    x_only = layer.quantization_loss(x, lengths, out.nearest, commitment=1.0) - layer.quantization_loss(
        x.detach(), lengths, out.nearest, commitment=0.0
    )
    x_only.backward()
    assert x.grad.abs().sum() > 0 and torch.all(x.grad[~valid] == 0)


def test_quantization_loss_rejects_mismatched_nearest():
    x, lengths, _, layer, _ = make_batch(5)
    nearest = layer(x, lengths).nearest
    with pytest.raises(ValueError, match="nearest must have shape"):
        layer.quantization_loss(x, lengths, nearest[:, :-1])
    with pytest.raises(RuntimeError, match="does not match lengths"):  # a device-side assert
        layer.quantization_loss(x, torch.full_like(lengths, x.shape[1]), nearest)


def test_select_top_and_subset():
    layer = PrototypeMIL(6, 3, kernel="torch")
    with pytest.raises(RuntimeError, match="no Fisher importance"):
        layer.select_top(2)
    layer.fisher_importance.copy_(torch.tensor([0.1, 5.0, 0.3, 2.0, 0.0, 4.0]))
    layer.fisher_updates.fill_(1)
    top = layer.select_top(3)
    assert top.tolist() == [1, 5, 3]
    for bad in (0, 7):
        with pytest.raises(ValueError, match="k_prime must be in"):
            layer.select_top(bad)
    small = layer.subset(top)
    assert small.num_prototypes == 3
    assert torch.equal(small.prototypes, layer.prototypes[top])
    assert torch.equal(small.fisher_importance, torch.tensor([5.0, 4.0, 2.0]))
    with pytest.raises(ValueError, match="indices must lie in"):
        layer.subset(torch.tensor([0, 6]))


def test_state_dict_round_trip_keeps_importance():
    layer = PrototypeMIL(4, 3, kernel="torch")
    layer.fisher_importance.copy_(torch.arange(4.0))
    layer.fisher_updates.fill_(3)
    other = PrototypeMIL(4, 3, kernel="torch")
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other.prototypes, layer.prototypes)
    assert torch.equal(other.fisher_importance, layer.fisher_importance) and int(other.fisher_updates) == 3
    assert "fisher_grad_sq" not in layer.state_dict()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_prototypes=0), "num_prototypes and dim"),
        (dict(tau=0.0), "tau must be"),
        (dict(kernel="cuda"), "kernel must be one of"),
        (dict(fisher_momentum=1.0), "fisher_momentum"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    args = dict(num_prototypes=4, dim=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        PrototypeMIL(**args)


def test_module_casts_prototypes_to_input_dtype():
    layer = PrototypeMIL(5, 4, kernel="torch")
    out = layer(torch.randn(2, 3, 4, dtype=torch.bfloat16))
    assert out.pooled.dtype == torch.bfloat16
