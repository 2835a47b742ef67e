"""Do the frames an LPMN explanation marks lie in the emotional segment? Measured on the synthetic corpus.

    python -m lpmn_fast.explain_eval RUN_DIR [--top-n 5] [--top-k 10] [--plots 6]

RUN_DIR is an lpmn-train run on ``--data synthetic`` (it exported model/ and model-probe/). Every
non-neutral utterance of its held-out session (test_session: the validation and the test
speaker; neither was trained on) is predicted with its explanation and compared with the
segment recorded in the corpus's segments.json. Per utterance, with c the predicted class and
"inside" meaning the frame's centre lies in [start_s, end_s):

* chance: the fraction of the utterance's frames inside the segment, what a frame picked at
  random hits;
* evidence_hit: the fraction of the ``top_n`` frames with the largest positive evidence[t, c]
  (the exact per-frame split of the centred logit, lpmn_fast.inference.explanation) inside;
* soft_hit: the same for evidence_soft;
* winner_hit: the fraction of the ``top_k`` most important prototypes (Fisher importance) whose
  winning frame is inside; winner_hit_support: the same among those of them that support c
  (positive contribution to its centred logit);
* evidence_mass: the share of the positive evidence[:, c] that falls on frames inside.

Means over utterances are reported for all of them and for the correctly classified ones, per
model, in RUN_DIR/explain_eval.json; ``--plots N`` also draws the first N utterances with the
segment shaded, in RUN_DIR/explain_eval/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

from .data.atomic import write_text_atomic
from .inference.chunks import FrameGeometry

METRICS = ("chance", "evidence_hit", "soft_hit", "winner_hit", "winner_hit_support", "evidence_mass")


def segment_hits(evidence: torch.Tensor, evidence_soft: torch.Tensor | None, winning_frames: list[int],
                 supports: list[bool], cls: int, segment: tuple[float, float], geometry: FrameGeometry,
                 top_n: int) -> dict:
    """The per-utterance measures of the module docstring (None where undefined, e.g. no positive evidence).

    evidence, evidence_soft: (T, classes); winning_frames: one frame per top prototype (repeats
    allowed: each prototype counts); supports: per top prototype, whether it supports ``cls``;
    cls: the class explained; segment: (start_s, end_s).
    """
    T = evidence.shape[0]
    centres = torch.tensor([geometry.time_s(t) for t in range(T)])
    inside = (centres >= segment[0]) & (centres < segment[1])

    def top_hit(values: torch.Tensor | None) -> float | None:
        if values is None:
            return None
        positive = int((values > 0).sum())
        if positive == 0:
            return None
        top = torch.argsort(values, descending=True, stable=True)[:min(top_n, positive)]
        return float(inside[top].float().mean())

    def share_inside(frames: list[int]) -> float | None:
        return float(inside[torch.as_tensor(frames, dtype=torch.int64)].float().mean()) if frames else None

    column = evidence[:, cls]
    positive = column.clamp_min(0)
    return {
        "chance": float(inside.float().mean()),
        "evidence_hit": top_hit(column),
        "soft_hit": top_hit(None if evidence_soft is None else evidence_soft[:, cls]),
        "winner_hit": share_inside(winning_frames),
        "winner_hit_support": share_inside([f for f, s in zip(winning_frames, supports) if s]),
        "evidence_mass": float(positive[inside].sum() / positive.sum()) if positive.sum() > 0 else None,
    }


def summarise(records: list[dict]) -> dict:
    """Mean of each measure over the records where it is defined, and how many that is."""
    out = {"utterances": len(records)}
    for name in METRICS:
        values = [r[name] for r in records if r.get(name) is not None]
        out[name] = round(sum(values) / len(values), 4) if values else None
        if len(values) != len(records):
            out[f"{name}_defined"] = len(values)
    return out


def _run_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: is {run_dir} an lpmn-train run directory?")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _corpus_root(config: dict, override: Path | None) -> Path:
    if override is not None:
        return override
    if config.get("data") != "synthetic":
        raise ValueError(f"the run trained on {config.get('data')!r}: segment hits need the synthetic corpus "
                         "(its segments.json); pass --corpus DIR for another synthetic corpus")
    from .training.corpus import synthetic_root

    return synthetic_root(SimpleNamespace(**config))


def evaluate_model(model_dir: Path, utterances, segments: dict, top_n: int, top_k: int, plots: int,
                   plot_dir: Path) -> dict:
    """Segment hits of one saved model on ``utterances`` (non-neutral, with segments)."""
    from .inference import load
    from .inference.audio import SAMPLE_RATE, load_audio
    from .inference.plot import plot_explanation

    predictor = load(model_dir, top_k=top_k)
    if not predictor.explainable:
        return {"model": str(model_dir), "unsupported": predictor.unsupported}
    records = []
    for i, utt in enumerate(utterances):
        wave = load_audio(utt.path)
        p = predictor.predict(wave, SAMPLE_RATE)
        e = p.explanation
        seg = segments[utt.utt_id]
        segment = (seg["start_s"], seg["end_s"])
        cls = predictor.classes.index(p.label)
        frames = [q["frame"] for q in e.top_prototypes]
        supports = [q["contribution"][p.label] > 0 for q in e.top_prototypes]
        hits = segment_hits(e.evidence, e.evidence_soft, frames, supports, cls, segment, e.geometry, top_n)
        records.append({"utt_id": utt.utt_id, "label": utt.label, "predicted": p.label,
                        "correct": p.label == utt.label, "segment_s": list(segment),
                        "duration_s": round(p.duration_s, 3), **hits})
        if i < plots:
            plot_explanation(wave, e, plot_dir / f"{model_dir.name}-{utt.utt_id}.png",
                             f"{utt.utt_id} ({utt.label}) -> {p.label} ({p.probabilities[p.label]:.0%}); "
                             "shaded: the emotional segment", p.label, segment)
    return {"model": str(model_dir), "top_k": min(top_k, predictor.model.head.classifier.in_features),
            "all": summarise(records), "correct": summarise([r for r in records if r["correct"]]),
            "utterances": records}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpmn_fast.explain_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="lpmn-train run directory (synthetic corpus)")
    parser.add_argument("--corpus", type=Path, help="synthetic corpus root (default: the run's)")
    parser.add_argument("--top-n", type=int, default=5, help="frames of largest evidence counted (default 5 = 100 ms)")
    parser.add_argument("--top-k", type=int, default=10,
                        help="most important prototypes whose winning frames are counted (default 10)")
    parser.add_argument("--plots", type=int, default=0, help="draw the first N utterances (default 0)")
    parser.add_argument("--out", type=Path, help="JSON output (default RUN_DIR/explain_eval.json)")
    args = parser.parse_args(argv)
    from .data.iemocap import load_iemocap
    from .data.synthetic import read_segments

    try:
        config = _run_config(args.run_dir)
        root = _corpus_root(config, args.corpus)
        segments = read_segments(root)
        models = [args.run_dir / n for n in ("model-probe", "model") if (args.run_dir / n / "config.json").is_file()]
        if not models:
            raise FileNotFoundError(f"no exported model (model/ or model-probe/) in {args.run_dir}")
        session = int(config["test_session"])
        utterances = [u for u in load_iemocap(root).utterances
                      if u.session == session and segments.get(u.utt_id) is not None]
        if not utterances:
            raise ValueError(f"no non-neutral utterance of session {session} with a segment in {root}")
    except (FileNotFoundError, ValueError) as error:
        print(f"explain_eval: error: {error}", file=sys.stderr)
        return 2
    if args.top_n < 1 or args.top_k < 1:
        parser.error("--top-n and --top-k must be >= 1")
    results = {"run_dir": str(args.run_dir), "corpus": str(root), "session": session, "top_n": args.top_n,
               "measures": "defined in python -m lpmn_fast.explain_eval --help",
               "models": [evaluate_model(m, utterances, segments, args.top_n, args.top_k, args.plots,
                                         args.run_dir / "explain_eval") for m in models]}
    out = args.out or args.run_dir / "explain_eval.json"
    write_text_atomic(out, json.dumps(results, indent=1))
    print(f"session {session}: {len(utterances)} non-neutral utterances; frames inside the emotional segment "
          f"(top_n={args.top_n}, top_k={args.top_k}):")
    header = f"{'model':<12} {'subset':<8} {'n':>4} " + " ".join(f"{m:>{len(m)}}" for m in METRICS)
    print(header)
    for m in results["models"]:
        for subset in ("all", "correct"):
            if subset not in m:
                continue
            s = m[subset]
            cells = " ".join(f"{s[k]:>{len(k)}.3f}" if s[k] is not None else f"{'-':>{len(k)}}" for k in METRICS)
            print(f"{Path(m['model']).name:<12} {subset:<8} {s['utterances']:>4} {cells}")
            partial = [f"{k} on {s[k + '_defined']}" for k in METRICS if k + "_defined" in s]
            if partial:
                print(f"{'':<12} {'':<8} {'':>4} (defined only for some utterances: {', '.join(partial)})")
    print(f"details: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
