"""The fused backward's own paths against the float64 reference: chunking, active-frame compaction,
many and all frames active, T = 1, gradient subsets, Fisher, determinism, float16 scaling, no host sync.

Runs through Triton's CPU interpreter without a GPU (conftest.py sets TRITON_INTERPRET=1). The
helpers and the float32/16-bit tolerances are those of tests/test_triton_op.py.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

triton = pytest.importorskip("triton", reason="the fused backend needs triton")

from test_triton_op import (  # noqa: E402
    DEVICE,
    ON_GPU,
    FP32_TOLS,
    REDUCED_TOLS,
    check_against_reference,
    make_inputs,
    reference_given_winners,
    run_op,
)

from lpmn_fast import prototype_mil  # noqa: E402
from lpmn_fast.kernels import prototype_mil as kernels  # noqa: E402
from lpmn_fast.ops import triton_op  # noqa: E402

# Backward chunks of 16 active frames: one interpreter row tile, a fraction of a GPU one.
TINY_CHUNK = 16


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Backward chunks of TINY_CHUNK active frames: many chunks, the last ones partial or empty."""
    monkeypatch.setattr(triton_op, "_chunk_rows", lambda K, C: TINY_CHUNK)


def _chunks(B, T, K, C):
    n_max = B * min(T, K)
    return -(-n_max // min(triton_op._chunk_rows(K, C), n_max))


def all_frames_active_inputs(B, T, C, seed):
    """x (B, T, C) and prototypes (B * T + 1, C): prototype b * T + t is frame (b, t) itself, so at a
    small tau every frame wins (at least) its own prototype's max; one extra random prototype."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g)
    p = torch.cat([x.reshape(B * T, C) * 1.5, torch.randn(1, C, generator=g)])
    upstream = torch.randn(B, p.shape[0], generator=g)
    lengths = torch.full((B,), T)
    return x.to(DEVICE), p.to(DEVICE), lengths.to(DEVICE), upstream.to(DEVICE)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_active_frames_compaction_matches_nonzero(seed):
    g = torch.Generator().manual_seed(seed)
    B, T, K = 5, 13, 7
    frame_index = torch.randint(0, T, (B, K), generator=g)
    frame_index[0] = 3  # one utterance with a single active frame
    active, rows, count = triton_op._active_frames(frame_index.to(DEVICE), T)
    expected = torch.zeros(B, T, dtype=torch.bool)
    expected[torch.arange(B)[:, None], frame_index] = True
    assert torch.equal(active.cpu(), expected.flatten())
    want = torch.nonzero(expected.flatten()).flatten()
    assert rows.shape == (B * min(T, K) + 1,) and count.shape == (1,)
    assert int(count) == want.numel()
    assert torch.equal(rows[: want.numel()].cpu(), want)


# (B, T, C, K) with several chunks of 16 active frames: ragged lengths (empty trailing chunks), K < T,
# K > T, and K = 1.
CHUNK_SHAPES = [(3, 23, 33, 37), (4, 40, 24, 9), (2, 50, 17, 64), (20, 3, 5, 1)]


@pytest.mark.parametrize("shape", CHUNK_SHAPES)
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_chunked_backward_matches_reference(tiny_chunks, shape, tau):
    B, T, C, K = shape
    assert _chunks(B, T, K, C) >= 2
    x, p, lengths, upstream = make_inputs(shape, seed=hash((shape, tau)) % 2**31)
    out, dx, dp, fisher = run_op(x, p, lengths, tau, upstream)
    check_against_reference(out, dx, dp, fisher, x, p, lengths, tau, upstream, FP32_TOLS)


@pytest.mark.parametrize("chunked", [False, True])
def test_all_frames_active(monkeypatch, chunked):
    B, T, C = 2, 20, 12
    x, p, lengths, upstream = all_frames_active_inputs(B, T, C, seed=3)
    if chunked:
        monkeypatch.setattr(triton_op, "_chunk_rows", lambda K, C: TINY_CHUNK)
    out, dx, dp, fisher = run_op(x, p, lengths, 0.05, upstream)
    _, _, count = triton_op._active_frames(out.frame_index, T)
    assert int(count) == B * T  # every frame has a gradient
    assert torch.all(dx.abs().amax(dim=-1) > 0)
    check_against_reference(out, dx, dp, fisher, x, p, lengths, 0.05, upstream, FP32_TOLS)


@pytest.mark.parametrize("shape", [(5, 1, 9, 6), (40, 1, 7, 3)])
def test_single_frame_utterances(tiny_chunks, shape):
    # T = 1: every utterance's only frame wins every max; (40, 1, 7, 3) spans three chunks.
    x, p, lengths, upstream = make_inputs(shape, seed=11)
    out, dx, dp, fisher = run_op(x, p, lengths, 0.5, upstream)
    assert torch.all(out.frame_index == 0)
    check_against_reference(out, dx, dp, fisher, x, p, lengths, 0.5, upstream, FP32_TOLS)


@pytest.mark.parametrize("chunked", [False, True])
def test_gradient_subsets_and_fisher_only_prototypes(monkeypatch, chunked):
    if chunked:
        monkeypatch.setattr(triton_op, "_chunk_rows", lambda K, C: TINY_CHUNK)
    x, p, lengths, upstream = make_inputs((3, 23, 33, 37), seed=14)
    _, dx_full, dp_full, fisher_full = run_op(x, p, lengths, 0.5, upstream)
    for x_grad, p_grad in ((True, False), (False, True)):
        xi, pi = x.clone().requires_grad_(x_grad), p.clone().requires_grad_(p_grad)
        fisher = torch.zeros(p.shape[0], device=DEVICE)
        out = prototype_mil(xi, pi, lengths, tau=0.5, fisher=fisher, backend="triton")
        torch.autograd.backward(out.pooled, upstream)
        # the same kernels with fewer outputs: bit-identical where computed
        if x_grad:
            assert torch.equal(xi.grad, dx_full) and pi.grad is None
        else:
            assert torch.equal(pi.grad, dp_full) and xi.grad is None
        torch.testing.assert_close(fisher, fisher_full, rtol=1e-6, atol=0)


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("chunk_rows", [TINY_CHUNK, TINY_CHUNK + 8])  # 24: chunks end inside a row tile
def test_chunked_fisher_and_determinism(monkeypatch, deterministic, chunk_rows):
    monkeypatch.setattr(triton_op, "_chunk_rows", lambda K, C: chunk_rows)
    shape = (4, 40, 24, 9)
    x, p, lengths, upstream = make_inputs(shape, seed=15)
    runs = [run_op(x, p, lengths, 0.3, upstream, deterministic=deterministic) for _ in range(2)]
    out, dx, dp, fisher = runs[0]
    check_against_reference(out, dx, dp, fisher, x, p, lengths, 0.3, upstream, FP32_TOLS)
    # dx and dp never depend on atomics; the Fisher sum does unless deterministic
    assert torch.equal(runs[0][1], runs[1][1]) and torch.equal(runs[0][2], runs[1][2])
    if deterministic:
        assert torch.equal(runs[0][3], runs[1][3])


def test_float16_small_upstream_gradient_is_scaled_into_range():
    # dY ~ 1e-2: dcos ~ s dY / tau ~ 3e-4 and D = dcos / |p| ~ 2e-5, mostly float16 subnormals (resolution
    # 6e-8) unless D is scaled; dx and dp themselves (~1e-4, 5e-5) are still normal float16 numbers.
    # Tolerance: 1e-3 of the largest entry, ~1.7 float16 ulps of it (the output rounding alone is 0.5-1
    # ulp); with S = 1 the error measured 1.7e-3.
    shape = (3, 23, 33, 37)
    x, p, lengths, upstream = make_inputs(shape, seed=16, dtype=torch.float16)
    upstream = (upstream.float() * 1e-2).half()
    out, dx, dp, fisher = run_op(x, p, lengths, 1.0, upstream)
    tols = dict(REDUCED_TOLS[torch.float16], dx=1e-3, dp=1e-3)
    check_against_reference(out, dx, dp, fisher, x, p, lengths, 1.0, upstream, tols)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_d_scale_is_a_power_of_two_bounding_d(dtype):
    g = torch.Generator().manual_seed(17)
    grad = torch.randn(4, 6, generator=g) * 3e-7
    p_norm = torch.rand(6, generator=g) + 0.5
    tau = 0.07
    scale = triton_op._d_scale(grad, p_norm, tau, dtype)
    assert scale.shape == (1,) and scale.dtype == torch.float32
    mantissa, _ = torch.frexp(scale)
    assert mantissa.item() == 0.5  # a power of two: scaling D and unscaling are exact
    if dtype != torch.float16:
        assert scale.item() == 1.0
    else:
        bound = grad.abs().max() * 2 / tau / p_norm.min()  # the largest |dcos / |p|| can be
        assert 2.0**13 < scale.item() * bound <= 2.0**14
        zero = triton_op._d_scale(torch.zeros(4, 6), p_norm, tau, dtype)
        assert torch.isfinite(zero).all() and zero.item() > 0


class _OpLog(TorchDispatchMode):
    """Records the name of every ATen op run under it."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


# ATen ops that copy a device value to the host (a synchronisation on CUDA) or size a result by the data.
SYNCING_OPS = ("nonzero", "_local_scalar_dense", "item", "unique", "masked_select", "is_nonzero", "equal")


def test_backward_has_no_host_sync_and_shape_only_launches(monkeypatch):
    """The backward's host code never reads device data: no syncing op, and the same kernel launches
    (kernel, grid) whatever the number of active frames."""
    launches = []
    for name in ("_prototype_mil_bwd_row_weights", "_prototype_mil_bwd_dcos", "_prototype_mil_bwd_dx",
                 "_prototype_mil_bwd_dp", "_prototype_mil_bwd_zero_rows"):
        kernel = getattr(kernels, name)

        class Recorder:
            """Stands for a kernel: records its name, grid (at the interpreter's tiles) and scalar arguments."""

            def __init__(self, kernel, name):
                self.kernel, self.name = kernel, name

            def __getitem__(self, grid):
                size = grid(dict(BLOCK_R=16, BLOCK_K=16, BLOCK_C=32)) if callable(grid) else grid
                launch = self.kernel[grid]

                def run(*args, **kwargs):
                    scalars = tuple(a for a in args if not isinstance(a, torch.Tensor))
                    launches[-1].append((self.name, size, scalars, tuple(sorted(kwargs.items()))))
                    return launch(*args, **kwargs)

                return run

        monkeypatch.setattr(kernels, name, Recorder(kernel, name))
    monkeypatch.setattr(triton_op, "_chunk_rows", lambda K, C: TINY_CHUNK)

    B, T, C, K = 3, 20, 8, 24
    x, p, _, upstream = make_inputs((B, T, C, K), seed=18)
    saved = {}
    for lengths in ([20, 20, 20], [1, 2, 20]):  # 60 vs at most 23 active frames, same shapes
        lengths = torch.tensor(lengths, device=DEVICE)
        pooled, frame_index, _, pooled32, lse2, x_norm, p_norm = triton_op.prototype_mil_forward(x, p, lengths, 0.5)
        launches.append([])
        log = _OpLog()
        with log:
            triton_op.prototype_mil_backward(upstream, x, p, frame_index, pooled32, lse2, x_norm, p_norm, 0.5,
                                             torch.zeros(K, device=DEVICE), False, True, True)
        assert not [n for n in log.names if any(s in n for s in SYNCING_OPS)], log.names
        saved[len(saved)] = launches[-1]
    assert saved[0] == saved[1] and len(saved[0]) == 4 * _chunks(B, T, K, C) + 1


def test_backward_launches_on_the_tensors_device(monkeypatch):
    # CPU tensors (the interpreter): no CUDA device to switch to
    assert isinstance(triton_op.launch_device(torch.zeros(1)), type(triton_op.contextlib.nullcontext()))
    entered = []

    class Ctx:
        def __init__(self, x):
            entered.append(x.device)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(triton_op, "launch_device", Ctx)
    x, p, lengths, upstream = make_inputs((2, 5, 4, 3), seed=19)
    run_op(x, p, lengths, 0.5, upstream)
    assert entered and all(d == x.device for d in entered)


def test_zero_frame_with_chunks(tiny_chunks):
    # A valid all-zero frame (|x| < eps: clamped norm, no radial term) inside a multi-chunk backward.
    x, p, lengths, upstream = make_inputs((3, 23, 6, 37), seed=20)
    # utterance 2's other frames all near one direction, prototype 0 opposite to it: every other frame
    # gives prototype 0 less than the uniform 1/K, so the zero frame wins its max
    base = torch.randn(6, generator=torch.Generator().manual_seed(21)).to(DEVICE)
    x[2] = base + 0.1 * x[2]
    p[0] = -2 * base
    x[2, 5] = 0.0
    out, dx, dp, fisher = run_op(x, p, lengths, 1.0, upstream)
    s, _, pooled, dx_ref, dp_ref, fisher_ref = reference_given_winners(x, p, lengths, 1.0, out.frame_index, upstream)
    assert int(out.frame_index[2, 0]) == 5
    big = dx_ref[2, 5].abs().max()
    torch.testing.assert_close(dx[2, 5].double().cpu(), dx_ref[2, 5], rtol=1e-5, atol=1e-6 * big)
    rest = torch.ones(3, 23, dtype=torch.bool)
    rest[2, 5] = False
    scale = dx_ref[rest].abs().max()
    torch.testing.assert_close(dx.cpu().double()[rest], dx_ref[rest], rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(dp.double().cpu(), dp_ref, rtol=1e-4, atol=1e-4 * dp_ref.abs().max())
    torch.testing.assert_close(fisher.double().cpu(), fisher_ref, rtol=1e-4, atol=1e-4 * fisher_ref.abs().max())


# radial_x partials of the dcos kernel's 2-D grid: K = 37 spans three 16-wide K tiles (the last one
# 5 wide), chunks of 16 and 24 frames (24: a chunk ends inside a row tile). float32 inputs: each
# partial is an fp32 sum over at most BLOCK_K products, so relative 1e-5 of the row's largest term.
RADIAL_TOL = 1e-5


@pytest.mark.parametrize("chunk_rows", [TINY_CHUNK, TINY_CHUNK + 8, None])
@pytest.mark.parametrize("wide_tiles", [False, True])
def test_radial_x_partials_match_reference_and_are_deterministic(monkeypatch, chunk_rows, wide_tiles):
    if chunk_rows is not None:
        monkeypatch.setattr(triton_op, "_chunk_rows", lambda K, C: chunk_rows)
    if wide_tiles:
        if ON_GPU:
            pytest.skip("replaces the interpreter's single dcos config; on a GPU autotuning picks the tiles")
        # a dcos config wider than the smallest tiles: 32 frames (radial_p slots left zero between row
        # tiles) x 32 prototypes (two radial_x slots per program: the partial, then zeros)
        wide = triton.Config(dict(BLOCK_R=32, BLOCK_K=32, BLOCK_C=32), num_warps=4, num_stages=1)
        monkeypatch.setattr(kernels._prototype_mil_bwd_dcos, "configs", [wide])
    B, T, C, K = 3, 23, 33, 37
    tau = 0.4
    x, p, lengths, upstream = make_inputs((B, T, C, K), seed=21)
    assert triton.cdiv(K, kernels.MIN_BLOCK_K) >= 3 or ON_GPU  # several K tiles under the interpreter
    pooled, frame_index, _, pooled32, lse2, x_norm, p_norm = triton_op.prototype_mil_forward(x, p, lengths, tau)

    parts_per_chunk = []  # the radial_x partials each dx launch reads, copied at its launch
    dx_kernel = kernels._prototype_mil_bwd_dx

    class Spy:
        def __getitem__(self, grid):
            launch = dx_kernel[grid]

            def run(*args, **kwargs):
                # tensors in order: d, p, x, rows, count, x_norm, radial_x_parts, scale, dx
                parts = [a for a in args if isinstance(a, torch.Tensor)][6]
                assert parts.shape[0] == kernels.radial_x_slots(K) and parts.dtype == torch.float32
                parts_per_chunk.append(parts.clone())
                return launch(*args, **kwargs)

            return run

    monkeypatch.setattr(kernels, "_prototype_mil_bwd_dx", Spy())
    runs = []
    for _ in range(2):
        parts_per_chunk.clear()
        fisher = torch.zeros(K, device=DEVICE)
        dx, dp = triton_op.prototype_mil_backward(upstream, x, p, frame_index, pooled32, lse2, x_norm, p_norm, tau,
                                                  fisher, True, True, True)
        runs.append((list(parts_per_chunk), dx, dp, fisher))

    # float64 reference: radial_x[b, t] = sum_k dcos[b, t, k] cos[b, t, k] over the active frames in order
    _, cos, _, _, _, _ = reference_given_winners(x, p, lengths, tau, frame_index, upstream)
    valid = torch.arange(T) < lengths.cpu()[:, None]
    cos_leaf = cos.clone().requires_grad_(True)
    s = torch.softmax(cos_leaf / tau, dim=-1)
    s.gather(1, frame_index.cpu()[:, None, :]).squeeze(1).backward(upstream.double().cpu())
    terms = (cos_leaf.grad * cos) * valid[..., None]  # (B, T, K)
    _, rows, count = triton_op._active_frames(frame_index, T)
    n = int(count.item())
    order = rows[:n].cpu()
    ref = terms.reshape(B * T, K)[order]  # (n, K)

    parts_list = runs[0][0]
    R = parts_list[0].shape[1]
    got = torch.cat([parts.double().cpu() for parts in parts_list], dim=1)[:, :n]  # (slots, n)
    assert len(parts_list) == triton.cdiv(B * min(T, K), R)
    # each slot holds the sum over its prototypes (wider tiles: the first slot of the tile, zeros after)
    radial_ref = ref.sum(dim=1)
    torch.testing.assert_close(got.sum(dim=0), radial_ref, rtol=0,
                               atol=RADIAL_TOL * ref.abs().max().item())
    # under the interpreter slot j of a BLOCK_K-wide tile holds the tile's sum if j is its first slot, else 0
    if not ON_GPU:
        block_k, width = (32 if wide_tiles else 16), kernels.MIN_BLOCK_K
        slot_ref = torch.stack([ref[:, j * width:j * width + block_k].sum(dim=1) if j * width % block_k == 0
                                else torch.zeros(n, dtype=ref.dtype) for j in range(got.shape[0])])
        torch.testing.assert_close(got, slot_ref, rtol=0, atol=RADIAL_TOL * ref.abs().max().item())
    # and the gradients built from them match the float64 reference
    _, _, _, dx_ref, dp_ref, fisher_ref = reference_given_winners(x, p, lengths, tau, frame_index, upstream)
    for got_grad, want in ((runs[0][1], dx_ref), (runs[0][2], dp_ref), (runs[0][3], fisher_ref)):
        torch.testing.assert_close(got_grad.double().cpu(), want, rtol=FP32_TOLS["dx"],
                                   atol=FP32_TOLS["dx"] * want.abs().max().item())
    # deterministic mode: partials, dx, dp and Fisher bit-identical across runs
    for chunk, (a, b) in enumerate(zip(runs[0][0], runs[1][0])):
        written = max(0, min(n - chunk * R, R))  # columns past the chunk's active frames are never written
        assert torch.equal(a[:, :written], b[:, :written])
    for i in (1, 2, 3):
        assert torch.equal(runs[0][i], runs[1][i])


# ---- GPU only ---------------------------------------------------------------------------------


def _forward_saved(x, p, lengths, tau):
    _, frame_index, _, pooled32, lse2, x_norm, p_norm = triton_op.prototype_mil_forward(x, p, lengths, tau)
    return frame_index, pooled32, lse2, x_norm, p_norm


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs and the CUDA sync debug mode need a CUDA device")
def test_backward_captures_in_a_cuda_graph_without_sync():
    B, T, C, K = 4, 150, 96, 200
    x, p, lengths, upstream = make_inputs((B, T, C, K), seed=22, dtype=torch.bfloat16)
    saved = _forward_saved(x, p, lengths, 0.5)
    fisher = torch.zeros(K, device=DEVICE)

    def backward():
        return triton_op.prototype_mil_backward(upstream, x, p, *saved, 0.5, fisher, True, True, True)

    eager = backward()  # autotunes outside the capture
    eager_fisher = fisher.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
        backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host copy raises
    try:
        with torch.cuda.graph(graph):
            static_dx, static_dp = backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    fisher.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_dx, eager[0]) and torch.equal(static_dp, eager[1])
    assert torch.equal(fisher, eager_fisher)  # deterministic Fisher: bit-identical


@pytest.mark.skipif(not ON_GPU or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_backward_on_second_device_while_first_is_current():
    x, p, lengths, upstream = make_inputs((3, 70, 40, 90), seed=23, dtype=torch.bfloat16)
    results = []
    for device in ("cuda:0", "cuda:1"):
        xd, pd, ld, ud = (t.to(device) for t in (x, p, lengths, upstream))
        with torch.cuda.device(xd.device):
            saved = _forward_saved(xd, pd, ld, 0.5)
        assert torch.cuda.current_device() == 0
        dx, dp = triton_op.prototype_mil_backward(ud, xd, pd, *saved, 0.5, None, True, True, True)
        results.append((dx.cpu(), dp.cpu()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.skipif(not ON_GPU, reason="GPU tile sizes (64-128 frames, prototypes and features) need a CUDA device")
@pytest.mark.parametrize("shape", [(2, 300, 1024, 1025), (3, 129, 1280, 1000)])
def test_backward_across_gpu_tiles_bf16(shape):
    # bf16 as in REDUCED_TOLS; lengths from make_inputs (ragged, the last one full)
    x, p, lengths, upstream = make_inputs(shape, seed=24, dtype=torch.bfloat16)
    out, dx, dp, fisher = run_op(x, p, lengths, 0.5, upstream)
    check_against_reference(out, dx, dp, fisher, x, p, lengths, 0.5, upstream, REDUCED_TOLS[torch.bfloat16])


def test_backward_config_families_follow_dtype_and_precision(monkeypatch):
    # The GPU config lists (the interpreter keeps one config): each launch keeps its own family.
    monkeypatch.setattr(kernels, "INTERPRET", False)
    rows16, rows_tf32, rows_fma = [(64, 64, 64, 4, 3)], [(64, 64, 32, 8, 3), (32, 64, 32, 4, 3)], [(32, 32, 32, 4, 3)]
    configs, prune = kernels._precision_family_configs(("BLOCK_R", "BLOCK_K", "BLOCK_C"), (16, 16, 32, 4, 1),
                                                       rows16, rows_tf32, rows_fma)
    prune = prune["early_config_prune"]
    assert len(configs) == 4

    def kept(dtype, precision):
        args = {"x_ptr": torch.empty(1, dtype=dtype)}
        return [(c.kwargs["BLOCK_R"], c.kwargs["BLOCK_K"], c.kwargs["BLOCK_C"], c.num_warps, c.num_stages)
                for c in prune(configs, args, DOT_PRECISION=precision)]

    assert kept(torch.bfloat16, "tf32") == rows16 and kept(torch.float16, "tf32") == rows16
    assert kept(torch.float32, "tf32x3") == rows_tf32 and kept(torch.float32, "tf32") == rows_tf32
    assert kept(torch.float32, "ieee") == rows_fma
