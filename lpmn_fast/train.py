"""lpmn-train: train LPMN and the AP/MP baselines for speech emotion recognition.

    lpmn-train --data synthetic --head lpmn,ap,mp       # the demo: all three heads, side by side
    lpmn-train --backbone hubert --hubert-path DIR --data iemocap --data-dir IEMOCAP_full_release
    lpmn-train --config run.yaml --epochs 5              # file first, flags override

Every flag is a field of lpmn_fast.training.TrainConfig (the YAML/JSON file uses the field names
with underscores). Outputs per head in the run directory: metrics.json, confusion.png,
curves.png, config.yaml and checkpoints/; with several heads, also summary.md and summary.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import textwrap
import types
import typing
from pathlib import Path

from .cli import add_version, braced, readable_warnings
from .data.atomic import write_text_atomic
from .training.config import (
    FBANK_DEMO_DEFAULTS, PAPER_DEFAULTS, TrainConfig, default_run_root, load_config_file, make_config, resolve,
)
from .training.loop import train

def _describe(defaults: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in defaults.items())


_EPILOG = textwrap.fill(
    "Backbone-dependent defaults: the paper's for --backbone hubert (section 4.1: Adam, "
    f"{_describe(PAPER_DEFAULTS)}); faster demo values for --backbone fbank ({_describe(FBANK_DEMO_DEFAULTS)}), "
    "tuned on the synthetic corpus so that the three-head comparison runs on a CPU in minutes. The best epoch is "
    "chosen on the validation split by --select-metric (default UA); the test split is evaluated once, on that "
    "checkpoint.", 100)


def _flag_type(annotation):
    """(argparse kwargs) for a TrainConfig field annotation."""
    hint = eval(annotation, vars(typing) | {"types": types}) if isinstance(annotation, str) else annotation
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args and typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(base) is list:
        return {"nargs": "*", "type": typing.get_args(base)[0]}
    return {"type": base}


# lpmn-train --help in groups: (the first TrainConfig field of each group, its title). A field
# added to TrainConfig joins the group of the field before it.
FLAG_GROUPS = (
    ("data", "data and protocol"),
    ("backbone", "backbone (frame features)"),
    ("head", "head (LPMN, AP, MP) and the prototype-MIL op"),
    ("lr", "optimisation"),
    ("precision", "speed on a GPU: precision, loading, batching, schedule"),
    ("run_dir", "run folder, resumption and logs"),
)


def add_config_flags(parser, skip: tuple[str, ...] = (), prefix: str = "") -> None:
    """One ``--flag`` per TrainConfig field not in ``skip``, in the argument groups of FLAG_GROUPS
    (titles after ``prefix``); a flag not given leaves its field out of the parsed arguments."""
    defaults = TrainConfig()
    titles = dict(FLAG_GROUPS)
    group = parser
    for f in dataclasses.fields(TrainConfig):
        if f.name in titles:
            group = parser.add_argument_group(prefix + titles[f.name])
        if f.name in skip:
            continue
        text = braced(f.metadata["help"])
        if "default" not in text:  # fields whose help explains a computed default say so themselves
            text += f" (default: {getattr(defaults, f.name)})"
        choices = re.search(r"one of (\{[^}]*\})", text)  # shown as lpmn-predict's argparse choices are
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=argparse.SUPPRESS, help=text,
                           **({"metavar": choices.group(1)} if choices else {}), **_flag_type(f.type))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpmn-train", description=__doc__, epilog=_EPILOG,
                                     usage="%(prog)s [--config FILE] [--FLAG VALUE ...]",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="YAML or JSON file of config fields; flags given here override it")
    add_version(parser)
    add_config_flags(parser)
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[dict, list[str]]:
    """Fields from the --config file overridden by the flags, and the list of heads to train."""
    args = vars(build_parser().parse_args(argv))
    fields = load_config_file(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    fields.update(args)
    heads = [h.strip() for h in str(fields.get("head", TrainConfig().head)).split(",") if h.strip()]
    return fields, heads


def format_table(results: list[dict]) -> str:
    """Markdown table: one row per model (LPMN-K, LPMN-K-K', AP, MP), test WA/UA/F1."""
    rows = []
    for r in results:
        rows.append((r["name"], r["test"]))
        if "probe" in r:
            rows.append((r["probe"]["name"], r["probe"]["test"]))
    mse = all("valence_mse" in m for _, m in rows)  # MER2023: the valence regressor's MSE too
    lines = ["| model | WA | UA | macro F1 | weighted F1 |" + (" valence MSE |" if mse else ""),
             "|---|---|---|---|---|" + ("---|" if mse else "")]
    lines += [f"| {name} | {m['wa']:.2%} | {m['ua']:.2%} | {m['macro_f1']:.2%} | {m['weighted_f1']:.2%} |"
              + (f" {m['valence_mse']:.4f} |" if mse else "") for name, m in rows]
    return "\n".join(lines)


def busy_cpu_hint(threads: int | None, device: str) -> str | None:
    """A hint when other jobs already keep this machine's cores busy and the thread count is torch's
    default (one per core): torch's threads then wait on each other, and one thread is often several
    times faster (the demo on a 2-core machine with both cores taken: 8.7 minutes, 2 with one thread)."""
    if threads is not None or not hasattr(os, "getloadavg"):
        return None
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return None
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    if cores < 2 or load < 0.75 * cores:
        return None
    return (f"the machine is busy (load {load:.1f} on {cores} cores) and torch will use {torch.get_num_threads()} "
            "threads; if training is slow, --threads 1 avoids threads waiting on each other")


def main(argv: list[str] | None = None) -> int:
    with readable_warnings("lpmn-train"):
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    try:
        fields, heads = config_from_args(argv)
        if len(heads) > 1:
            base = resolve(make_config(**{**fields, "head": heads[0]}))
            root = Path(fields.get("run_dir") or default_run_root(base.data, base.backbone))
            configs = [make_config(**{**fields, "head": h, "run_dir": str(root / h)}) for h in heads]
            # --resume continues the heads that have a checkpoint and starts those that never got one.
            configs = [dataclasses.replace(c, resume=c.resume and (Path(c.run_dir) / "checkpoints" / "last.json")
                                           .is_file()) for c in configs]
        else:
            root = None
            configs = [make_config(**{**fields, "head": heads[0] if heads else "lpmn"})]
        for config in configs:
            resolve(config)  # every error before any training starts
    except (ValueError, FileNotFoundError) as error:
        print(f"lpmn-train: error: {error}", file=sys.stderr)
        return 2

    hint = busy_cpu_hint(configs[0].threads, configs[0].device)
    if hint:
        print(f"lpmn-train: note: {hint}", file=sys.stderr)
    results = []
    for config in configs:
        print(f"== training head {config.head} ==", file=sys.stderr)
        try:
            result = train(config)
        except (ValueError, FileNotFoundError, FileExistsError) as error:
            print(f"lpmn-train: error: {error}", file=sys.stderr)
            return 2
        if result.get("rank", 0):  # torchrun: ranks > 0 train along, rank 0 reports
            if result.get("interrupted"):
                return 0
            continue
        if result.get("interrupted"):
            print(f"stopped after step {result['step']} as asked; continue with the same flags plus --resume "
                  f"--run-dir {root or result['run_dir']}", file=sys.stderr)
            return 0
        results.append(result)
        print(f"{config.head}: results in {result['config']['run_dir']} ({result['seconds']} s)", file=sys.stderr)

    if not results:
        return 0
    table = format_table(results)
    protocol = results[0]["protocol"]
    print(f"\nTest split, {protocol['protocol']}: train {protocol['train']}, valid {protocol['valid']}, "
          f"test {protocol['test']} utterances; best epoch chosen on valid {results[0]['select_metric']}.\n")
    print(table)
    if root is not None:
        write_text_atomic(root / "summary.md", table + "\n")
        write_text_atomic(root / "summary.json", json.dumps(
            [{k: r[k] for k in ("name", "head", "test", "valid", "best_epoch", "protocol", "provenance")} |
             ({"probe": {k: r["probe"][k] for k in ("name", "top_k", "test", "valid")}} if "probe" in r else {})
             for r in results], indent=1))
        print(f"\nsummary: {root / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
