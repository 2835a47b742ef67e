"""benchmarks/gpu_run.sh and the revision comparison it prints (no GPU: the script's own dry run is
`SKIP_INSTALL=1 PYTHON=.venv/bin/python LPMN_BENCH_PROFILE=cpu bash benchmarks/gpu_run.sh main`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.cases import Case

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_run.sh"


def _record(provider, median, q1=None, q3=None, model=None, shape=(128, 300, 1024, 1024)):
    case = Case("op", provider, "full", *shape, "bfloat16", ("paper",))
    r = {**case.describe(), "status": "ok", "peak_mem_bytes": None,
         "time_s": {"median": median, "q1": q1 or median, "q3": q3 or median, "rounds": 10}}
    if model:
        r["modelled"] = {"flops": 1, "hbm_bytes": 1, "s": model}
    return r


def _doc(records, device="NVIDIA H100 80GB HBM3"):
    return {"device": {"type": "cuda", "name": device}, "records": records}


def test_compare_lists_each_revision_with_its_spread_ratio_and_model():
    tree = _doc([_record("triton", 2e-3, 1.9e-3, 2.1e-3, {"H100": 1e-3, "H200": 0.8e-3}),
                 _record("eager", 8e-3), _record("compile", 4e-3)])
    old = _doc([_record("triton", 6e-3, 5.5e-3, 6.5e-3), _record("eager", 8.4e-3)])
    md = report.compare([("tree", tree), ("main", old)])
    assert md.startswith("# Revisions compared on NVIDIA H100 80GB HBM3")
    assert "| case | tree ms | main ms | main × | tree model ms | main model ms |" in md
    assert "| op-triton-full-bf16-B128-T300-C1024-K1024 | 2 [1.9–2.1] | 6 [5.5–6.5] | 3× | 1 | — |" in md
    assert "| op-eager-full-bf16-B128-T300-C1024-K1024 | 8 [8–8] | 8.4 [8.4–8.4] | 1.05× |" in md
    assert "op-compile" not in md  # measured by the tree alone: nothing to compare
    assert md.index("op-triton") < md.index("op-eager")


def test_compare_warns_when_devices_differ():
    md = report.compare([("a", _doc([_record("triton", 1e-3)])), ("b", _doc([_record("triton", 1e-3)], "Other"))])
    assert "different devices" in md


def test_compare_command_line(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_doc([_record("triton", 1e-3)])))
    b.write_text(json.dumps(_doc([_record("triton", 3e-3)])))
    assert report.main(["--compare", f"tree={a}", f"old={b}", "--md", str(tmp_path / "c.md")]) == 0
    assert "| 3× |" in (tmp_path / "c.md").read_text()
    with pytest.raises(SystemExit):
        report.main(["--compare", str(a)])
    assert "LABEL=JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main(["--compare", f"x={tmp_path / 'missing.json'}"])
    assert "no results JSON" in capsys.readouterr().err


def test_script_parses_and_documents_its_options():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    help_text = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert help_text.returncode == 0
    for word in ("--prepare", "TOTAL_BUDGET", "TESTS_TIMEOUT", "BENCH_BUDGET", "REV_BUDGET", "REV_FILTER",
                 "tests/test_triton_gpu.py", "compare.md", "SKIP_INSTALL"):
        assert word in help_text.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown option" in bad.stderr


def test_plot_draws_the_model_dashed_beside_the_measurement(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    records = []
    for K in (128, 512):
        for provider, t in (("triton", 1e-3), ("eager", 4e-3)):
            r = _record(provider, t * K / 128, model={"H100": t * K / 256, "H200": t * K / 300},
                        shape=(8, 100, 64, K))
            r["sweeps"] = ["K"]
            records.append(r)
    matplotlib.use("Agg")
    import matplotlib.axes

    labels = []
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    assert report.plot(_doc(records, device="NVIDIA H200"), tmp_path / "p.png")
    assert "triton (modelled, H200)" in labels and "eager (modelled, H200)" in labels
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


BLOCK_AUDIO = """
import sys
class Block:
    # the GPU image has no soundfile; the op tests must not need torchaudio either
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("soundfile", "torchaudio"):
            raise ImportError(f"{name} blocked: the op and kernel tests must not import audio libraries")
sys.meta_path.insert(0, Block())
import pytest
code = pytest.main(["-q", "-p", "no:cacheprovider", "--collect-only", *sys.argv[1:]])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("soundfile", "torchaudio"))
print("audio modules loaded:", loaded)
sys.exit(code or bool(loaded))
"""


def test_gpu_tests_collect_without_audio_libraries():
    # What the GPU stage runs (GPU_TESTS), collected with soundfile and torchaudio unimportable.
    files = ["tests/test_triton_gpu.py", "tests/test_triton_op.py"]
    result = subprocess.run([sys.executable, "-c", BLOCK_AUDIO, *files], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "audio modules loaded: []" in result.stdout
    assert "tests collected" in result.stdout or "test collected" in result.stdout


def test_script_checks_imports_and_ends_with_its_line():
    text = SCRIPT.read_text()
    # the import check runs before the first measuring stage, and the last line has the form
    assert text.index('stage "imports"') < text.index('stage "GPU tests"')
    assert "tests {t[0]} passed, {t[1]} failed, {t[2]} errors; benchmarks {b[0]} passed" in text
    for option in ("--prepare", "--rehearse"):
        assert option in subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True).stdout
