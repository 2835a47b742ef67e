"""Speed and memory of the prototype-MIL op per provider and mode, and the device's matmul rate.

Run from the repository root with ``pytest --benchmark`` (options: benchmarks/conftest.py).
Providers: triton (fused op), eager (reference), compile / compile-max-autotune (torch.compile of
the reference). Modes: forward (training forward: inputs require grad), backward (its backward
alone, the forward in the untimed set-up), full (forward + backward + Fisher accumulation).
"""

from __future__ import annotations

import itertools

import torch

from .cases import DTYPES, utterance_lengths
from .common import input_copies, random_inputs, run_case, sync


def test_matmul(benchmark, bench_env, matmul_case):
    """torch.matmul at one similarity pass's shape, (B*T, C) @ (C, K): the device's dense rate."""
    env, case = bench_env, matmul_case
    device = env.device
    dtype = DTYPES[case.dtype]
    g = torch.Generator(device=device).manual_seed(case.seed)
    pairs = [(torch.randn(case.B * case.T, case.C, generator=g, device=device, dtype=dtype),
              torch.randn(case.C, case.K, generator=g, device=device, dtype=dtype))
             for _ in range(input_copies(case, device))]
    ring = itertools.cycle(pairs)

    def target(a, b):
        out = torch.matmul(a, b)
        sync(device)
        return out

    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if case.mode == "tf32" else previous)
    try:
        run_case(benchmark, env, case, lambda: (next(ring), {}), target,
                 float32_matmul_precision=torch.get_float32_matmul_precision())
    finally:
        torch.set_float32_matmul_precision(previous)


def test_prototype_mil(benchmark, bench_env, op_case):
    env, case = bench_env, op_case
    device = env.device
    env.admit(case)
    op = env.providers.op(case.provider)

    lengths = utterance_lengths(case.B, case.T, case.seed).to(device)
    ring = itertools.cycle(random_inputs(case, device, input_copies(case, device), requires_grad=True))
    g = torch.Generator(device=device).manual_seed(case.seed + 1)
    grad = torch.randn(case.B, case.K, generator=g, device=device, dtype=DTYPES[case.dtype])
    fisher = torch.zeros(case.K, device=device) if case.mode == "full" else None

    def fresh_inputs():
        x, p = next(ring)
        x.grad = p.grad = None  # no gradient accumulation inside the timed call
        return x, p

    if case.mode == "forward":
        def setup():
            return fresh_inputs(), {}

        def target(x, p):
            out = op(x, p, lengths, None)
            sync(device)
            return out

    elif case.mode == "backward":
        def setup():
            x, p = fresh_inputs()
            out = op(x, p, lengths, None)
            sync(device)
            return (out.pooled,), {}

        def target(pooled):
            pooled.backward(grad)
            sync(device)

    else:  # full: forward + backward + Fisher accumulation
        def setup():
            return fresh_inputs(), {}

        def target(x, p):
            out = op(x, p, lengths, fisher)
            out.pooled.backward(grad)
            sync(device)
            return out

    run_case(benchmark, env, case, setup, target,
             valid_fraction=float(lengths.sum()) / (case.B * case.T))
    fallback = env.providers.full_pass_fallback.get(case.provider) if case.mode == "full" else None
    if fallback:  # the record says which formulation was timed, and why
        env.doc["records"][-1]["compile_formulation"] = "two compiled halves, the Fisher hook eager between them"
        env.doc["records"][-1]["compile_fallback_reason"] = fallback
        env.write()
