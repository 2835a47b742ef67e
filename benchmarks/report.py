"""Derived figures and the Markdown table and PNG plot of a benchmark JSON.

    python -m benchmarks.report RESULTS.json [--md OUT.md] [--png OUT.png] [--summary]
    python -m benchmarks.report --compare LABEL=RESULTS.json LABEL=RESULTS.json ... [--md OUT.md]

Without --md/--png the Markdown and PNG are written next to the JSON. --summary prints a short
plain-text table of the headline shape (what gpu_run.sh prints last).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BASELINES = ("eager", "compile", "compile-max-autotune")
PROVIDER_ORDER = ("triton", "eager", "compile", "compile-max-autotune")
MODE_ORDER = ("full", "forward", "backward", "train_step")


def _median(record: dict) -> float | None:
    t = record.get("time_s")
    return t.get("median") if t else None


def _ok(record: dict) -> bool:
    return record.get("status") == "ok" and bool(_median(record))


def matmul_rates(records: list[dict]) -> dict[str, float]:
    """Dense matmul rate (FLOP/s) per dtype under the run's own settings: the matmul fraction's denominator.

    Only "default" records count: the fused kernels and the reference follow
    torch.get_float32_matmul_precision() as torch.matmul does; the TF32 record is for information.
    """
    rates: dict[str, float] = {}
    for r in records:
        if r["kind"] == "matmul" and r["mode"] == "default" and _ok(r):
            rate = r["flops"] / _median(r)
            rates[r["dtype"]] = max(rate, rates.get(r["dtype"], 0.0))
    return rates


def _peer_key(r: dict) -> tuple:
    return (r["kind"], r["mode"], r["dtype"], r["B"], r["T"], r["C"], r["K"])


def modelled_machine(doc: dict) -> str | None:
    """The roofline ledger's machine ("H100" or "H200") that the run's device is, or None."""
    name = (doc.get("device") or {}).get("name", "")
    return next((m for m in ("H200", "H100") if m in name), None)


def derive(records: list[dict], machine: str | None = None) -> list[dict]:
    """Copies of ``records`` with the derived figures of each measured one.

    tflops: useful FLOP/s / 1e12; matmul_fraction: that over the best matmul rate of the same dtype
    in the same run; speedup_vs[b]: b's median time / this median time; mem_ratio_vs[b]: this peak
    memory / b's, for each baseline b measured at the same shape, dtype and mode. With ``machine``
    (the run's GPU in the ledger, see :func:`modelled_machine`): modelled_s, the ledger's time on
    it, and measured_over_modelled, the median over that.
    """
    rates = matmul_rates(records)
    peers: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if _ok(r):
            peers.setdefault(_peer_key(r), {})[r["provider"]] = r
    out = []
    for r in records:
        r = dict(r)
        if _ok(r):
            rate = r["flops"] / _median(r)
            r["tflops"] = rate / 1e12
            if r["kind"] != "matmul" and r["dtype"] in rates:
                r["matmul_fraction"] = rate / rates[r["dtype"]]
            speedup, mem_ratio = {}, {}
            for base, other in peers.get(_peer_key(r), {}).items():
                if base == r["provider"] or base not in BASELINES:
                    continue
                speedup[base] = _median(other) / _median(r)
                mine, theirs = r.get("peak_mem_bytes"), other.get("peak_mem_bytes")
                if mine is not None and theirs:
                    mem_ratio[base] = mine / theirs
            if r["kind"] != "matmul":
                r["speedup_vs"] = speedup
                r["mem_ratio_vs"] = mem_ratio
        model = (r.get("modelled") or {}).get("s", {})
        if machine in model:
            r["modelled_s"] = model[machine]
            if _ok(r) and model[machine]:
                r["measured_over_modelled"] = _median(r) / model[machine]
        out.append(r)
    return out


# ---- formatting -------------------------------------------------------------------------------

def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.3g}"


def _time_cell(r: dict) -> str:
    t = r.get("time_s") or {}
    if t.get("median") is None:
        return "—"
    if t.get("q1") is None or t.get("q3") is None:
        return _ms(t["median"])
    return f"{_ms(t['median'])} [{_ms(t['q1'])}–{_ms(t['q3'])}]"


def _num(v: float | None, fmt: str = "{:.3g}") -> str:
    return "—" if v is None else fmt.format(v)


def _mb(n: int | None) -> str:
    return "n/m" if n is None else f"{n / 2**20:.4g}"


def _ratio(r: dict, field: str, base: str, suffix: str = "×") -> str:
    v = (r.get(field) or {}).get(base)
    return "—" if v is None else f"{v:.3g}{suffix}"


def _sort_key(r: dict) -> tuple:
    def rank(seq, v):
        return seq.index(v) if v in seq else len(seq)
    return (r["dtype"] != "bfloat16", rank(MODE_ORDER, r["mode"]), rank(PROVIDER_ORDER, r["provider"]))


def _shape(r: dict) -> str:
    return f"B={r['B']}, T={r['T']}, C={r['C']}, K={r['K']}"


def _device_line(doc: dict) -> str:
    d = doc.get("device", {})
    v = doc.get("versions", {})
    bits = [f"**{d.get('name', '?')}** ({d.get('type', '?')}"]
    if d.get("type") == "cuda":
        bits.append(f", sm {d.get('capability')}, {d.get('multiprocessors')} SMs")
    elif d.get("torch_threads") is not None:
        bits.append(f", torch threads: {d['torch_threads']}")
    bits.append(f"); torch {v.get('torch')}, triton {v.get('triton')}")
    if v.get("cuda"):
        bits.append(f", CUDA {v['cuda']}")
    return "".join(bits)


def _rounds(records: list[dict]) -> str:
    counts = [r["time_s"]["rounds"] for r in records if _ok(r) and r["time_s"].get("rounds")]
    if not counts:
        return "?"
    return str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    # A reason may hold "|" or a newline (exception text): either would break the table.
    lines += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return lines


def _model_cell(r: dict) -> str:
    """The ledger's modelled time, H100 / H200, in ms ("—" where the case has none)."""
    s = (r.get("modelled") or {}).get("s") or {}
    if not s:
        return "—"
    est = "~" if (r.get("modelled") or {}).get("estimate") else ""
    return " / ".join(f"{est}{_ms(s[m])}" for m in ("H100", "H200") if m in s)


def to_markdown(doc: dict) -> str:
    """The benchmark JSON as Markdown: headline table, sweeps, training step, matmul rates, skips."""
    records = derive(doc.get("records", []), modelled_machine(doc))
    device = doc.get("device", {}).get("name", "?")
    lines = [
        f"# Prototype-MIL benchmarks on {device}",
        "",
        f"Measured {doc.get('created', '?')} on {_device_line(doc)}; profile `{doc.get('profile', '?')}`.",
        "",
        "* Time: median over the timed rounds, [first–third quartile], in ms; GPU work is synchronised "
        f"inside each round; {_rounds(records)} timed rounds per case after a warm-up.",
        "* TFLOP/s: useful work, 2·B·T·K·C per similarity pass over the padded T (forward 1 pass, "
        "backward 2, full 3, head-only training step 2).",
        "* % matmul: that rate over the `torch.matmul` rate of the same dtype measured in this run at "
        "(B·T, C) @ (C, K), under the run's float32 matmul precision "
        f"(`{doc.get('settings', {}).get('float32_matmul_precision', '?')}`; a TF32 row, if any, is for information).",
        "* Peak MB: peak allocation above what was allocated when the timed call started (backward: "
        "after its forward); n/m = not measured"
        + (f" ({doc['memory_note']})" if doc.get("memory_note") else "") + ".",
        "* × vs X: X's median time over this one (above 1: faster than X); mem / X: this peak over X's.",
        "* model ms: the roofline ledger's modelled time on an H100 / H200 (`python -m benchmarks.roofline`: "
        "max(FLOPs/peak, bytes/bandwidth) per launch, summed; ~ marks the torch.compile estimate); "
        "meas / model: the median over the model of this run's GPU"
        + (f" ({modelled_machine(doc)})" if modelled_machine(doc) else " (none: not an H100 or H200)") + ".",
        f"* Ragged lengths: {doc.get('settings', {}).get('length_distribution', '?')}.",
        "",
    ]

    matmul = [r for r in records if r["kind"] == "matmul" and _ok(r)]
    if matmul:
        lines += ["## Dense matmul reference", ""]
        lines += _table(["dtype", "precision", "shape (M×K)·(K×N)", "median ms [q1–q3]", "TFLOP/s",
                         "model ms H100 / H200", "meas / model"], [
            [r["dtype"], r["mode"], f"({r['B'] * r['T']}×{r['C']})·({r['C']}×{r['K']})", _time_cell(r),
             _num(r.get("tflops")), _model_cell(r), _num(r.get("measured_over_modelled"))] for r in matmul])
        lines.append("")

    paper = sorted((r for r in records if r["kind"] == "op" and "paper" in r.get("sweeps", ()) and _ok(r)),
                   key=_sort_key)
    if paper:
        lines += [f"## Headline shape ({_shape(paper[0])})", ""]
        lines += _table(["dtype", "mode", "provider", "median ms [q1–q3]", "TFLOP/s", "% matmul", "peak MB",
                         "× vs eager", "× vs compile", "mem / eager", "mem / compile", "model ms H100 / H200",
                         "meas / model"], [
            [r["dtype"], r["mode"], r["provider"], _time_cell(r), _num(r.get("tflops")),
             _num(None if r.get("matmul_fraction") is None else 100 * r["matmul_fraction"], "{:.3g}%"),
             _mb(r.get("peak_mem_bytes")), _ratio(r, "speedup_vs", "eager"), _ratio(r, "speedup_vs", "compile"),
             _ratio(r, "mem_ratio_vs", "eager", ""), _ratio(r, "mem_ratio_vs", "compile", ""), _model_cell(r),
             _num(r.get("measured_over_modelled"))]
            for r in paper])
        lines.append("")

    for axis in ("K", "T"):
        sweep = [r for r in records if r["kind"] == "op" and axis in r.get("sweeps", ()) and _ok(r)]
        if not sweep:
            continue
        providers = [p for p in PROVIDER_ORDER if any(r["provider"] == p for r in sweep)]
        values = sorted({r[axis] for r in sweep})
        fixed = {k: sweep[0][k] for k in ("B", "T", "C", "K") if k != axis}
        lines += [f"## Sweep over {axis} (mode full, {sweep[0]['dtype']}, "
                  + ", ".join(f"{k}={v}" for k, v in fixed.items()) + "): median ms", ""]
        rows = []
        for v in values:
            at = {r["provider"]: r for r in sweep if r[axis] == v}
            rows.append([str(v)] + [_ms(_median(at[p])) if p in at else "—" for p in providers]
                        + [_ratio(at["triton"], "speedup_vs", "eager") if "triton" in at else "—"])
        lines += _table([axis] + providers + ["triton × vs eager"], rows)
        lines.append("")

    train = sorted((r for r in records if r["kind"] == "train_step" and _ok(r)), key=_sort_key)
    if train:
        lines += [f"## Head-only training step ({_shape(train[0])}; PrototypeMIL + linear classifier + "
                  "quantization loss + Fisher update + Adam, cached features)", ""]
        lines += _table(["dtype", "provider", "median ms [q1–q3]", "TFLOP/s", "peak MB", "× vs eager",
                         "mem / eager"], [
            [r["dtype"], r["provider"], _time_cell(r), _num(r.get("tflops")), _mb(r.get("peak_mem_bytes")),
             _ratio(r, "speedup_vs", "eager"), _ratio(r, "mem_ratio_vs", "eager", "")] for r in train])
        lines.append("")

    steps = [r for r in records if r["kind"].startswith("step-") and _ok(r)]
    if steps:
        lines += ["## Full training step (trainable backbone part + LPMN head; --precision, kernel)", "",
                  "fbank: conv frame encoder on cached fbank; hubert: two HuBERT blocks (all fine-tuned) on "
                  "cached frozen-block outputs. TFLOP/s counts the op's 3 similarity passes only.", ""]
        lines += _table(["backbone", "B×T×C×K", "precision", "provider", "median ms [q1–q3]", "TFLOP/s", "peak MB",
                         "× vs eager"], [
            [r["kind"].removeprefix("step-"), _shape(r), r["mode"], r["provider"], _time_cell(r),
             _num(r.get("tflops")), _mb(r.get("peak_mem_bytes")), _ratio(r, "speedup_vs", "eager")]
            for r in sorted(steps, key=lambda r: (r["kind"], r["mode"], r["provider"]))])
        lines.append("")

    missing = [r for r in records if not _ok(r)]
    if missing:
        lines += ["## Not measured", ""]
        reasons: dict[str, list[str]] = {}
        for r in missing:
            status = r.get("status")
            reason = r.get("reason") or ("not timed (--benchmark-disable)" if status == "untimed" else "?")
            reasons.setdefault(("failed: " if status == "failed" else "") + reason, []).append(r["id"])
        lines += _table(["reason", "cases"], [[reason, f"{len(ids)}: " + ", ".join(ids[:4])
                                               + (", …" if len(ids) > 4 else "")]
                                              for reason, ids in reasons.items()])
        lines.append("")
    return "\n".join(lines)


def summary(doc: dict) -> str:
    """A short fixed-width table of the headline shape and the training step, for a terminal."""
    records = derive(doc.get("records", []), modelled_machine(doc))
    rows = [r for r in records if _ok(r) and (r["kind"] == "train_step"
                                               or (r["kind"] == "op" and "paper" in r.get("sweeps", ())))]
    rows.sort(key=lambda r: (r["kind"] != "op",) + _sort_key(r))
    head = f"{'dtype':<9} {'mode':<10} {'provider':<20} {'ms':>8} {'TFLOP/s':>8} {'%mm':>6} {'MB':>8} " \
           f"{'xEager':>7} {'xComp':>7} {'mem/E':>7} {'model':>8} {'ms/mod':>7}"
    machine = modelled_machine(doc)
    out = [f"device: {doc.get('device', {}).get('name', '?')}  torch {doc.get('versions', {}).get('torch')}  "
           f"triton {doc.get('versions', {}).get('triton')}  profile {doc.get('profile')}  "
           f"model: {machine or 'none for this device'} (ms; ms/mod = measured / modelled)", head]
    for r in rows:
        mf = r.get("matmul_fraction")
        out.append(f"{r['dtype']:<9} {r['mode']:<10} {r['provider']:<20} {_ms(_median(r)):>8} "
                   f"{_num(r.get('tflops')):>8} {_num(None if mf is None else 100 * mf):>6} "
                   f"{_mb(r.get('peak_mem_bytes')):>8} {_ratio(r, 'speedup_vs', 'eager'):>7} "
                   f"{_ratio(r, 'speedup_vs', 'compile'):>7} {_ratio(r, 'mem_ratio_vs', 'eager', ''):>7} "
                   f"{_ms(r.get('modelled_s')):>8} {_num(r.get('measured_over_modelled')):>7}")
    for m in (r for r in records if r["kind"] == "matmul" and _ok(r)):
        out.append(f"matmul {m['dtype']} {m['mode']}: {_num(m.get('tflops'))} TFLOP/s")
    n_skip = sum(not _ok(r) for r in records)
    if n_skip:
        out.append(f"{n_skip} case(s) not measured (reasons in the Markdown)")
    return "\n".join(out)


def plot(doc: dict, path: str | Path) -> bool:
    """Time vs K and vs T (mode full) per provider, log-log, to a PNG, with the ledger's modelled time
    dashed where the records carry it. False if there is nothing to plot."""
    records = derive(doc.get("records", []))
    machine = modelled_machine(doc) or "H100"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = False
    for ax, axis in zip(axes, ("K", "T")):
        sweep = [r for r in records if r["kind"] == "op" and axis in r.get("sweeps", ()) and _ok(r)]
        for provider in PROVIDER_ORDER:
            pts = sorted((r[axis], r["time_s"]) for r in sweep if r["provider"] == provider)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            med = [p[1]["median"] * 1e3 for p in pts]
            lo = [max(0.0, m - (p[1].get("q1") or p[1]["median"]) * 1e3) for m, p in zip(med, pts)]
            hi = [max(0.0, (p[1].get("q3") or p[1]["median"]) * 1e3 - m) for m, p in zip(med, pts)]
            bars = ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=provider)
            drawn = True
            # the roofline ledger's modelled time beside it (the run's GPU, else the H100), dashed
            model = sorted((r[axis], r["modelled"]["s"][machine]) for r in sweep
                           if r["provider"] == provider and machine in ((r.get("modelled") or {}).get("s") or {}))
            if model:
                ax.plot([m[0] for m in model], [m[1] * 1e3 for m in model], linestyle="--", linewidth=1,
                        color=bars[0].get_color(), label=f"{provider} (modelled, {machine})")
        if sweep:
            fixed = ", ".join(f"{k}={sweep[0][k]}" for k in ("B", "T", "C", "K") if k != axis)
            ax.set_title(f"full pass vs {axis} ({sweep[0]['dtype']}, {fixed})", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        if sweep:  # label the measured points, not powers of two
            ax.set_xticks(sorted({r[axis] for r in sweep}))
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel(axis)
        ax.set_ylabel("median time per call (ms)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"prototype_mil on {doc.get('device', {}).get('name', '?')} (torch "
                 f"{doc.get('versions', {}).get('torch')}, {doc.get('created', '')})", fontsize=10)
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def render(json_path: str | Path, md_path: str | Path | None = None, png_path: str | Path | None = None) -> list[Path]:
    """Write the Markdown and PNG of ``json_path`` (default: beside it); return the files written."""
    json_path = Path(json_path)
    doc = json.loads(json_path.read_text())
    md_path = Path(md_path) if md_path else json_path.with_suffix(".md")
    png_path = Path(png_path) if png_path else json_path.with_suffix(".png")
    md_path.write_text(to_markdown(doc) + "\n")
    written = [md_path]
    if plot(doc, png_path):
        written.append(png_path)
    return written


def compare(runs: list[tuple[str, dict]]) -> str:
    """Markdown: the same cases measured with several revisions (label, results JSON) on one device, in one run.

    Per case: each revision's median [q1–q3] (the spread of its timed rounds), its time relative to the
    first revision's, and the roofline ledger's modelled time for this device where that revision's
    harness recorded one. Cases measured by no revision are left out.
    """
    devices = {(doc.get("device") or {}).get("name", "?") for _, doc in runs}
    machine = modelled_machine(runs[0][1]) if runs else None
    by_id: dict[str, dict[str, dict]] = {}
    for label, doc in runs:
        for r in derive(doc.get("records", []), modelled_machine(doc)):
            if _ok(r):
                by_id.setdefault(r["id"], {})[label] = r
    labels = [label for label, _ in runs]
    lines = [f"# Revisions compared on {', '.join(sorted(devices))}", "",
             "Same device, same run, one after the other: " + ", ".join(f"`{l}`" for l in labels)
             + f" (× = time over `{labels[0]}`'s; below 1 is faster). Median over the timed rounds "
             "[first–third quartile], ms. model: the roofline ledger's time on "
             + (machine or "(no ledger machine for this device)") + ", where the revision's harness has the ledger.",
             ""]
    if len(devices) > 1:
        lines += ["**Warning: the runs name different devices; their times do not compare.**", ""]
    header = ["case"] + [f"{l} ms" for l in labels] + [f"{l} ×" for l in labels[1:]] + [f"{l} model ms" for l in labels]
    rows = []
    for case_id in sorted(by_id, key=lambda i: (("triton" not in i), i)):
        at = by_id[case_id]
        if len(labels) > 1 and not set(at) - {labels[0]}:
            continue  # measured by the reference revision alone (its full suite): nothing to compare
        base = at.get(labels[0])
        row = [case_id] + [_time_cell(at[l]) if l in at else "—" for l in labels]
        row += [f"{_median(at[l]) / _median(base):.3g}×" if l in at and base else "—" for l in labels[1:]]
        row += [_ms(at[l].get("modelled_s")) if l in at else "—" for l in labels]
        rows.append(row)
    lines += _table(header, rows) if rows else ["No case was measured by any revision."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+",
                        help="results JSON written by pytest --benchmark; with --compare, LABEL=JSON per revision")
    parser.add_argument("--md", help="Markdown output (default: beside the JSON; with --compare, stdout)")
    parser.add_argument("--png", help="PNG output (default: beside the JSON)")
    parser.add_argument("--summary", action="store_true", help="print a short table of the headline shape")
    parser.add_argument("--compare", action="store_true",
                        help="compare revisions: each argument LABEL=JSON, the first the reference")
    args = parser.parse_args(argv)
    if args.compare:
        runs = []
        for item in args.json:
            label, sep, path = item.partition("=")
            if not sep or not label or not path:
                parser.error(f"--compare takes LABEL=JSON arguments, got {item!r}")
            if not Path(path).is_file():
                parser.error(f"no results JSON at {path} (revision {label})")
            runs.append((label, json.loads(Path(path).read_text())))
        text = compare(runs)
        if args.md:
            Path(args.md).write_text(text)
            print(f"wrote {args.md}")
        else:
            print(text)
        return 0
    if len(args.json) != 1:
        parser.error("one results JSON (several only with --compare)")
    args.json = args.json[0]
    for path in render(args.json, args.md, args.png):
        print(f"wrote {path}")
    if args.summary:
        print(summary(json.loads(Path(args.json).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
