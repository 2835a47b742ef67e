"""lpmn-predict: emotion of audio files with a trained model; for LPMN, which frames it rests on.

    lpmn-predict runs/demo a.wav b.flac              # table: label and class probabilities
    lpmn-predict runs/demo/model *.wav --json         # the same as JSON
    lpmn-predict runs/demo a.wav --explain out/       # + out/a.json and out/a.png (LPMN models)
    lpmn-predict runs/demo recordings/ --output labels.csv          # a whole folder, recursively
    lpmn-predict runs/demo list.csv wav.scp --output labels.jsonl --resume   # continue after a stop

CHECKPOINT is a save_pretrained directory (config.json + model.safetensors) or a training run
directory, whose model-probe/ (LPMN with the top-K' prototypes) or else model/ is used. Each INPUT
is an audio file, a folder (searched recursively for audio files), a manifest (.csv, .tsv, .jsonl
with a path column; start/end columns cut spans) or a Kaldi wav.scp (<id> <path> per line). Any
sample rate is resampled to 16 kHz, channels are averaged; utterances run in batches of similar
length on the device, long files one at a time in chunks. The next batches' files are decoded and
their fbank computed in a background thread when a core is free for it (a GPU, or fewer torch
threads than cores: set OMP_NUM_THREADS or torch.set_num_threads); otherwise just in time. A file
that cannot be used (missing, not audio, empty, silent, shorter than one frame) is reported on
stderr and gets a row with its error; the others still run, and the exit code is then 1.

--output FILE.csv|.jsonl holds one row per input: file (id, start, end for wav.scp and manifest
spans), label, prob_<class> per class, valence (models with a valence regressor), evidence_start_s
and evidence_end_s (LPMN models: the --evidence-seconds span with the most evidence for the
label), duration_s, num_frames (frames the model saw), and error. It is written atomically after
the first batch, then every --flush-seconds or --flush-rows rows, and at the end, so an interrupted
run leaves a complete file of what was done; --resume then skips the inputs already labelled in it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .cli import add_version, group_flags, readable_warnings
from .data.atomic import write_text_atomic

# lpmn-predict --help in groups: (the first flag's dest, the group's title).
FLAG_GROUPS = (("output", "output file (--output)"), ("batch_size", "batching and progress"),
               ("json", "printed results and explanations"), ("chunk_seconds", "long files"),
               ("device", "model, device and precision"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lpmn-predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="save_pretrained directory or training run directory")
    p.add_argument("audio", type=Path, nargs="+", metavar="INPUT",
                   help="audio files (WAV, FLAC, OGG, ...: whatever soundfile reads), folders (searched recursively), "
                        "manifests (.csv/.tsv/.jsonl with a path column) or Kaldi wav.scp files")
    p.add_argument("--output", type=Path, metavar="FILE",
                   help="write one row per input to FILE (.csv or .jsonl), atomically; without it, the results "
                        "are printed (table, or --json)")
    p.add_argument("--resume", action="store_true", help="with --output: keep the rows already in FILE and "
                                                        "label only the inputs it lacks (failed ones are retried)")
    p.add_argument("--overwrite", action="store_true", help="with --output: replace an existing FILE (default: "
                                                           "refuse, so that no earlier results are lost)")
    p.add_argument("--flush-seconds", type=float, default=30.0,
                   help="with --output: rewrite FILE at least this often (default 30); the first write comes "
                        "as soon as the first batch is done")
    p.add_argument("--flush-rows", type=int, default=1000,
                   help="with --output: rewrite FILE after this many new rows at the latest (default 1000)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="utterances per batch, grouped by length (default 16); 1 runs one at a time")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar (default: on)")
    p.add_argument("--json", action="store_true", help="print a JSON list (one object per file, failed ones with "
                                                      "\"error\") instead of the table")
    p.add_argument("--explain", type=Path, metavar="DIR",
                   help="write DIR/<file stem>.json (winning frames, evidence timeline) and .png per file; "
                        "runs one file at a time")
    p.add_argument("--top-k", type=int, help="the most important prototypes (Fisher importance) an explanation "
                                            "lists and marks (default 10)")
    p.add_argument("--evidence-seconds", type=float, default=0.5,
                   help="LPMN models: length of the span reported as the strongest evidence for the label "
                        "(evidence_start_s, evidence_end_s; default 0.5)")
    p.add_argument("--chunk-seconds", type=float, default=30.0,
                   help="audio per chunk of a long file (default 30). Chunks combine exactly (max/mean pooling); "
                        "frame features are exact for fbank models, and for HuBERT models an approximation beyond "
                        "one chunk (attention sees the chunk plus --context-seconds)")
    p.add_argument("--context-seconds", type=float, default=2.0,
                   help="HuBERT models: extra audio each side of a chunk (default 2)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto: cuda if available)")
    p.add_argument("--hubert-path", help="HuBERT models: the pretrained HuBERT directory, if not at the path "
                                         "recorded at training")
    p.add_argument("--kernel", choices=("auto", "triton", "torch"), help="prototype-MIL backend (default: as saved)")
    p.add_argument("--precision", choices=("auto", "fp32", "tf32", "bf16", "fp16"), default="auto",
                   help="numeric precision: bf16/fp16 run the model under autocast (the op on 16-bit inputs), "
                        "tf32 allows TF32 tensor-core matmuls; auto = bf16 on a GPU that supports it, else fp32 "
                        "(default auto)")
    add_version(p)
    group_flags(p, FLAG_GROUPS)
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
    with readable_warnings("lpmn-predict"):
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.resume or args.overwrite) and args.output is None:
        parser.error("--resume and --overwrite need --output FILE")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    from .data.problems import CorpusError
    from .inference import InputError, load  # after parsing: --help stays fast
    from .inference.inputs import expand_inputs
    from .inference.table import OutputTable
    from .training.precision import Precision

    try:
        items = expand_inputs(args.audio)
    except (CorpusError, ValueError, OSError) as error:
        print(f"lpmn-predict: error: {error}", file=sys.stderr)
        return 2
    options = {"chunk_seconds": args.chunk_seconds, "context_seconds": args.context_seconds,
               "evidence_seconds": args.evidence_seconds}
    if args.top_k is not None:
        options["top_k"] = args.top_k
    try:
        predictor = load(args.checkpoint, device=args.device, hubert_path=args.hubert_path, kernel=args.kernel,
                         **options)
        table = OutputTable(args.output, predictor.classes, resume=args.resume, overwrite=args.overwrite,
                            flush_seconds=args.flush_seconds, flush_rows=args.flush_rows,
                            first_rows=args.batch_size) if args.output is not None else None
    except (FileNotFoundError, FileExistsError, ValueError, TypeError) as error:
        print(f"lpmn-predict: error: {error}", file=sys.stderr)
        return 2
    try:
        precision = Precision.create(args.precision, next(predictor.model.parameters()).device)
    except ValueError as error:
        print(f"lpmn-predict: error: {error}", file=sys.stderr)
        return 2
    if args.explain and not predictor.explainable:
        print(f"lpmn-predict: note: {predictor.unsupported}", file=sys.stderr)
    todo = [item for item in items if table is None or item.key not in table.done]
    if table is not None and len(todo) < len(items):
        print(f"lpmn-predict: resuming {args.output}: {len(items) - len(todo)} of {len(items)} inputs already "
              "labelled", file=sys.stderr)

    rows, records, failed = [], [], []
    stems = dict(zip((item.key for item in todo), _stems([Path(item.file) for item in todo])))
    started, audio_seconds = time.perf_counter(), 0.0
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="utt", desc="labelling", disable=not args.progress or not todo)
    try:
        with precision.matmul_settings(), precision.autocast():
            for item, outcome, wave in _predictions(todo, predictor, args):
                bar.update()
                if isinstance(outcome, InputError):
                    message = str(outcome) if item.file in str(outcome) else f"{item.file}: {outcome}"
                    tqdm.write(f"lpmn-predict: {message}", file=sys.stderr)
                    failed.append(item.file)
                    record = {**_where(item), "error": message}
                else:
                    audio_seconds += outcome.duration_s
                    record = {**_where(item), **outcome.to_dict()}
                    if args.explain is not None:
                        record.update(_write_explanation(args.explain, stems[item.key], Path(item.file), wave, outcome,
                                                         predictor))
                    rows.append((item.file, outcome))
                records.append(record)
                if table is not None:
                    table.add(item, record)
    finally:
        bar.close()
        if table is not None:
            table.write()
    seconds = time.perf_counter() - started

    if table is None:
        if args.json:
            print(json.dumps(records, indent=1))
        elif rows:
            print(format_table(rows, predictor.classes))
    if todo:
        rtf = seconds / audio_seconds if audio_seconds else float("nan")
        print(f"lpmn-predict: {len(todo)} inputs in {seconds:.1f} s: {len(todo) / seconds:.1f} utterances/s, "
              f"real-time factor {rtf:.4f} ({audio_seconds:.1f} s of audio) on {predictor.device}"
              + (f"; wrote {args.output}" if table is not None else ""), file=sys.stderr)
    if failed:
        print(f"lpmn-predict: {len(failed)} of {len(todo)} files failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


def _where(item) -> dict:
    """The output columns that name an input: file, and id/start/end when it has them."""
    return {"file": item.file, **{k: v for k, v in (("id", item.id), ("start", item.start), ("end", item.end))
                                  if v is not None}}


def _predictions(items, predictor, args) -> Iterator[tuple[object, object, object]]:
    """(item, Prediction or InputError, waveform or None) per item, in order: batched, or one at a
    time with --explain (explanations need the per-frame curves of the chunked path)."""
    from .inference import InputError
    from .inference.audio import SAMPLE_RATE, pending_audio
    from .inference.readahead import read_ahead

    def source(item):
        """The item's audio, decoded when its batch is prepared; or the reason it has none."""
        return InputError(item.error) if item.error is not None else pending_audio(item.file, item.start, item.end)

    def read(item):
        pending = source(item)
        if isinstance(pending, InputError):
            return pending
        try:
            return pending.load()
        except InputError as error:
            return error

    if args.explain is not None:
        for item, wave in zip(items, read_ahead(items, read)):
            if isinstance(wave, InputError):
                yield item, wave, None
                continue
            try:
                yield item, predictor.predict(wave, SAMPLE_RATE, explain=True), wave
            except InputError as error:
                yield item, error, None
        return
    for position, outcome in predictor.predict_stream(map(source, items), batch_size=args.batch_size):
        yield items[position], outcome, None


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
