"""The segment-hit measurement: its logic on constructed explanations, and its CLI on a tiny synthetic run."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from lpmn_fast.data.synthetic import generate_corpus
from lpmn_fast.explain_eval import main as eval_main
from lpmn_fast.explain_eval import segment_hits, summarise
from lpmn_fast.inference.chunks import FrameGeometry
from lpmn_fast.training import make_config, resolve
from lpmn_fast.training.build import build_model

GEOMETRY = FrameGeometry(shift=320, window=400)  # 20 ms frames, centres at 12.5 ms + 20 ms * t
# 100 frames; the segment [0.4, 0.8) s holds the centres of frames 20..39 (0.4125 .. 0.7925 s).
SEGMENT = (0.4, 0.8)
INSIDE = range(20, 40)


def _evidence(peaks: dict[int, float], cls: int = 2, T: int = 100, classes: int = 4) -> torch.Tensor:
    e = torch.zeros(T, classes)
    for t, v in peaks.items():
        e[t, cls] = v
    return e


def test_chance_is_the_share_of_frames_inside():
    hits = segment_hits(_evidence({25: 1.0}), None, [], [], 2, SEGMENT, GEOMETRY, top_n=5)
    assert hits["chance"] == pytest.approx(len(INSIDE) / 100)


def test_top_evidence_frames_inside_and_outside():
    # 3 positive frames inside, 2 outside with smaller values, 1 negative inside (never counted).
    e = _evidence({21: 3.0, 30: 2.5, 39: 2.0, 5: 1.0, 90: 0.5, 25: -4.0})
    top2 = segment_hits(e, None, [], [], 2, SEGMENT, GEOMETRY, top_n=2)
    assert top2["evidence_hit"] == 1.0
    top5 = segment_hits(e, None, [], [], 2, SEGMENT, GEOMETRY, top_n=5)
    assert top5["evidence_hit"] == pytest.approx(3 / 5)
    # More frames asked than have positive evidence: only the positive ones count.
    assert segment_hits(e, None, [], [], 2, SEGMENT, GEOMETRY, top_n=50)["evidence_hit"] == pytest.approx(3 / 5)
    # Mass: positive evidence inside over all positive evidence.
    assert top5["evidence_mass"] == pytest.approx(7.5 / 9.0)
    # Another class column has no positive evidence: undefined, not zero.
    other = segment_hits(e, None, [], [], 1, SEGMENT, GEOMETRY, top_n=5)
    assert other["evidence_hit"] is None and other["evidence_mass"] is None


def test_segment_edges_follow_frame_centres():
    # Frame 19's centre (0.3925 s) is before the start, frame 39's (0.7925 s) inside, frame 40's (0.8125 s) after.
    for t, inside in ((19, False), (20, True), (39, True), (40, False)):
        hit = segment_hits(_evidence({t: 1.0}), None, [], [], 2, SEGMENT, GEOMETRY, top_n=1)["evidence_hit"]
        assert hit == float(inside), t


def test_soft_evidence_and_winning_frames():
    soft = _evidence({10: 1.0, 30: 2.0})
    frames = [25, 25, 60, 70]  # two prototypes won frame 25: each counts
    supports = [True, False, True, False]
    hits = segment_hits(_evidence({30: 1.0}), soft, frames, supports, 2, SEGMENT, GEOMETRY, top_n=1)
    assert hits["soft_hit"] == 1.0
    assert hits["winner_hit"] == pytest.approx(2 / 4)
    assert hits["winner_hit_support"] == pytest.approx(1 / 2)  # frames 25 (inside) and 60 (outside)
    none = segment_hits(_evidence({30: 1.0}), None, frames, [False] * 4, 2, SEGMENT, GEOMETRY, top_n=1)
    assert none["soft_hit"] is None and none["winner_hit_support"] is None


def test_summary_averages_defined_values_only():
    records = [{"chance": 0.2, "evidence_hit": 1.0, "soft_hit": None, "winner_hit": 0.5, "winner_hit_support": 1.0,
                "evidence_mass": 0.5},
               {"chance": 0.4, "evidence_hit": None, "soft_hit": None, "winner_hit": 0.0, "winner_hit_support": 0.0,
                "evidence_mass": None}]
    s = summarise(records)
    assert s["utterances"] == 2 and s["chance"] == pytest.approx(0.3) and s["evidence_hit"] == 1.0
    assert s["evidence_hit_defined"] == 1 and s["soft_hit"] is None and s["soft_hit_defined"] == 0
    assert "chance_defined" not in s


def test_cli_on_a_synthetic_run(tmp_path, capsys):
    root = generate_corpus(tmp_path / "corpus", sessions=2, utterances_per_speaker=4, progress=False)
    run = tmp_path / "run"
    fields = dict(data="synthetic", data_dir=str(root), test_session=2, fbank_mel_bins=16, encoder_hidden=16,
                  num_prototypes=8, top_k=4, run_dir=str(run))
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(fields))
    torch.manual_seed(0)
    build_model(resolve(make_config(**fields)), 4).save_pretrained(run / "model", ["neutral", "happy", "angry", "sad"])

    assert eval_main([str(run), "--top-k", "3", "--plots", "1"]) == 0
    assert "non-neutral utterances" in capsys.readouterr().out
    results = json.loads((run / "explain_eval.json").read_text())
    segments = json.loads((root / "segments.json").read_text())
    (model,) = results["models"]
    records = model["utterances"]
    expected = sorted(u for u, s in segments.items() if s is not None and u.startswith("Ses02"))
    assert sorted(r["utt_id"] for r in records) == expected
    for r in records:  # chance from the segment and the duration, independently of the frame count
        seg = segments[r["utt_id"]]
        assert r["chance"] == pytest.approx((seg["end_s"] - seg["start_s"]) / r["duration_s"], abs=0.02)
    assert model["all"]["utterances"] == len(records) and len(list((run / "explain_eval").glob("*.png"))) == 1

    (run / "config.yaml").write_text(yaml.safe_dump({**fields, "data": "iemocap"}))
    assert eval_main([str(run)]) == 2
    assert "segment hits need the synthetic corpus" in capsys.readouterr().err
