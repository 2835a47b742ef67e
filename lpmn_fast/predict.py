"""lpmn-predict: emotion of audio files with a trained model; for LPMN, which frames it rests on.

    lpmn-predict runs/demo a.wav b.flac              # table: label and class probabilities
    lpmn-predict runs/demo/model *.wav --json         # the same as JSON
    lpmn-predict runs/demo a.wav --explain out/       # + out/a.json and out/a.png (LPMN models)

CHECKPOINT is a save_pretrained directory (config.json + model.safetensors) or a training run
directory, whose model-probe/ (LPMN with the top-K' prototypes) or else model/ is used. Any
sample rate is resampled to 16 kHz, channels are averaged, long files run in chunks. A file
that cannot be used (missing, not audio, empty, silent, shorter than one frame) is reported on
stderr and the others still run; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data.atomic import write_text_atomic


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lpmn-predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="save_pretrained directory or training run directory")
    p.add_argument("audio", type=Path, nargs="+", help="audio files (WAV, FLAC, OGG, ...: whatever soundfile reads)")
    p.add_argument("--json", action="store_true", help="print a JSON list (one object per file, failed ones with "
                                                      "\"error\") instead of the table")
    p.add_argument("--explain", type=Path, metavar="DIR",
                   help="write DIR/<file stem>.json (winning frames, evidence timeline) and .png per file")
    p.add_argument("--top-k", type=int, help="the most important prototypes (Fisher importance) an explanation "
                                            "lists and marks (default 10)")
    p.add_argument("--chunk-seconds", type=float, default=30.0,
                   help="audio per chunk of a long file (default 30). Chunks combine exactly (max/mean pooling); "
                        "frame features are exact for fbank models, and for HuBERT models an approximation beyond "
                        "one chunk (attention sees the chunk plus --context-seconds)")
    p.add_argument("--context-seconds", type=float, default=2.0,
                   help="HuBERT models: extra audio each side of a chunk (default 2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--hubert-path", help="HuBERT models: the pretrained HuBERT directory, if not at the path "
                                         "recorded at training")
    p.add_argument("--kernel", choices=("auto", "triton", "torch"), help="prototype-MIL backend (default: as saved)")
    p.add_argument("--precision", choices=("auto", "fp32", "tf32", "bf16", "fp16"), default="auto",
                   help="numeric precision: bf16/fp16 run the model under autocast (the op on 16-bit inputs), "
                        "tf32 allows TF32 tensor-core matmuls; auto = bf16 on a GPU that supports it, else fp32 "
                        "(default auto)")
    return p


def format_table(rows: list[tuple[str, object]], classes: list[str]) -> str:
    """One line per predicted file: file, label, probability per class."""
    names = [name for name, p in rows]
    width = max([len("file")] + [len(n) for n in names])
    label_w = max([len("label")] + [len(c) for c in classes])
    col = [max(6, len(c)) for c in classes]
    lines = ["  ".join([f"{'file':<{width}}", f"{'label':<{label_w}}"] + [f"{c:>{w}}" for c, w in zip(classes, col)])]
    for name, p in rows:
        lines.append("  ".join([f"{name:<{width}}", f"{p.label:<{label_w}}"]
                               + [f"{p.probabilities[c]:>{w}.3f}" for c, w in zip(classes, col)]))
    return "\n".join(lines)


def _stems(paths: list[Path]) -> list[str]:
    """Output names per input: the file stem, numbered when two inputs share one."""
    seen: dict[str, int] = {}
    out = []
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        out.append(path.stem if seen[path.stem] == 1 else f"{path.stem}-{seen[path.stem]}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .inference import InputError, load  # after parsing: --help stays fast
    from .inference.audio import SAMPLE_RATE, load_audio
    from .training.precision import Precision

    options = {"chunk_seconds": args.chunk_seconds, "context_seconds": args.context_seconds}
    if args.top_k is not None:
        options["top_k"] = args.top_k
    try:
        predictor = load(args.checkpoint, device=args.device, hubert_path=args.hubert_path, kernel=args.kernel,
                         **options)
    except (FileNotFoundError, ValueError, TypeError) as error:
        print(f"lpmn-predict: error: cannot load the model: {error}", file=sys.stderr)
        return 2
    try:
        precision = Precision.create(args.precision, next(predictor.model.parameters()).device)
    except ValueError as error:
        print(f"lpmn-predict: error: {error}", file=sys.stderr)
        return 2
    if args.explain and not predictor.explainable:
        print(f"lpmn-predict: note: {predictor.unsupported}", file=sys.stderr)

    rows, records, failed = [], [], []
    for path, stem in zip(args.audio, _stems(args.audio)):
        try:
            wave = load_audio(path)  # its errors name the file
            with precision.matmul_settings(), precision.autocast():
                prediction = predictor.predict(wave, SAMPLE_RATE, explain=args.explain is not None)
        except InputError as error:
            message = str(error) if str(path) in str(error) else f"{path}: {error}"
            print(f"lpmn-predict: {message}", file=sys.stderr)
            failed.append(str(path))
            records.append({"file": str(path), "error": message})
            continue
        record = {"file": str(path), **prediction.to_dict()}
        if args.explain is not None:
            record.update(_write_explanation(args.explain, stem, path, wave, prediction, predictor))
        rows.append((str(path), prediction))
        records.append(record)

    if args.json:
        print(json.dumps(records, indent=1))
    elif rows:
        print(format_table(rows, predictor.classes))
    if failed:
        print(f"lpmn-predict: {len(failed)} of {len(args.audio)} files failed: "
              + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


def _write_explanation(folder: Path, stem: str, path: Path, wave, prediction, predictor) -> dict:
    """DIR/<stem>.json (+ .png for LPMN models); returns the paths written, for the listing."""
    from .inference.plot import plot_explanation

    data = {"file": str(path), "model": predictor.source, **prediction.to_dict()}
    written = {"explanation_json": str(folder / f"{stem}.json")}
    if prediction.explanation is not None:
        data["explanation"] = prediction.explanation.to_dict()
        top = max(prediction.probabilities, key=prediction.probabilities.get)
        plot_explanation(wave, prediction.explanation, folder / f"{stem}.png",
                         f"{path.name}: {top} ({prediction.probabilities[top]:.0%})", highlight=top)
        written["explanation_png"] = str(folder / f"{stem}.png")
    write_text_atomic(folder / f"{stem}.json", json.dumps(data, indent=1))
    return written


if __name__ == "__main__":
    raise SystemExit(main())
