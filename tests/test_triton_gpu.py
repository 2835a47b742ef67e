"""The GPU test matrix of the fused op (issue 11, "Tests that a GPU run must pass").

Every case runs twice over: on a GPU at shapes that cross the GPU's tiles (frame tiles of 64/128,
prototype tiles of 64-256, feature tiles of 16-64: T 300, K 1000/1025/2048, C 768/1024/1280,
lengths 1, 63, 64, 65, 128, 129 and T), and under Triton's CPU interpreter at the same cases scaled
to its 16 x 16 x 32 tiles (lengths 1, 15, 16, 17, 32, 33, T), so that a CPU run exercises the same
code paths. Cases that only mean something on a GPU (CUDA graphs, sync-debug mode, the real
autotuner, a second device) skip with the reason. ``benchmarks/gpu_run.sh`` runs this file first.

Checks are element-wise: winners (``frame_index`` over t in log s, ``nearest`` over k in cos)
exactly wherever the float64 reference's top two are further apart than the kernel's round-off,
and within that round-off elsewhere; ``pooled`` element-wise relative (with the output dtype's
smallest subnormal as the only absolute slack, so an s flushed to 0 fails); dx and dp relative to
each row's scale; Fisher element-wise relative. Tolerances sit next to their tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton", reason="the fused backend needs triton")

from test_triton_op import reference_given_winners  # noqa: E402

from lpmn_fast import prototype_mil  # noqa: E402
from lpmn_fast.kernels import prototype_mil as kernels  # noqa: E402
from lpmn_fast.ops import triton_op  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
if not ON_GPU and not kernels.INTERPRET:
    pytest.skip("no CUDA device and TRITON_INTERPRET unset (conftest.py sets it)", allow_module_level=True)
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (the interpreter has no streams, "
                                                   "graphs, sync-debug mode or autotuning)")


def pick(gpu, interpreter):
    """The GPU's case or the interpreter's scaled-down one."""
    return gpu if ON_GPU else interpreter


T_FULL = pick(300, 40)
# lengths around one and two frame tiles (64 on the GPU, 16 in the interpreter), and T
EDGE_LENGTHS = pick([1, 63, 64, 65, 128, 129, 300], [1, 15, 16, 17, 32, 33, 40])

# (B, T, C, K, lengths or None for random in [T/2, T]) per case id. The interpreter's K and C sit
# below, on and above its 16-prototype and 32-feature tile edges as the GPU's do around 64/128/256.
TILE_CASES = {
    "B2-paper": pick((2, 300, 1024, 1024, [65, 300]), (2, 40, 33, 37, [17, 40])),
    "K1000": pick((7, 300, 1024, 1000, EDGE_LENGTHS), (7, 40, 40, 31, EDGE_LENGTHS)),
    "K1025": pick((7, 300, 1024, 1025, EDGE_LENGTHS), (7, 40, 40, 33, EDGE_LENGTHS)),
    "K2048": pick((7, 300, 1024, 2048, EDGE_LENGTHS), (7, 40, 40, 48, EDGE_LENGTHS)),
    "C768": pick((7, 300, 768, 1024, EDGE_LENGTHS), (7, 40, 24, 37, EDGE_LENGTHS)),
    "C1280": pick((7, 300, 1280, 1024, EDGE_LENGTHS), (7, 40, 72, 37, EDGE_LENGTHS)),
}

# Round-off of one cosine: fp32 accumulation of exact 16-bit products, or fp32 / 3xTF32 products,
# over C <= 1280 terms (~sqrt(C) * 2**-24 typical, C * 2**-24 worst); TF32 alone: 10-bit mantissas.
COS_ERR = {"ieee": 1e-5, "tf32x3": 1e-5, "tf32": 2e-3}
# Output rounding of pooled per dtype (half an ulp, and a little), and the smallest positive value
# each can hold: the only absolute slack pooled gets.
POOLED_RTOL = {torch.float32: 1e-6, torch.bfloat16: 4e-3, torch.float16: 5e-4}
SUBNORMAL = {torch.float32: 2.0**-149, torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}
# dx, dp relative to each row's largest entry: the backward's 16-bit GEMM operands round to 2**-9
# and the normalisation backward (I - xh xh^T) cancels most of a row at small tau and on clustered
# features (fp32 operands: ~1e-6 before the cancellation); Fisher element-wise (fp32 from fp32 dcos).
GRAD_TOL = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 5e-2}
FISHER_RTOL = {torch.float32: 1e-3, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def make_case(B, T, C, K, lengths, dtype, seed, features="isotropic"):
    """x (B, T, C), prototypes (K, C), lengths (B,), upstream (B, K) on DEVICE.

    "clustered": prototypes near orthonormal directions or their opposites, frames near two of them
    per utterance, so cosines sit near +-1 and, at small tau, most of the (b, k) maxima have s far
    below 2**-126.
    """
    g = torch.Generator().manual_seed(seed)
    if features == "isotropic":
        x = torch.randn(B, T, C, generator=g)
        p = torch.randn(K, C, generator=g) * 2
    else:
        # orthonormal centres (n <= C): cosines across clusters stay near 0 at any C
        n = min(C, max(4, K // 4))
        centres = torch.linalg.qr(torch.randn(C, n, generator=g))[0].T
        # noise of norm 0.1 and 0.2: cosines ~0.98 to the own centre, and far enough apart among the
        # frames of one cluster that the float64 reference's winners are clear-cut
        # and every fourth prototype the opposite of its centre (cosines near -1 to that cluster's frames)
        sign = torch.where(torch.arange(K) % 4 == 3, -1.0, 1.0)[:, None]
        p = centres[torch.arange(K) % len(centres)] * sign + 0.1 * torch.randn(K, C, generator=g) / C**0.5
        # each utterance visits two clusters: the other clusters' prototypes find their max far away
        visited = torch.stack([torch.randperm(len(centres), generator=g)[:2] for _ in range(B)])
        which = visited.gather(1, torch.randint(2, (B, T), generator=g))
        x = centres[which] + 0.2 * torch.randn(B, T, C, generator=g) / C**0.5
        x = x * torch.empty(B, T, 1).uniform_(0.5, 2.0, generator=g)
    if lengths is None:
        lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=g)
        lengths[-1] = T
    else:
        lengths = torch.tensor(lengths)
    upstream = torch.randn(B, K, generator=g)
    return x.to(DEVICE, dtype), p.to(DEVICE, dtype), lengths.to(DEVICE), upstream.to(DEVICE, dtype)


def run_fused(x, p, lengths, tau, upstream, deterministic=False):
    xi, pi = x.clone().requires_grad_(True), p.clone().requires_grad_(True)
    fisher = torch.zeros(p.shape[0], device=x.device)
    out = prototype_mil(xi, pi, lengths, tau=tau, fisher=fisher, backend="triton", deterministic=deterministic)
    torch.autograd.backward(out.pooled, upstream)
    return out, xi.grad, pi.grad, fisher


def check_winners_log(chosen, values, valid, dim, tol, what):
    """``chosen`` is a maximum of ``values`` along ``dim`` within ``tol``, and exactly the first maximum
    wherever the runner-up trails by more than ``tol``. Returns the share of such clear cases."""
    masked = values.masked_fill(~valid, float("-inf"))
    top = masked.topk(min(2, masked.shape[dim]), dim=dim).values
    best = top.select(dim, 0)
    runner_up = top.select(dim, 1) if top.shape[dim] > 1 else torch.full_like(best, float("-inf"))
    picked = masked.gather(dim, chosen.clamp_min(0).unsqueeze(dim)).squeeze(dim)
    assert torch.all(picked >= best - tol), f"{what}: a chosen index is not a maximum (tol {tol:g})"
    positions = torch.arange(masked.shape[dim]).view([-1 if d == dim % masked.dim() else 1 for d in range(masked.dim())])
    first = torch.where(masked == best.unsqueeze(dim), positions, masked.shape[dim]).amin(dim=dim)
    clear = best - runner_up > tol
    wrong = (chosen != first) & clear
    assert not wrong.any(), f"{what}: {int(wrong.sum())} clear-cut winners differ, first at {wrong.nonzero()[:3].tolist()}"
    return clear[best > float("-inf")].double().mean().item()  # among the maxima over any valid entry


def assert_rows_close(got, ref, tol, name):
    """Element-wise |got - ref| <= tol * (|ref| + the scale of ref's row (last dim) + 1e-3 x the tensor's)."""
    got, ref = got.double().cpu(), ref.double().cpu()
    row = ref.abs().amax(dim=-1, keepdim=True)
    bound = tol * (ref.abs() + row + 1e-3 * ref.abs().max()) + 1e-30
    err = (got - ref).abs()
    bad = err > bound
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {bad.numel()} elements off, worst ratio "
                           f"{(err / bound).max().item():.3g} at {bad.nonzero()[:3].tolist()}")


def check_case(x, p, lengths, tau, upstream, out, dx, dp, fisher, precision="ieee", min_clear=0.8):
    """Every output and gradient of one fused run against the float64 reference on the same inputs."""
    B, T, _ = x.shape
    dtype = x.dtype
    valid = torch.arange(T) < lengths.cpu()[:, None]
    # float64 on the device (a paper-size batch's reference takes seconds on the host), compared on the host
    reference = reference_given_winners(x, p, lengths, tau, out.frame_index, upstream, device=DEVICE)
    s, cos, pooled, dx_ref, dp_ref, fisher_ref = (t.detach().cpu() for t in reference)
    # log s without underflow: the winners are compared where s itself would be 0 in any float
    logits = cos / tau
    log_s = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    frame_index, nearest = out.frame_index.cpu(), out.nearest.cpu()
    assert torch.all((frame_index >= 0) & (frame_index < lengths.cpu()[:, None]))
    assert torch.all(nearest[~valid] == -1)
    cos_err = COS_ERR[precision]
    log_tol = 4 * cos_err / tau  # the frame's own cos and its log-sum-exp each move by <= 2 cos_err / tau
    clear = check_winners_log(frame_index, log_s, valid[..., None].expand_as(log_s), 1, log_tol, "frame_index")
    clear_nearest = check_winners_log(torch.where(valid, nearest, 0), cos, valid[..., None].expand_as(cos), 2,
                                      2 * cos_err, "nearest")
    if T > 1 and p.shape[0] > 1:
        assert clear > min_clear and clear_nearest > min_clear, (clear, clear_nearest)

    rtol = POOLED_RTOL[dtype] + 1.5 * log_tol  # exp of the log s error, then the output rounding
    torch.testing.assert_close(out.pooled.double().cpu(), pooled, rtol=rtol, atol=SUBNORMAL[dtype],
                               msg=lambda m: f"pooled: {m}")
    grad_tol = GRAD_TOL[dtype] + log_tol
    assert_rows_close(dx, dx_ref, grad_tol, "dx")
    assert_rows_close(dp, dp_ref, grad_tol, "dp")
    torch.testing.assert_close(fisher.double().cpu(), fisher_ref, rtol=FISHER_RTOL[dtype] + 2 * log_tol,
                               atol=1e-6 * fisher_ref.abs().max().item() + 1e-30, msg=lambda m: f"fisher: {m}")
    assert torch.all(dx.cpu()[~valid] == 0)


# ---- shapes across every tile edge ----------------------------------------------------------------


@pytest.mark.parametrize("case", list(TILE_CASES))
def test_shapes_crossing_tiles(case):
    B, T, C, K, lengths = TILE_CASES[case]
    x, p, lengths, upstream = make_case(B, T, C, K, lengths, torch.bfloat16, seed=sum(map(ord, case)))
    check_case(x, p, lengths, 0.5, upstream, *run_fused(x, p, lengths, 0.5, upstream))


# ---- the paper shape, as training runs it: the one-launch forward --------------------------------

# B 128, T 300, C = K = 1024 with ragged lengths (the interpreter: B 8 at its own scale). On a GPU
# (132 SMs) B * T / 64 = 600 frame tiles >= the SM count, so the host picks the one-launch forward
# (_prototype_mil_fwd) by itself; test_forward_path_of_every_case asserts that.
PAPER = pick((128, 300, 1024, 1024), (8, 40, 33, 37))
# (dtype, float32 matmul precision, the tl.dot precision it maps to): bf16 and fp16 as autocast
# gives them, fp32 at torch's "high" (3xTF32), the settings training uses.
PAPER_DTYPES = {"bf16": (torch.bfloat16, "highest", "tf32"), "fp16": (torch.float16, "highest", "tf32"),
                "fp32-high": (torch.float32, "high", "tf32x3")}


def forward_path(B, T, K):
    """Which forward a call at this shape takes on DEVICE: "one-launch" or "split-K"."""
    return "one-launch" if triton_op._split_slices(B, T, K, DEVICE) <= 1 else "split-K"


@pytest.mark.parametrize("name", list(PAPER_DTYPES))
def test_paper_shape_one_launch_forward(name, record_property):
    dtype, setting, precision = PAPER_DTYPES[name]
    B, T, C, K = PAPER
    assert forward_path(B, T, K) == "one-launch"
    record_property("forward_path", "one-launch")
    x, p, lengths, upstream = make_case(B, T, C, K, None, dtype, seed=128)
    lengths[0] = 1  # ragged down to one frame
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        if dtype == torch.float32:
            assert triton_op._dot_precision(dtype) == precision
        result = run_fused(x, p, lengths, 1.0, upstream)
    finally:
        torch.set_float32_matmul_precision(previous)
    check_case(x, p, lengths, 1.0, upstream, *result, precision=precision if dtype == torch.float32 else "ieee")


@pytest.mark.parametrize("path", ["one-launch", "split-K"])
def test_both_forward_paths_at_an_odd_shape(monkeypatch, path, record_property):
    # The same odd-sized case through each forward, forced: whichever the host would pick here, the
    # other is compared with the reference too, on every run.
    B, T, C, K, lengths = TILE_CASES["K1025"]
    slices = 1 if path == "one-launch" else 3
    monkeypatch.setattr(triton_op, "_split_slices", lambda B, T, K, device: slices)
    record_property("forward_path", path)
    x, p, lengths, upstream = make_case(B, T, C, K, lengths, torch.bfloat16, seed=1025)
    check_case(x, p, lengths, 0.5, upstream, *run_fused(x, p, lengths, 0.5, upstream))


def test_forward_path_of_every_case(record_property):
    # Which forward each shape of this file takes by itself (in the junit XML as properties, and
    # printed): training's batches must reach the one-launch kernel, small batches the split-K one.
    shapes = {**{case: v[:4] for case, v in TILE_CASES.items()}, "paper": PAPER,
              "small-tau": pick((4, 300, 1024, 1024), (3, 40, 33, 37)), "B8": pick((8, 300, 1024, 1024), (8, 24, 33, 37)),
              "B1-T1500": pick((1, 1500, 1024, 2048), (1, 70, 33, 48))}
    paths = {case: forward_path(B, T, K) for case, (B, T, _, K) in shapes.items()}
    for case, path in paths.items():
        record_property(case, path)
    print("forward path per case:", paths)
    assert paths["paper"] == "one-launch"
    if ON_GPU:
        assert paths["B1-T1500"] == "split-K"


# ---- small tau on clustered features: the maxima live where exp2 flushes to zero -----------------


@pytest.mark.parametrize("tau", [0.005, 0.01, 0.05, 1.0])
@pytest.mark.parametrize("features", ["isotropic", "clustered"])
def test_small_tau_and_clustered_features(tau, features):
    B, T, C, K = pick((4, 300, 1024, 1024), (3, 40, 33, 37))
    x, p, lengths, upstream = make_case(B, T, C, K, None, torch.bfloat16, seed=int(tau * 1000), features=features)
    out, dx, dp, fisher = run_fused(x, p, lengths, tau, upstream)
    check_case(x, p, lengths, tau, upstream, out, dx, dp, fisher)
    if features == "clustered" and tau <= 0.01:
        # the regime of the flush-to-zero bug: many maxima below fp32's normal range, still ordered
        tiny = out.pooled.float() < torch.finfo(torch.float32).tiny
        assert tiny.double().mean() > 0.1, "the case no longer reaches the subnormal range"


# ---- paper shape slice, misaligned views, fp32 precisions ----------------------------------------


def test_paper_shape_batch_of_8():
    B, T, C, K = pick((8, 300, 1024, 1024), (8, 24, 33, 37))
    x, p, lengths, upstream = make_case(B, T, C, K, None, torch.bfloat16, seed=8)
    check_case(x, p, lengths, 1.0, upstream, *run_fused(x, p, lengths, 1.0, upstream))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_misaligned_inputs(dtype):
    # Views that start one element into their storage: no 16-byte alignment for the compiler to assume.
    B, T, C, K = pick((2, 300, 1024, 1025), (2, 23, 33, 37))
    x, p, lengths, upstream = make_case(B, T, C, K, None, dtype, seed=3)
    x_buf = torch.empty(x.numel() + 1, dtype=dtype, device=DEVICE)
    p_buf = torch.empty(p.numel() + 1, dtype=dtype, device=DEVICE)
    x_mis, p_mis = x_buf[1:].view_as(x), p_buf[1:].view_as(p)
    x_mis.copy_(x)
    p_mis.copy_(p)
    assert x_mis.data_ptr() % 16 and p_mis.data_ptr() % 16
    result = run_fused(x_mis, p_mis, lengths, 0.7, upstream)
    check_case(x, p, lengths, 0.7, upstream, *result)
    aligned = run_fused(x, p, lengths, 0.7, upstream)
    assert torch.equal(result[0].frame_index, aligned[0].frame_index)


@pytest.mark.parametrize("setting, precision", [("highest", "ieee"), ("high", "tf32x3")])
def test_float32_matmul_precisions(setting, precision):
    B, T, C, K = pick((2, 300, 1024, 1000), (2, 23, 33, 37))
    x, p, lengths, upstream = make_case(B, T, C, K, None, torch.float32, seed=11)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        assert triton_op._dot_precision(torch.float32) == precision
        result = run_fused(x, p, lengths, 0.2, upstream)
    finally:
        torch.set_float32_matmul_precision(previous)
    check_case(x, p, lengths, 0.2, upstream, *result, precision=precision)


# ---- devices, the autotuner, determinism ----------------------------------------------------------


@pytest.mark.skipif(not ON_GPU or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device_without_set_device():
    B, T, C, K = 2, 300, 1024, 1024
    x, p, lengths, upstream = make_case(B, T, C, K, None, torch.bfloat16, seed=21)
    assert torch.cuda.current_device() == 0
    dev1 = torch.device("cuda", 1)
    out, dx, dp, fisher = run_fused(x.to(dev1), p.to(dev1), lengths.to(dev1), 0.5, upstream.to(dev1))
    assert out.pooled.device == dev1 and dx.device == dev1 and torch.cuda.current_device() == 0
    check_case(x, p, lengths, 0.5, upstream, out, dx, dp, fisher)


@needs_gpu
def test_real_autotuner_at_two_batch_sizes(monkeypatch):
    # B * T = 1200 and 14400: row buckets 2048 and 16384, so the second call tunes again instead of
    # reusing the first call's choice; both results checked against the reference. B = 4 takes the
    # split-K forward by itself on 132 SMs: it is forced through the one-launch kernel here, so that
    # the kernel this test names is tuned at both sizes (the split kernels are tuned by the B = 4
    # cases elsewhere in this file and checked below too).
    fwd = kernels._prototype_mil_fwd
    monkeypatch.setattr(triton_op, "_split_slices", lambda B, T, K, device: 1)
    for B in (4, 48):
        x, p, lengths, upstream = make_case(B, 300, 1024, 1024, None, torch.bfloat16, seed=B)
        check_case(x, p, lengths, 0.5, upstream, *run_fused(x, p, lengths, 0.5, upstream))
        assert getattr(fwd, "best_config", None) in fwd.configs
    position = fwd.keys.index("ROWS_BUCKET")
    buckets = {key[position] for key in fwd.cache if key[:2] == (1024, 1024)}
    assert {2048, 16384} <= buckets, buckets
    monkeypatch.undo()
    x, p, lengths, upstream = make_case(4, 300, 1024, 1024, None, torch.bfloat16, seed=44)
    assert forward_path(4, 300, 1024) == "split-K"
    check_case(x, p, lengths, 0.5, upstream, *run_fused(x, p, lengths, 0.5, upstream))
    for name in ("_prototype_mil_fwd_split_lse", "_prototype_mil_fwd_split_max", "_prototype_mil_bwd_dcos",
                 "_prototype_mil_bwd_dx", "_prototype_mil_bwd_dp"):
        tuned = getattr(kernels, name)
        assert tuned.cache and getattr(tuned, "best_config", None) in tuned.configs, name


@pytest.mark.parametrize("split", [False, True])
def test_deterministic_mode_is_bit_identical(monkeypatch, split):
    B, T, C, K = pick((2, 300, 1024, 1024), (3, 23, 33, 37))
    if split:
        monkeypatch.setattr(triton_op, "_split_slices", lambda B, T, K, device: 3)
    x, p, lengths, upstream = make_case(B, T, C, K, None, torch.bfloat16, seed=5)
    runs = [run_fused(x, p, lengths, 0.3, upstream, deterministic=True) for _ in range(2)]
    first, second = ([r[0].pooled, r[0].frame_index, r[0].nearest, *r[1:]] for r in runs)
    for u, v in zip(first, second):
        assert torch.equal(u, v)


# ---- small batches: the split-K forward -----------------------------------------------------------


def test_small_batch_split_k(monkeypatch):
    # On a GPU the host splits by itself at B = 1, T = 1500, K = 2048 (30 s of speech), giving every
    # SM a program; the interpreter is told to split, at its own scale.
    if ON_GPU:
        B, T, C, K = 1, 1500, 1024, 2048
        slices = triton_op._split_slices(B, T, K, DEVICE)
        sms = torch.cuda.get_device_properties(DEVICE).multi_processor_count
        assert slices > 1 and B * -(-T // kernels.SPLIT_BLOCK_T) * slices >= sms
    else:
        B, T, C, K = 1, 70, 33, 48
        monkeypatch.setattr(triton_op, "_split_slices", lambda B, T, K, device: 3)
    x, p, lengths, upstream = make_case(B, T, C, K, [T], torch.bfloat16, seed=15)
    check_case(x, p, lengths, 0.5, upstream, *run_fused(x, p, lengths, 0.5, upstream))


# ---- no host syncs, CUDA graphs, the asynchronous length check ------------------------------------


@needs_gpu
@pytest.mark.parametrize("B, T", [(4, 300), (1, 1500)])  # the one-launch and the split-K forward
def test_forward_has_no_host_sync(B, T):
    x, p, lengths, _ = make_case(B, T, 1024, 2048, None, torch.bfloat16, seed=2)
    prototype_mil(x, p, lengths, backend="triton")  # autotuning synchronises: before the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = prototype_mil(x, p, lengths, backend="triton")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.pooled.shape == (B, 2048)


@needs_gpu
@pytest.mark.parametrize("head", ["lpmn", "ap", "mp"])
def test_training_step_has_no_host_sync(head):
    # The steady-state step of lpmn-train (benchmarks/syncs.py counts the same step on the CPU):
    # forward, losses, backward, Fisher update, Adam, the dead-prototype check, on CUDA with the
    # fused op, under the sync-debug mode that raises on any device-to-host wait.
    from benchmarks.syncs import steady_state_step

    step = steady_state_step(head, DEVICE, kernel="triton")
    step()  # warm-up: autotuning, Adam's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@needs_gpu
def test_forward_and_backward_capture_in_a_cuda_graph():
    # Needs the sync-free backward too (issue 11.3); replaying the graph must equal an eager step.
    B, T, C, K = 4, 300, 1024, 1024
    x, p, lengths, upstream = make_case(B, T, C, K, None, torch.bfloat16, seed=9)
    xi, pi = x.clone().requires_grad_(True), p.clone().requires_grad_(True)
    fisher = torch.zeros(K, device=DEVICE)

    def step():
        out = prototype_mil(xi, pi, lengths, tau=0.5, fisher=fisher, backend="triton", deterministic=True)
        torch.autograd.backward(out.pooled, upstream)
        return out.pooled

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: autotuning and allocations, outside the capture
        for _ in range(2):
            xi.grad = pi.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    xi.grad = pi.grad = None
    eager = [step().clone(), xi.grad.clone(), pi.grad.clone()]
    xi.grad = pi.grad = None  # the captured backward allocates them in the graph's pool
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            pooled = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip([pooled, xi.grad, pi.grad], eager):
        assert torch.equal(got, want)


@needs_gpu
def test_bad_lengths_fail_asynchronously_on_cuda():
    # The CUDA check is a device assert (it poisons the CUDA context, so it runs in a child process).
    code = textwrap.dedent("""
        import torch
        from lpmn_fast import prototype_mil
        x, p = torch.randn(2, 5, 8, device="cuda"), torch.randn(3, 8, device="cuda")
        out = prototype_mil(x, p, torch.tensor([5, 0], device="cuda"), backend="triton")
        torch.cuda.synchronize()
        print("NO ERROR")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "NO ERROR" not in result.stdout
    assert result.returncode != 0 and ("assert" in result.stderr.lower() or "lengths" in result.stderr)
