"""The benchmark suite's non-timing logic: cases and shapes, ragged lengths, derived figures, reports.

No timing here: the numbers below are made up to check arithmetic and rendering.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import report
from benchmarks.cases import (
    LENGTH_MEDIAN_FRACTION,
    MODES,
    PAPER_SHAPE,
    PROFILES,
    Case,
    matmul_cases,
    op_cases,
    resolve_profile,
    train_cases,
    useful_flops,
    utterance_lengths,
)
from benchmarks.common import choose_rounds, device_slug


# ---- cases -------------------------------------------------------------------------------------

def test_useful_flops_counts_similarity_passes():
    assert useful_flops(2, 3, 5, 7, 1) == 2 * 2 * 3 * 5 * 7
    case = Case("op", "eager", "full", 128, 300, 1024, 1024, "bfloat16")
    assert case.passes == 3 and case.flops == 3 * 2 * 128 * 300 * 1024 * 1024
    assert Case("op", "eager", "forward", 1, 2, 3, 4, "float32").passes == 1
    assert Case("op", "eager", "backward", 1, 2, 3, 4, "float32").passes == 2
    assert Case("train_step", "eager", "train_step", 1, 2, 3, 4, "float32").passes == 2
    assert Case("matmul", "torch.matmul", "tf32", 1, 2, 3, 4, "float32").passes == 1


@pytest.mark.parametrize("B,T", [(128, 300), (7, 1500), (3, 1), (1, 50)])
def test_utterance_lengths_are_valid_and_reproducible(B, T):
    lengths = utterance_lengths(B, T, seed=3)
    assert lengths.dtype == torch.int64 and lengths.shape == (B,)
    assert int(lengths.min()) >= 1 and int(lengths.max()) == T and int(lengths[0]) == T
    assert torch.equal(lengths, utterance_lengths(B, T, seed=3))


def test_utterance_lengths_follow_the_documented_distribution():
    T = 1000
    ratio = utterance_lengths(20000, T, seed=0)[1:].double() / T
    assert abs(float(ratio.median()) - LENGTH_MEDIAN_FRACTION) < 0.02
    # log-normal with sigma 0.5 and median 0.6: P(length reaches T) = P(z > ln(1/0.6)/0.5) ~ 0.15
    assert 0.12 < float((ratio == 1).double().mean()) < 0.18
    assert not torch.equal(utterance_lengths(64, T, seed=0), utterance_lengths(64, T, seed=1))


def test_gpu_profile_covers_the_issue():
    cases = op_cases(PROFILES["gpu"])
    keys = [(c.provider, c.mode, c.shape, c.dtype) for c in cases]
    assert len(keys) == len(set(keys)), "a shape in several sweeps must be measured once"
    for dtype in ("bfloat16", "float32"):
        for mode in MODES:
            for provider in ("triton", "eager", "compile", "compile-max-autotune"):
                assert (provider, mode, PAPER_SHAPE, dtype) in keys
    k_sweep = {c.K for c in cases if "K" in c.sweeps}
    t_sweep = {c.T for c in cases if "T" in c.sweeps}
    assert min(k_sweep) == 128 and max(k_sweep) == 2048 and 1024 in k_sweep
    assert min(t_sweep) == 50 and max(t_sweep) == 1500 and 300 in t_sweep
    paper_full = next(c for c in cases if c.shape == PAPER_SHAPE and c.mode == "full" and c.dtype == "bfloat16"
                      and c.provider == "triton")
    assert set(paper_full.sweeps) == {"paper", "K", "T"}
    assert [c.priority for c in cases] == sorted(c.priority for c in cases)
    assert {c.provider for c in cases[:3]} == {"triton", "eager", "compile"}
    assert all(c.mode == "full" and c.dtype == "bfloat16" and c.shape == PAPER_SHAPE for c in cases[:3])


def test_quick_profile_keeps_the_paper_shape_and_cuts_the_rest():
    cases = op_cases(PROFILES["gpu-quick"])
    autotune = [c for c in cases if c.provider == "compile-max-autotune"]
    assert [(c.dtype, c.mode, c.shape) for c in autotune] == [("bfloat16", "full", PAPER_SHAPE)]
    # Under a time budget: after the fused and eager sweeps, before the compile sweep points.
    first_compile_sweep = min(i for i, c in enumerate(cases) if c.provider == "compile" and "paper" not in c.sweeps)
    last_eager_sweep = max(i for i, c in enumerate(cases) if c.provider == "eager")
    assert last_eager_sweep < cases.index(autotune[0]) < first_compile_sweep
    assert len(cases) < len(op_cases(PROFILES["gpu"]))
    assert [c.provider for c in train_cases(PROFILES["gpu-quick"])] == ["triton", "eager"]


def test_cpu_profile_is_small_and_has_no_autotune():
    cases = op_cases(PROFILES["cpu"]) + train_cases(PROFILES["cpu"])
    paper_work = PAPER_SHAPE[0] * PAPER_SHAPE[1] * PAPER_SHAPE[2] * PAPER_SHAPE[3]
    assert all(c.B * c.T * c.C * c.K * 300 <= paper_work for c in cases)
    assert not any(c.provider == "compile-max-autotune" for c in cases)
    assert any(c.provider == "triton" for c in cases), "recorded as skipped on the CPU, with a reason"


def test_matmul_cases_add_tf32_on_cuda_only():
    assert [c.mode for c in matmul_cases(PROFILES["gpu"], cuda=True)] == ["default", "default", "tf32"]
    assert [c.mode for c in matmul_cases(PROFILES["gpu"], cuda=False)] == ["default", "default"]


def test_resolve_profile():
    assert resolve_profile("auto", True).name == "gpu"
    assert resolve_profile("auto", False).name == "cpu"
    assert resolve_profile("gpu-quick", False).name == "gpu-quick"
    with pytest.raises(ValueError, match="unknown benchmark profile"):
        resolve_profile("tpu", False)


def test_choose_rounds_and_device_slug():
    assert choose_rounds(0.01, 1.0, (10, 50)) == 50
    assert choose_rounds(0.05, 1.0, (10, 50)) == 20
    assert choose_rounds(2.0, 1.0, (10, 50)) == 10
    assert device_slug({"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"
    assert device_slug({"type": "cpu", "name": "AMD EPYC 7B13"}) == "cpu-amd-epyc-7b13"


# ---- derived figures and rendering ------------------------------------------------------------

def _record(kind, provider, mode, dtype, median, mem=None, shape=(2, 10, 8, 4), sweeps=("paper",), **extra):
    B, T, C, K = shape
    case = Case(kind, provider, mode, B, T, C, K, dtype, tuple(sweeps))
    return {**case.describe(), "status": "ok", "peak_mem_bytes": mem,
            "time_s": {"median": median, "q1": median * 0.9, "q3": median * 1.1, "rounds": 10}, **extra}


def _doc(records):
    return {"created": "2026-01-01 00:00 UTC", "profile": "test",
            "device": {"type": "cuda", "name": "Test GPU", "capability": "9.0", "multiprocessors": 1},
            "versions": {"torch": "0.0", "triton": "0.0", "cuda": "0.0"},
            "settings": {"length_distribution": "test lengths"}, "records": records}


def test_derive_speedups_memory_ratios_and_matmul_fraction():
    shape = (2, 10, 8, 4)
    flops_1pass = useful_flops(*shape, 1)
    records = [
        _record("matmul", "torch.matmul", "default", "float32", flops_1pass / 4e12),  # 4 TFLOP/s: the run's setting
        _record("matmul", "torch.matmul", "tf32", "float32", flops_1pass / 8e12),  # 8 TFLOP/s: information only
        _record("op", "triton", "full", "float32", 1e-3, mem=100),
        _record("op", "eager", "full", "float32", 5e-3, mem=2000),
        _record("op", "compile", "full", "float32", 2e-3, mem=None),
        {**Case("op", "compile-max-autotune", "full", *shape, "float32").describe(), "status": "skipped",
         "reason": "time budget"},
    ]
    out = {(r["kind"], r["provider"], r["mode"]): r for r in report.derive(records)}
    triton = out["op", "triton", "full"]
    assert triton["tflops"] == pytest.approx(3 * flops_1pass / 1e-3 / 1e12)
    assert triton["matmul_fraction"] == pytest.approx((3 * flops_1pass / 1e-3) / 4e12)
    assert triton["speedup_vs"] == pytest.approx({"eager": 5.0, "compile": 2.0})
    assert triton["mem_ratio_vs"] == pytest.approx({"eager": 0.05})  # compile's memory unmeasured
    assert out["op", "eager", "full"]["speedup_vs"] == pytest.approx({"compile": 0.4})
    assert "tflops" not in out["op", "compile-max-autotune", "full"]
    assert out["matmul", "torch.matmul", "tf32"]["tflops"] == pytest.approx(8.0)
    assert "speedup_vs" not in out["matmul", "torch.matmul", "tf32"]
    # derive copies: the input records are left as they were
    assert "tflops" not in records[2]


def test_derive_pairs_only_identical_shape_dtype_and_mode():
    records = [_record("op", "triton", "full", "bfloat16", 1e-3),
               _record("op", "eager", "full", "float32", 5e-3),
               _record("op", "eager", "forward", "bfloat16", 5e-3),
               _record("op", "eager", "full", "bfloat16", 5e-3, shape=(2, 10, 8, 8))]
    assert report.derive(records)[0]["speedup_vs"] == {}


def _full_doc():
    recs = [_record("matmul", "torch.matmul", "default", "bfloat16", 1e-4, sweeps=("matmul",))]
    for K, (t_triton, t_eager) in {4: (1e-3, 4e-3), 8: (2e-3, 9e-3)}.items():
        sweeps = ("paper", "K") if K == 4 else ("K",)
        recs += [_record("op", "triton", "full", "bfloat16", t_triton, mem=10 * 2**20, shape=(2, 10, 8, K),
                         sweeps=sweeps),
                 _record("op", "eager", "full", "bfloat16", t_eager, mem=200 * 2**20, shape=(2, 10, 8, K),
                         sweeps=sweeps)]
    recs.append(_record("train_step", "eager", "train_step", "bfloat16", 3e-2, sweeps=("train",)))
    recs.append({**Case("op", "compile", "full", 2, 10, 8, 4, "bfloat16").describe(), "status": "failed",
                 "reason": "InductorError: a | b"})
    return _doc(recs)


def test_markdown_has_every_table_and_names_the_device():
    md = report.to_markdown(_full_doc())
    assert md.startswith("# Prototype-MIL benchmarks on Test GPU")
    assert "**Test GPU** (cuda, sm 9.0" in md
    assert "## Dense matmul reference" in md and "## Headline shape (B=2, T=10, C=8, K=4)" in md
    assert "| bfloat16 | full | triton | 1 [0.9–1.1] |" in md
    assert "| 4× | — | 0.05 | — |" in md  # triton vs eager: 4x faster, 5% of the memory
    assert "## Sweep over K (mode full, bfloat16, B=2, T=10, C=8): median ms" in md
    assert "| 8 | 2 | 9 | 4.5× |" in md
    assert "## Head-only training step" in md
    assert "failed: InductorError: a \\| b" in md  # the pipe is escaped, the table stays whole
    assert "test lengths" in md


def test_markdown_marks_unmeasured_memory():
    doc = _doc([_record("op", "eager", "full", "float32", 1e-3, mem=None)])
    doc["memory_note"] = "CPU: not measured"
    md = report.to_markdown(doc)
    assert "| n/m |" in md and "CPU: not measured" in md


def test_summary_lists_the_headline_rows():
    text = report.summary(_full_doc())
    assert "Test GPU" in text.splitlines()[0]
    assert any(line.startswith("bfloat16  full       triton") for line in text.splitlines())
    assert "matmul bfloat16 default" in text
    assert "1 case(s) not measured" in text


def test_render_writes_markdown_and_png(tmp_path):
    path = tmp_path / "res.json"
    path.write_text(json.dumps(_full_doc()))
    written = report.main([str(path)]) == 0 and sorted(p.name for p in tmp_path.iterdir())
    assert written == ["res.json", "res.md", "res.png"]
    assert (tmp_path / "res.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_draws_nothing_without_sweeps(tmp_path):
    doc = _doc([_record("op", "eager", "full", "float32", 1e-3)])
    assert report.plot(doc, tmp_path / "x.png") is False
    assert not (tmp_path / "x.png").exists()
