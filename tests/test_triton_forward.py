"""The fused forward's own machinery: the packed max key, split-K, clamped lengths, no host syncs.

Runs under Triton's CPU interpreter without a GPU (conftest.py sets TRITON_INTERPRET=1); the
cross-tile value checks against the float64 reference live in test_triton_op.py and
test_triton_gpu.py.
"""

from __future__ import annotations

import pytest
import torch
from naive import naive_prototype_mil, random_lengths

triton = pytest.importorskip("triton", reason="the fused backend needs triton")
import triton.language as tl  # noqa: E402

from lpmn_fast import prototype_mil  # noqa: E402
from lpmn_fast.kernels import prototype_mil as kernels  # noqa: E402
from lpmn_fast.kernels.prototype_mil import _max_key  # noqa: E402
from lpmn_fast.ops import triton_op  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type != "cuda" and not kernels.INTERPRET:
    pytest.skip("no CUDA device and TRITON_INTERPRET unset (conftest.py sets it)", allow_module_level=True)


@triton.jit
def _encode_keys(u_ptr, t_ptr, out_ptr, N, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    mask = i < N
    u = tl.load(u_ptr + i, mask=mask, other=0.0)
    t = tl.load(t_ptr + i, mask=mask, other=0)
    tl.store(out_ptr + i, _max_key(u, t), mask=mask)


def encode(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The kernels' key of each (u, t), through the same @triton.jit helper the forward uses."""
    out = torch.empty(u.shape, dtype=torch.int64, device=u.device)
    _encode_keys[(1,)](u, t, out, u.numel(), BLOCK=triton.next_power_of_2(u.numel()))
    return out


# u = log2 s <= 0 in the kernels: zero (s = 1), subnormal and tiny u, the fp32 range where exp2(u)
# is subnormal (u in (-149, -126): the values the GPU's ex2.approx.ftz flushed to 0), below it, and
# -inf. Positive u (rounding could give +1 ulp) must still order correctly.
U_VALUES = [0.0, -0.0, -1e-45, -1e-40, -1e-38, -1e-7, -0.5, -1.0, -100.0, -126.0, -126.5, -130.0, -140.25, -148.9,
            -149.5, -160.0, -1e30, float("-inf"), 1e-45, 1e-7]


def test_key_round_trips_u_bits_and_frames():
    u = torch.tensor(U_VALUES, dtype=torch.float32, device=DEVICE)
    t = torch.arange(len(U_VALUES), dtype=torch.int64, device=DEVICE) * 977 % 1500
    pooled, frame_index = triton_op._unpack_maxima(encode(u, t))
    assert torch.equal(frame_index, t)
    # pooled is exp2 of u's exact bits (-0.0 is stored as +0.0: the same s), computed in torch
    expected = torch.exp2(torch.where(u == 0, 0.0, u))
    assert torch.equal(pooled.view(torch.int32), expected.view(torch.int32))
    # subnormal s survive: 2**-130, 2**-140.25 and 2**-148.9 are not flushed to zero
    sub = (u < -126) & (u > -149)
    assert torch.all(pooled[sub] > 0) and torch.all(pooled[sub] < torch.finfo(torch.float32).tiny)


def test_key_order_is_the_reference_max_order():
    # Every pair: the larger key has the larger u, or the same u (-0.0 == +0.0) and the smaller frame,
    # i.e. the first maximum over t of s = exp2(u) computed without underflow (float64 for |u| <= 1000).
    g = torch.Generator().manual_seed(0)
    base = torch.tensor(U_VALUES, dtype=torch.float32)
    u = torch.cat([base, base, base[torch.randperm(len(base), generator=g)]])  # equal u at different frames
    t = torch.randperm(len(u), generator=g).to(torch.int64)
    keys = encode(u.to(DEVICE), t.to(DEVICE)).cpu()
    ui, uj = u[:, None], u[None, :]
    expected = (ui > uj) | ((ui == uj) & (t[:, None] < t[None, :]))
    assert torch.equal(keys[:, None] > keys[None, :], expected)
    # the max over a column of frames is the reference's first argmax of s
    s64 = torch.exp2(u.double().clamp_min(-1000))
    frames = torch.arange(len(u))
    for shift in range(5):
        order = torch.roll(frames, shift)  # same (u, frame) set, different positions in memory
        best = keys[order].argmax()
        ref = torch.where(s64[order] == s64.max(), t[order], len(u)).min()
        assert t[order][best] == ref
    assert bool(keys.min() > kernels.INT64_MIN)  # every real frame beats the start value


def forward_outputs(x, p, lengths, tau, slices=None, monkeypatch=None):
    if slices is not None:
        monkeypatch.setattr(triton_op, "_split_slices", lambda B, T, K, device: slices)
    return triton_op.prototype_mil_forward(x, p, lengths, tau)


@pytest.mark.parametrize("slices", [2, 3, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_k_forward_matches_single_launch(monkeypatch, slices, dtype):
    # K = 37 in slices of 16 prototypes (the interpreter's granule): [0, 16), [16, 32), [32, 37); 7
    # slices are capped at ceil(37 / 16) = 3. Frame tiles of 16 over T = 23, ragged lengths.
    g = torch.Generator().manual_seed(slices)
    B, T, C, K = 3, 23, 33, 37
    x = torch.randn(B, T, C, generator=g).to(DEVICE, dtype)
    p = (torch.randn(K, C, generator=g) * 2).to(DEVICE, dtype)
    lengths = random_lengths(B, T, g).to(DEVICE)
    one = forward_outputs(x, p, lengths, 0.3)
    split = forward_outputs(x, p, lengths, 0.3, slices, monkeypatch)
    names = ["pooled", "frame_index", "nearest", "pooled32", "lse2", "x_norm", "p_norm"]
    for name, a, b in zip(names, one, split):
        if a.dtype == torch.int64:
            assert torch.equal(a, b), name
        else:  # the slices' log-sum-exps merge in a different order: fp32 round-off only
            torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")
    ref_pooled, ref_frame, ref_nearest = naive_prototype_mil(x, p, lengths.cpu(), 0.3)
    assert torch.equal(split[2].cpu(), ref_nearest)
    torch.testing.assert_close(split[3].double().cpu(), ref_pooled, rtol=1e-5, atol=1e-7)


def test_split_k_full_op_matches_reference_with_gradients(monkeypatch):
    # Forward + backward through the public op with the split forward; the backward reads its lse2.
    from test_triton_op import FP32_TOLS, check_against_reference, make_inputs, run_op

    monkeypatch.setattr(triton_op, "_split_slices", lambda B, T, K, device: 3)
    x, p, lengths, upstream = make_inputs((3, 23, 33, 37), seed=77)
    out, dx, dp, fisher = run_op(x, p, lengths, 0.2, upstream)
    check_against_reference(out, dx, dp, fisher, x, p, lengths, 0.2, upstream, FP32_TOLS)


def test_split_k_ties_keep_the_smallest_index(monkeypatch):
    # Identical prototypes in different slices (3 and 20: slices [0, 16) and [16, 32)) and identical
    # frames in different tiles: integer data, exact dot products, exact ties.
    monkeypatch.setattr(triton_op, "_split_slices", lambda B, T, K, device: 3)
    g = torch.Generator().manual_seed(1)
    B, T, C, K = 2, 20, 8, 37
    x = torch.randint(-3, 4, (1, 1, C), generator=g).float().expand(B, T, C).clone()
    p = torch.randint(-3, 4, (K, C), generator=g).float()
    p[20] = p[3]
    x[1, 5] = p[3] * 2
    out = prototype_mil(x.to(DEVICE), p.to(DEVICE), backend="triton")
    assert torch.equal(out.frame_index[0].cpu(), torch.zeros(K, dtype=torch.int64))
    assert int(out.nearest[1, 5]) == 3


def test_split_decision_uses_shapes_only(monkeypatch):
    # Off CUDA the interpreter never splits by itself; on a device with 132 SMs, B * ceil(T / 64)
    # frame tiles below 132 split K into slices of a multiple of SPLIT_K_GRANULE, enough for every SM.
    assert triton_op._split_slices(1, 1500, 2048, torch.device("cpu")) == 1
    monkeypatch.setattr(triton_op, "_multiprocessor_count", lambda device: 132)
    monkeypatch.setattr(kernels, "SPLIT_BLOCK_T", 64)
    monkeypatch.setattr(kernels, "SPLIT_K_GRANULE", 128)
    cuda = torch.device("cuda", 0)
    assert triton_op._split_slices(128, 300, 1024, cuda) == 1  # the paper's batch: 640 tiles
    slices = triton_op._split_slices(1, 1500, 2048, cuda)  # 30 s of speech: 24 tiles
    width = triton_op._slice_width(2048, slices)
    assert width % 128 == 0 and slices == triton.cdiv(2048, width)
    assert 24 * slices >= 132
    assert triton_op._split_slices(8, 40, 100, cuda) == 1  # K fits one granule: nothing to split


def test_out_of_range_lengths_are_clamped_inside_the_kernels():
    # On CUDA the length check is asynchronous, so the kernels must survive bad lengths on their own:
    # 0 acts as 1 and T + 5 as T, every index stays in range (here called past the validation).
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 20, 9, generator=g).to(DEVICE)
    p = torch.randn(11, 9, generator=g).to(DEVICE)
    bad = torch.tensor([0, 25, -3], device=DEVICE)
    clamped = torch.tensor([1, 20, 1], device=DEVICE)
    got = triton_op.prototype_mil_forward(x, p, bad, 0.5)
    want = triton_op.prototype_mil_forward(x, p, clamped, 0.5)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert torch.all((got[1] >= 0) & (got[1] < clamped[:, None]))


def test_row_bucket_is_the_next_power_of_two():
    assert [triton_op._rows_bucket(n) for n in (1, 2, 3, 64, 65, 2400)] == [1, 2, 4, 64, 128, 4096]
    assert "ROWS_BUCKET" in kernels._prototype_mil_fwd.keys


def test_x_norm_is_written_by_the_kernel():
    # |x| comes from the forward kernel (no separate torch pass); 0 on padding, even NaN padding.
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 19, 40, generator=g) * 3
    x[0, 7:] = float("nan")
    lengths = torch.tensor([7, 19])
    out = triton_op.prototype_mil_forward(x.to(DEVICE), torch.randn(5, 40, generator=g).to(DEVICE),
                                          lengths.to(DEVICE), 1.0)
    x_norm = out[5].cpu()
    torch.testing.assert_close(x_norm[0, :7], x[0, :7].norm(dim=-1), rtol=1e-6, atol=0)
    torch.testing.assert_close(x_norm[1], x[1].norm(dim=-1), rtol=1e-6, atol=0)
    assert torch.all(x_norm[0, 7:] == 0)


class _RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


# aten ops that copy a value to the host (a device sync on CUDA) or size a result by data
SYNCING_OPS = {"aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.is_nonzero", "aten.equal",
               "aten.masked_select", "aten.unique", "aten._unique2", "aten.allclose"}


def test_forward_host_glue_reads_nothing_back():
    # The CPU stand-in for the GPU test under torch.cuda.set_sync_debug_mode("error"): the host code
    # around the forward kernels dispatches no op that reads a device value on the host. (The
    # interpreter's launches themselves read memory directly, not through aten ops.)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 21, 33, generator=g).to(DEVICE)
    p = torch.randn(37, 33, generator=g).to(DEVICE)
    lengths = torch.tensor([21, 5], device=DEVICE)
    triton_op.prototype_mil_forward(x, p, lengths, 0.5)  # warm-up (autotuning syncs on a GPU)
    with _RecordOps() as mode:
        triton_op.prototype_mil_forward(x, p, lengths, 0.5)
    assert mode.ops, "the dispatch mode saw no op at all"
    assert not SYNCING_OPS & set(mode.ops), sorted(SYNCING_OPS & set(mode.ops))


def test_packed_tiles_spanning_many_utterances():
    # The one-launch forward packs valid frames: with lengths this short a 16-frame tile holds the end
    # of one utterance, several whole ones and the start of another (the element-wise middle path).
    g = torch.Generator().manual_seed(8)
    lengths = torch.tensor([3, 2, 5, 1, 20, 4, 1, 1, 9])
    B, T, C, K = len(lengths), 20, 12, 21
    x = torch.randn(B, T, C, generator=g)
    x[torch.arange(T) >= lengths[:, None]] = float("nan")  # padding is never read
    p = torch.randn(K, C, generator=g)
    pooled, frame_index, nearest, *_ = triton_op.prototype_mil_forward(x.to(DEVICE), p.to(DEVICE),
                                                                      lengths.to(DEVICE), 0.4)
    ref_pooled, ref_frame, ref_nearest = naive_prototype_mil(x, p, lengths, 0.4)
    assert torch.equal(frame_index.cpu(), ref_frame) and torch.equal(nearest.cpu(), ref_nearest)
    torch.testing.assert_close(pooled.double().cpu(), ref_pooled, rtol=1e-5, atol=1e-7)


def test_config_families_follow_dtype_and_precision(monkeypatch):
    # The GPU lists (built here with INTERPRET off): 16-bit inputs get the wgmma rows, fp32 at
    # "high"/"medium" the fp32 tensor-core rows, fp32 at "highest" the FMA rows.
    monkeypatch.setattr(kernels, "INTERPRET", False)
    configs, prune = kernels._precision_family_configs(("BLOCK_T", "BLOCK_K", "BLOCK_C"), (16, 16, 32, 4, 1),
                                                       [(64, 64, 64, 4, 3)], [(64, 64, 32, 8, 3)], [(32, 64, 16, 4, 3)])
    prune = prune["early_config_prune"]

    def picked(dtype, precision):
        named = {"x_ptr": torch.empty(1, dtype=dtype)}
        return [(c.kwargs["BLOCK_C"], c.num_warps) for c in prune(configs, named, DOT_PRECISION=precision)]

    assert picked(torch.bfloat16, "tf32") == picked(torch.float16, "tf32") == [(64, 4)]
    assert picked(torch.float32, "tf32x3") == picked(torch.float32, "tf32") == [(32, 8)]
    assert picked(torch.float32, "ieee") == [(16, 4)]
