"""The set-up works: torchaudio's pure-Python parts and HubertModel import next to this torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_torchaudio_and_hubert_import_in_a_fresh_interpreter():
    probe = (
        "import torch, torchaudio\n"
        "from torchaudio.compliance.kaldi import fbank\n"
        "from transformers import HubertModel\n"
        "w = torch.randn(1, 16000)\n"
        "feats = fbank(w, num_mel_bins=40, frame_length=25.0, frame_shift=20.0, sample_frequency=16000)\n"
        "assert feats.shape == (49, 40), feats.shape\n"
        "import torchaudio.functional as F\n"
        "assert F.resample(w, 16000, 8000).shape == (1, 8000)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_torchaudio_compat_check_reports_clean(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lpmn_fast.torchaudio_compat", "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "imports cleanly" in result.stdout


def test_disable_and_restore_rename_without_losing_files(tmp_path):
    from lpmn_fast.torchaudio_compat import disable_compiled_libraries, restore_compiled_libraries

    (tmp_path / "_torchaudio.abi3.so").write_bytes(b"lib one")
    (tmp_path / "libtorchaudio.so").write_bytes(b"lib two")
    (tmp_path / "__init__.py").write_text("")
    moved = disable_compiled_libraries(tmp_path)
    assert sorted(p.name for p in moved) == ["_torchaudio.abi3.so.disabled", "libtorchaudio.so.disabled"]
    assert not list(tmp_path.glob("*.so"))
    restored = restore_compiled_libraries(tmp_path)
    assert sorted(p.read_bytes() for p in restored) == [b"lib one", b"lib two"]
    assert (tmp_path / "__init__.py").exists()


def test_kernels_ship_inside_the_package_only(tmp_path):
    # From a directory outside the repository, as an installed user sees it: the kernels are
    # lpmn_fast.kernels, and a top-level `kernels` (if any) is another distribution, never ours.
    probe = (
        "import importlib.util, lpmn_fast.kernels.prototype_mil as k\n"
        "print(k.__file__)\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print(spec.origin if spec else None)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    kernels_file, top_level = result.stdout.split()
    assert Path(kernels_file).resolve().parent == ROOT / "kernels"
    assert top_level == "None" or not Path(top_level).resolve().is_relative_to(ROOT / "kernels")


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "lpmn_fast").rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    # The kernels ship through the link lpmn_fast/kernels -> ../kernels, which has no __init__.py
    # (tests/test_kernels_shadowing.py says why).
    assert "lpmn_fast.kernels" in listed
    assert (ROOT / "lpmn_fast" / "kernels").resolve() == ROOT / "kernels"


def test_demo_runs():
    result = subprocess.run([sys.executable, "-m", "lpmn_fast.demo", "--kernel", "torch"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "most important prototypes" in result.stdout


def test_import_lpmn_fast_loads_no_heavy_optional_module():
    """``import lpmn_fast`` (and the model, training and prediction modules) leave triton,
    transformers, matplotlib and scikit-learn unimported until a call needs them; the fused op imports
    triton on its first use."""
    probe = (
        "import sys\n"
        "heavy = ('triton', 'transformers', 'matplotlib', 'sklearn')\n"
        "loaded = lambda: sorted({m.split('.')[0] for m in sys.modules} & set(heavy))\n"
        "import lpmn_fast\n"
        "print(','.join(loaded()) or '-')\n"
        "import lpmn_fast.models, lpmn_fast.nn, lpmn_fast.ops\n"
        "print(','.join(m for m in loaded() if m in ('triton', 'transformers')) or '-')\n"
        "dispatch = sys.modules['lpmn_fast.ops.prototype_mil']  # the module; the package exports the function\n"
        "dispatch._triton_op()\n"
        "print(','.join(m for m in loaded() if m == 'triton') or '-')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["-", "-", "triton"]


def test_busy_machine_hint_names_the_threads_flag(monkeypatch):
    import os

    import torch

    from lpmn_fast.train import busy_cpu_hint

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 3.0, 2.0))
    hint = busy_cpu_hint(None, "auto")
    assert hint is not None and "--threads 1" in hint and "load 3.5 on 2 cores" in hint
    assert busy_cpu_hint(1, "auto") is None  # the user chose a thread count
    assert busy_cpu_hint(None, "cuda") is None  # a GPU run does not need it
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 0.3, 0.2))
    assert busy_cpu_hint(None, "cpu") is None  # a quiet machine
