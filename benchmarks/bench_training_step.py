"""A head-only training step on cached backbone features: fused (triton) vs eager (torch) kernels.

PrototypeMIL + linear classifier; cross-entropy + quantization loss (eq. 1), backward, Fisher
update (eq. 4) and an Adam step, as a training loop over pre-extracted HuBERT features does them.
The features are frozen (no gradient), so the op's useful work is 2 similarity passes (forward, dp).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from lpmn_fast import PrototypeMIL

from .cases import DTYPES, utterance_lengths
from .common import TAU, input_copies, run_case, sync

NUM_CLASSES = 4  # IEMOCAP's 4-class protocol


def test_train_step(benchmark, bench_env, train_case):
    env, case = bench_env, train_case
    device = env.device
    env.admit(case)

    torch.manual_seed(case.seed)
    layer = PrototypeMIL(case.K, case.C, tau=TAU, kernel="triton" if case.provider == "triton" else "torch").to(device)
    classifier = nn.Linear(case.K, NUM_CLASSES).to(device)
    optimizer = torch.optim.Adam([*layer.parameters(), *classifier.parameters()], lr=1e-4)  # the paper's lr

    g = torch.Generator(device=device).manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    features = [torch.randn(case.B, case.T, case.C, generator=g, device=device, dtype=dtype)
                for _ in range(input_copies(case, device))]
    ring = itertools.cycle(features)
    lengths = utterance_lengths(case.B, case.T, case.seed).to(device)
    labels = torch.randint(0, NUM_CLASSES, (case.B,), generator=g, device=device)

    def setup():
        return (next(ring),), {}

    def target(x):
        out = layer(x, lengths)
        loss = F.cross_entropy(classifier(out.pooled.float()), labels) \
            + layer.quantization_loss(x, lengths, out.nearest)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        layer.update_fisher()
        optimizer.step()
        sync(device)
        return loss.detach()

    run_case(benchmark, env, case, setup, target, valid_fraction=float(lengths.sum()) / (case.B * case.T))
