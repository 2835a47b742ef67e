"""The byte-and-FLOP ledger (benchmarks/roofline.py) against counts made by hand on small shapes.

Everything runs on meta tensors: no kernel executes, so these tests are fast and need no GPU.
Under pytest the kernels module holds its interpreter config (TRITON_INTERPRET=1, conftest.py):
the fused kernels' hand counts below are made for those tiles.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import roofline
from lpmn_fast.kernels import prototype_mil as kernels
from lpmn_fast.ops.triton_cost import LaunchData, launch_cost

# Odd sizes that cross every interpreter tile (16 frames x 16 prototypes x 32 features).
SHAPE = (3, 40, 33, 37)  # B, T, C, K
LENGTHS = [40, 17, 1]
BF16, F32, I64 = 2, 4, 8


def _ledger(provider, mode, dtype=torch.bfloat16):
    (p,) = roofline.build_ledger(SHAPE, dtype, LENGTHS, providers=(provider,), modes=(mode,))
    return p


def _interpreter_tiles(configs, names):
    assert len(configs) == 1, "tests run the kernels module in interpreter mode (one config)"
    tiles = tuple(configs[0].kwargs[n] for n in names)
    return tiles


# ---- the dispatch mode ------------------------------------------------------------------------

def _count(fn, data=LaunchData()):
    ledger = roofline.OpLedger(data)
    with ledger:
        fn()
    return ledger.launches


def test_matmul_counts_flops_and_operand_bytes():
    a = torch.empty(4, 5, device="meta")
    b = torch.empty(5, 6, device="meta")
    (mm,) = _count(lambda: a @ b)
    assert mm.name == "mm" and mm.flops == 2 * 4 * 5 * 6
    assert mm.hbm_bytes == (4 * 5 + 5 * 6 + 4 * 6) * F32
    assert mm.path == "fp32"  # float32 at torch's default "highest" precision: CUDA-core FMA
    a16, b16 = a.bfloat16(), b.bfloat16()
    (mm16,) = _count(lambda: a16 @ b16)
    assert mm16.path == "bf16" and mm16.hbm_bytes == (20 + 30 + 24) * BF16


def test_gathers_and_scatters_count_only_the_rows_they_touch():
    x = torch.empty(10, 8, device="meta")
    idx = torch.empty(3, dtype=torch.int64, device="meta")
    src = torch.empty(3, 8, device="meta")
    gather, scatter = _count(lambda: (x[idx], x.index_copy_(0, idx, src)))
    assert gather.name == "index.Tensor" and gather.hbm_bytes == 3 * 8 * F32 * 2 + 3 * I64
    assert scatter.name == "index_copy_" and scatter.hbm_bytes == 3 * 8 * F32 * 2 + 3 * I64


def test_views_cost_nothing_and_broadcasts_count_once():
    x = torch.empty(6, 7, device="meta")
    row = torch.empty(7, device="meta")
    launches = _count(lambda: (x.t(), x.view(42), x * row[None, :]))
    assert [l.name for l in launches] == ["mul.Tensor"]
    assert launches[0].hbm_bytes == (42 + 7 + 42) * F32


def test_nonzero_takes_the_modelled_size_and_is_a_host_sync():
    mask = torch.empty(12, dtype=torch.bool, device="meta")
    out = {}
    (nz,) = _count(lambda: out.setdefault("rows", torch.nonzero(mask)), LaunchData(active_rows=5))
    assert out["rows"].shape == (5, 1) and nz.sync
    with pytest.raises(RuntimeError, match="active_rows"):
        _count(lambda: torch.nonzero(mask))


def test_expected_active_rows():
    assert roofline.expected_active_rows([1, 1], K=9) == 2  # one frame wins everything
    assert roofline.expected_active_rows([4], K=2) == 2  # 4 * (1 - (3/4)^2) = 1.75
    assert roofline.expected_active_rows([300], K=1) == 1


# ---- the fused kernels, by hand -----------------------------------------------------------------

def test_fused_forward_matches_hand_counts(monkeypatch):
    from lpmn_fast.ops import triton_op

    monkeypatch.setattr(triton_op, "_split_slices", lambda B, T, K, device: 1)  # one launch, no split-K
    BT, BK, BC = _interpreter_tiles(kernels.FWD_CONFIGS, ("BLOCK_T", "BLOCK_K", "BLOCK_C"))
    assert (BT, BK, BC) == (16, 16, 32), "interpreter tiles changed: redo the hand counts below"
    p = _ledger("triton", "forward")
    names = [l.name for l in p.launches]
    assert names.count("_prototype_mil_fwd") == 1 and not any("split" in n for n in names)
    fwd = p.launches[names.index("_prototype_mil_fwd")]
    # the 58 valid frames packed into tiles of 16: 4 computing tiles of the cdiv(3 * 40, 16) = 8 programs;
    # K 37 -> 48, C 33 -> 64
    assert fwd.programs == 8
    assert fwd.flops == 2 * (2 * 4 * 16 * 48 * 64)  # two sweeps over K
    x_reads = (2 * 3 + 1) * 58 * 33 * BF16  # |x| pass + 2 sweeps x 3 K tiles, 58 valid rows
    assert fwd.hbm_bytes == (x_reads + 37 * 33 * BF16 + 37 * F32 + 4 * I64
                             + 58 * (F32 + F32 + I64) + 3 * 37 * I64)
    assert fwd.x_rereads == x_reads - 58 * 33 * BF16
    # host glue: |p| only (|x| is fused into the kernel), then the keys' initial fill
    (norm,) = [l for l in p.launches if l.name == "linalg_vector_norm"]
    assert norm.hbm_bytes == 37 * 33 * BF16 + 37 * F32
    assert p.useful_flops == 2 * 58 * 37 * 33
    assert p.flops == fwd.flops  # no other launch does a matmul


def test_split_k_forward_matches_hand_counts(monkeypatch):
    from lpmn_fast.ops import triton_op

    monkeypatch.setattr(triton_op, "_split_slices", lambda B, T, K, device: 3)
    assert kernels.SPLIT_K_GRANULE == 16 and kernels.SPLIT_BLOCK_T == 16
    p = _ledger("triton", "forward")
    lse, mx = ([l for l in p.launches if l.name == f"_prototype_mil_fwd_split_{n}"] for n in ("lse", "max"))
    assert len(lse) == len(mx) == 1
    # 3 slices 16 wide (16, 16, 5 prototypes), each one K tile: together the same dots as one launch
    assert lse[0].programs == mx[0].programs == 3 * 3 * 3
    assert lse[0].flops == mx[0].flops == 3 * (2 * 6 * 16 * 16 * 64)
    assert lse[0].flops + mx[0].flops == 2 * (2 * 6 * 16 * 48 * 64)  # per-utterance tiles: 3 + 2 + 1


def test_modelled_gpu_splits_small_batches_only():
    # the interpreter's frame tile (SPLIT_BLOCK_T 16): 94 tiles at T = 1500 for 132 SMs, 8 * 94 at B = 8
    small, large = (roofline.build_ledger((B, 1500, 64, 512), torch.bfloat16, [1500] * B, providers=("triton",),
                                          modes=("forward",))[0] for B in (1, 8))
    assert "_prototype_mil_fwd_split_lse" in [l.name for l in small.launches]
    assert "_prototype_mil_fwd" in [l.name for l in large.launches]


def test_fused_backward_dcos_matches_hand_counts():
    B, T, C, K = SHAPE
    BR, BK, BC = _interpreter_tiles(kernels.BWD_DCOS_CONFIGS, ("BLOCK_R", "BLOCK_K", "BLOCK_C"))
    p = _ledger("triton", "backward")
    n = roofline.expected_active_rows(LENGTHS, K)
    (dcos,) = [l for l in p.launches if l.name == "_prototype_mil_bwd_dcos"]
    R = B * min(T, K)  # one chunk holds the worst case, 111 frames
    n_r, n_k = math.ceil(n / BR), math.ceil(K / BK)
    # one program per (row tile, K tile), fixed by the shapes; programs past n exit
    assert dcos.programs == math.ceil(R / BR) * n_k
    assert dcos.flops == 2 * (n_r * BR) * (n_k * BK) * (math.ceil(C / BC) * BC)
    # the K-tile programs of a row tile run together: x rows cross DRAM once (rule 2), issued once per K tile
    assert dcos.x_rereads == 0
    assert dcos.issued_bytes - dcos.hbm_bytes >= (n_k - 1) * n * C * BF16
    # r is computed once per chunk by its own launch, not by every K tile's program
    (rw,) = [l for l in p.launches if l.name == "_prototype_mil_bwd_row_weights"]
    assert rw.programs == math.ceil(R / kernels.ROW_WEIGHTS_BLOCK_R) and rw.flops == 0
    assert rw.hbm_bytes >= n * (8 + 4)  # each active frame's row index read and its r written
    (dx,) = [l for l in p.launches if l.name == "_prototype_mil_bwd_dx"]
    DR, DK, DC = _interpreter_tiles(kernels.BWD_DX_CONFIGS, ("BLOCK_R", "BLOCK_K", "BLOCK_C"))
    assert dx.flops == 2 * (math.ceil(n / DR) * DR) * (math.ceil(K / DK) * DK) * (math.ceil(C / DC) * DC)
    assert not any(l.sync for l in p.launches)  # the backward never waits for the host
    assert p.useful_flops == 2 * 2 * 58 * 37 * 33


def test_every_launch_of_a_kernel_without_a_cost_function_fails_loudly():
    with pytest.raises(KeyError, match="no cost function for Triton kernel '_new_kernel'"):
        launch_cost("_new_kernel", {}, (1, 1, 1), LaunchData())


def test_kernels_are_restored_after_the_ledger():
    before = kernels._prototype_mil_fwd
    _ledger("triton", "full")
    assert kernels._prototype_mil_fwd is before


# ---- the eager reference and the compile estimate ----------------------------------------------

def test_eager_forward_has_one_padded_similarity_gemm():
    B, T, C, K = SHAPE
    p = _ledger("eager", "forward")
    gemms = [l for l in p.launches if l.flops]
    assert len(gemms) == 1 and gemms[0].flops == 2 * B * T * K * C
    assert gemms[0].path == "fp32"  # bf16 inputs are computed in float32


def test_compile_estimate_keeps_eager_gemms_and_one_read_of_each_result():
    B, T, C, K = SHAPE
    eager, comp = roofline.build_ledger(SHAPE, torch.bfloat16, LENGTHS, providers=("eager", "compile"),
                                        modes=("forward",))
    assert comp.provider == "compile" and comp.flops == eager.flops
    assert comp.hbm_bytes == (B * T * C + K * C + B * T * K) * F32 + B * T * K * F32
    assert "estimate" in comp.note


def test_full_pass_is_forward_plus_backward_with_fisher():
    fwd, bwd, full = (_ledger("triton", m) for m in ("forward", "backward", "full"))
    assert full.flops == fwd.flops + bwd.flops and full.flops > 0
    assert full.hbm_bytes > fwd.hbm_bytes + bwd.hbm_bytes  # the Fisher partials add bytes, never remove


# ---- modelled time, output, command line ---------------------------------------------------------

def test_modelled_time_is_the_roofline_max():
    h200 = roofline.MACHINES["H200"]
    l = roofline.Launch("x", "torch", flops=788e12, hbm_bytes=int(4.3e12) * 2, issued_bytes=0)
    assert l.time(h200) == pytest.approx(2.0) and l.bound(h200) == "memory"
    l = roofline.Launch("x", "torch", flops=788e12 * 3, hbm_bytes=int(4.3e12))
    assert l.time(h200) == pytest.approx(3.0) and l.bound(h200) == "compute"


def test_modelled_matmul_case():
    m = roofline.modelled("matmul", "torch.matmul", "default", (2, 8, 16, 32), "bfloat16", 0)
    assert m["flops"] == 2 * 16 * 16 * 32
    assert m["s"]["H100"] == pytest.approx(max(m["flops"] / 798e12, (16 * 16 + 16 * 32 + 16 * 32) * 2 / 3.0e12))


def test_replace_section_replaces_or_appends(tmp_path):
    path = tmp_path / "ledger.md"
    path.write_text(roofline.replace_section(path, "Before", "old"))
    path.write_text(roofline.replace_section(path, "After", "new"))
    text = roofline.replace_section(path, "Before", "newer")
    assert text.index("## Before") < text.index("## After")
    assert "old" not in text and "newer" in text and "new\n" in text


def test_command_line_writes_the_summary_section(tmp_path, capsys):
    out = tmp_path / "ledger.md"
    assert roofline.main(["--shape", "3,40,33,37", "--summary", "--provider", "triton", "--md", str(out),
                          "--section", "Before"]) == 0
    text = out.read_text()
    assert "## Before" in text and "| triton | full |" in text and "B=3, T=40, C=33, K=37" in text
    assert "| triton | forward |" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["3,40,33", "a,b,c,d", "0,4,4,4"])
def test_command_line_rejects_bad_shapes(bad, capsys):
    with pytest.raises(SystemExit):
        roofline.main(["--shape", bad])
    assert "--shape" in capsys.readouterr().err


# ---- the benchmark report shows the model beside the measurement --------------------------------

def _measured(provider, median, model, estimate=False):
    from benchmarks.cases import Case

    case = Case("op", provider, "full", 2, 10, 8, 4, "bfloat16", ("paper",))
    return {**case.describe(), "status": "ok", "peak_mem_bytes": None,
            "time_s": {"median": median, "q1": median, "q3": median, "rounds": 5},
            "modelled": {"flops": 1, "hbm_bytes": 1, "s": model, "estimate": estimate}}


def _doc(device, records):
    return {"created": "2026-01-01 00:00 UTC", "profile": "test", "device": {"type": "cuda", "name": device},
            "versions": {}, "settings": {}, "records": records}


def test_report_divides_measured_by_the_model_of_its_own_gpu():
    from benchmarks import report

    records = [_measured("triton", 3e-3, {"H100": 1e-3, "H200": 2e-3}),
               _measured("compile", 8e-3, {"H100": 4e-3, "H200": 4e-3}, estimate=True)]
    out = report.derive(records, report.modelled_machine({"device": {"name": "NVIDIA H200"}}))
    assert out[0]["modelled_s"] == 2e-3 and out[0]["measured_over_modelled"] == pytest.approx(1.5)
    assert report.derive(records, "H100")[0]["measured_over_modelled"] == pytest.approx(3.0)
    assert "measured_over_modelled" not in report.derive(records, None)[0]
    md = report.to_markdown(_doc("NVIDIA H200", records))
    assert "| 1 / 2 | 1.5 |" in md  # model ms H100 / H200, then measured / modelled on the H200
    assert "| ~4 / ~4 | 2 |" in md  # the compile estimate is marked
    assert "meas / model: the median over the model of this run's GPU (H200)" in md
    assert "none for this device" in report.summary(_doc("Some GPU", records))


def test_benchmark_records_carry_the_model_of_measured_cases():
    from benchmarks.cases import Case
    from benchmarks.conftest import BenchEnv

    case = Case("op", "triton", "forward", 2, 10, 8, 4, "bfloat16", ("paper",))
    m = BenchEnv.modelled(case, "ok")["modelled"]
    assert m["flops"] > 0 and set(m["s"]) == {"H100", "H200"}
    assert BenchEnv.modelled(case, "skipped") == {}
    assert BenchEnv.modelled(Case("train_step", "triton", "train_step", 2, 10, 8, 4, "bfloat16"), "ok") == {}


def test_a_grid_smaller_than_the_gpu_gets_its_share_of_the_peaks():
    h100 = roofline.MACHINES["H100"]
    full = roofline.Launch("k", "triton", flops=int(798e12), hbm_bytes=0, programs=264)
    small = roofline.Launch("k", "triton", flops=int(798e12), hbm_bytes=0, programs=33)
    assert full.time(h100) == pytest.approx(1.0) and small.time(h100) == pytest.approx(4.0)
