"""Speed of the prototype-MIL op (reference provider on CPU). Run with ``pytest --benchmark``."""

from __future__ import annotations

import pytest
import torch

from lpmn_fast import prototype_mil


@pytest.mark.parametrize("mode", ["forward", "full"])
def test_reference_cpu(benchmark, mode):
    g = torch.Generator().manual_seed(0)
    B, T, C, K = 8, 100, 256, 256
    x = torch.randn(B, T, C, generator=g, requires_grad=mode == "full")
    p = torch.randn(K, C, generator=g, requires_grad=mode == "full")
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    fisher = torch.zeros(K)

    def run():
        out = prototype_mil(x, p, lengths, tau=1.0, fisher=fisher, backend="torch")
        if mode == "full":
            out.pooled.sum().backward()
        return out

    out = benchmark(run)
    assert out.pooled.shape == (B, K)
