"""The reference op against an independent float64 computation, gradcheck, Fisher, padding."""

from __future__ import annotations

import pytest
import torch
from naive import naive_prototype_mil, random_lengths

from lpmn_fast import prototype_mil

# (B, T, C, K): odd C, K not a power of two, T = 1, B = 1.
SHAPES = [(3, 17, 33, 20), (1, 1, 7, 5), (4, 1, 16, 3), (1, 23, 5, 37), (5, 9, 64, 128)]
TAUS = [0.1, 1.0, 5.0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tau", TAUS)
def test_forward_matches_naive_float64(shape, tau):
    B, T, C, K = shape
    g = torch.Generator().manual_seed(hash((shape, tau)) % 2**31)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    p = torch.randn(K, C, generator=g, dtype=torch.float64)
    lengths = random_lengths(B, T, g)
    out = prototype_mil(x, p, lengths, tau=tau, backend="torch")
    pooled, frame_index, nearest = naive_prototype_mil(x, p, lengths, tau)
    assert out.pooled.dtype == torch.float64 and out.pooled.shape == (B, K)
    torch.testing.assert_close(out.pooled, pooled, rtol=1e-12, atol=1e-14)
    assert torch.equal(out.frame_index, frame_index)
    assert torch.equal(out.nearest, nearest)
    assert out.frame_index.dtype == out.nearest.dtype == torch.int64


def test_ties_pick_the_smallest_frame():
    g = torch.Generator().manual_seed(1)
    frame = torch.randn(1, 1, 8, generator=g, dtype=torch.float64)
    x = frame.expand(2, 6, 8).clone()  # every frame identical: every max is a 6-way tie
    x[1, :2] = torch.randn(2, 8, generator=g, dtype=torch.float64)  # utterance 1 ties from t = 2 on
    p = torch.randn(5, 8, generator=g, dtype=torch.float64)
    out = prototype_mil(x, p, backend="torch")
    expected = naive_prototype_mil(x, p, torch.tensor([6, 6]), 1.0)[1]
    assert torch.equal(out.frame_index, expected)
    assert torch.equal(out.frame_index[0], torch.zeros(5, dtype=torch.int64))
    assert set(out.frame_index[1].tolist()) <= {0, 1, 2}


def test_nearest_ties_pick_the_smallest_prototype():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # 0 and 2 identical
    x = torch.tensor([[[2.0, 0.1], [0.0, 3.0]]], dtype=torch.float64)
    out = prototype_mil(x, p, backend="torch")
    assert out.nearest.tolist() == [[0, 1]]


def test_zero_frame_has_uniform_mapping():
    x = torch.zeros(1, 2, 4, dtype=torch.float64)
    x[0, 1] = torch.tensor([1.0, 0, 0, 0])
    p = torch.eye(4, dtype=torch.float64)
    out = prototype_mil(x, p, torch.tensor([1]), tau=1.0, backend="torch")
    torch.testing.assert_close(out.pooled, torch.full((1, 4), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (3, 4, 3, 6), (1, 1, 5, 2)])
@pytest.mark.parametrize("tau", [0.3, 2.0])
def test_gradcheck_float64(shape, tau):
    B, T, C, K = shape
    g = torch.Generator().manual_seed(7 + B * T)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(K, C, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = random_lengths(B, T, g)
    assert torch.autograd.gradcheck(
        lambda x, p: prototype_mil(x, p, lengths, tau=tau, backend="torch").pooled, (x, p)
    )


def per_frame_fisher(x, p, lengths, tau, upstream):
    """sum over valid (b, t) of ||dcos[b,t,k] * d cos[b,t,k] / d p_k||^2 with autograd Jacobians."""
    B, T, _ = x.shape
    valid = torch.arange(T) < lengths[:, None]

    def cosine(p):
        xh = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return xh @ (p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)).T

    cos = cosine(p).detach().requires_grad_(True)
    s = torch.softmax(cos / tau, dim=-1).masked_fill(~valid[..., None], -1.0)
    pooled = s.max(dim=1).values
    (pooled * upstream).sum().backward()
    dcos = cos.grad  # (B, T, K)
    jac = torch.func.jacrev(cosine)(p)  # (B, T, K, K, C)
    k = torch.arange(p.shape[0])
    dcos_dp = jac[:, :, k, k, :]  # (B, T, K, C): d cos[b,t,k] / d p_k
    per_frame = ((dcos[..., None] * dcos_dp) ** 2).sum(-1) * valid[..., None]
    return per_frame.sum(dim=(0, 1))


@pytest.mark.parametrize("shape", [(2, 6, 5, 4), (3, 1, 7, 9), (1, 11, 3, 6)])
@pytest.mark.parametrize("tau", TAUS)
def test_fisher_matches_per_frame_autograd(shape, tau):
    B, T, C, K = shape
    g = torch.Generator().manual_seed(11 + K)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    p = torch.randn(K, C, generator=g, dtype=torch.float64) * 3
    lengths = random_lengths(B, T, g)
    upstream = torch.randn(B, K, generator=g, dtype=torch.float64)
    fisher = torch.zeros(K)
    pr = p.clone().requires_grad_(True)
    out = prototype_mil(x.clone().requires_grad_(True), pr, lengths, tau=tau, fisher=fisher, backend="torch")
    (out.pooled * upstream).sum().backward()
    expected = per_frame_fisher(x, p, lengths, tau, upstream)
    assert expected.abs().max() > 0
    torch.testing.assert_close(fisher, expected.float(), rtol=1e-5, atol=1e-10)
    # backward adds to the accumulator: a second identical pass doubles it
    out = prototype_mil(x, p.clone().requires_grad_(True), lengths, tau=tau, fisher=fisher, backend="torch")
    (out.pooled * upstream).sum().backward()
    torch.testing.assert_close(fisher, 2 * expected.float(), rtol=1e-5, atol=1e-10)


def test_fisher_untouched_without_backward():
    fisher = torch.zeros(3)
    x, p = torch.randn(2, 4, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    prototype_mil(x, p, fisher=fisher, backend="torch")
    assert torch.count_nonzero(fisher) == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padding_never_changes_the_result(dtype):
    g = torch.Generator().manual_seed(3)
    B, T, C, K, extra = 3, 8, 6, 5, 4
    x = torch.randn(B, T, C, generator=g, dtype=dtype)
    p = torch.randn(K, C, generator=g, dtype=dtype)
    lengths = torch.tensor([3, 8, 1])
    upstream = torch.randn(B, K, generator=g, dtype=dtype)
    garbage = torch.randn(B, extra, C, generator=g, dtype=dtype) * 100
    garbage[0, 0, 0] = float("nan")
    garbage[1, 1, 1] = float("inf")
    x_pad = torch.cat([x, garbage], dim=1)
    x_pad[0, 3:T] = float("nan")  # padding inside the original T too

    results = []
    for inp in (x, x_pad):
        xi, pi = inp.clone().requires_grad_(True), p.clone().requires_grad_(True)
        fisher = torch.zeros(K)
        out = prototype_mil(xi, pi, lengths, tau=0.5, fisher=fisher, backend="torch")
        (out.pooled * upstream).sum().backward()
        results.append((out, xi.grad, pi.grad, fisher))
    (a, dxa, dpa, fa), (b, dxb, dpb, fb) = results
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a.pooled, b.pooled, **tol)
    assert torch.equal(a.frame_index, b.frame_index)
    assert torch.equal(a.nearest[:, :T].masked_fill(torch.arange(T) >= lengths[:, None], -1), b.nearest[:, :T])
    assert torch.all(b.nearest[:, T:] == -1)
    valid = (torch.arange(T) < lengths[:, None])[..., None]
    torch.testing.assert_close(dxa * valid, dxb[:, :T], **tol)
    assert torch.all(dxb[:, T:] == 0) and torch.all(dxb[:, :T][~valid.expand_as(dxa)] == 0)
    torch.testing.assert_close(dpa, dpb, **tol)
    torch.testing.assert_close(fa, fb, rtol=1e-5, atol=1e-12)
    assert torch.isfinite(dpb).all() and torch.isfinite(fb).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_returns_input_dtype(dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, 12, generator=g)
    p = torch.randn(9, 12, generator=g)
    out = prototype_mil(x.to(dtype), p.to(dtype), tau=0.2, backend="torch")
    ref = prototype_mil(x.to(dtype).float(), p.to(dtype).float(), tau=0.2, backend="torch")
    assert out.pooled.dtype == dtype
    torch.testing.assert_close(out.pooled.float(), ref.pooled, rtol=1e-2, atol=1e-3)
