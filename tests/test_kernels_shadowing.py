"""The repository's kernels/ folder never shadows an installed top-level ``kernels`` distribution.

Why it could: Python puts the current directory first on ``sys.path`` for ``python -m`` and
``python -c`` (and pytest's rootdir conftest puts the repository root there too), so a
``kernels/__init__.py`` at the root made the folder the regular package ``kernels`` for every
import from the checkout, and transformers >= 5.25 imports Hugging Face's ``kernels``. The cause is
removed: kernels/ has no ``__init__.py`` (it ships as ``lpmn_fast.kernels`` through the link
``lpmn_fast/kernels -> ../kernels``), so from the root it is at most a namespace portion, and the
import system takes a regular package anywhere on ``sys.path`` before a namespace portion.

Each situation runs in a fresh interpreter from the repository root with ``-S`` and a temporary
site directory that mirrors this environment's site-packages without any ``kernels``; the
"installed" situation adds the real distribution when this environment has it, and a stand-in
distribution (a regular package with its own dist-info) when it does not.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(sysconfig.get_paths()["purelib"])
STAND_IN_MARK = "lpmn_fast test stand-in"


def _is_kernels_entry(name: str) -> bool:
    return name == "kernels" or (name.startswith("kernels-") and name.endswith(".dist-info"))


def _real_kernels() -> list[Path]:
    """The installed Hugging Face ``kernels`` package folder and dist-info, if any."""
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return []
    base = Path(dist.locate_file(""))
    return [p for p in base.iterdir() if _is_kernels_entry(p.name)]


def _mirror_site(tmp_path: Path, situation: str) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    for entry in SITE.iterdir():
        if not _is_kernels_entry(entry.name):
            (site / entry.name).symlink_to(entry)
    if situation == "installed":
        real = _real_kernels()
        if real:
            for entry in real:
                (site / entry.name).symlink_to(entry)
        else:
            (site / "kernels").mkdir()
            (site / "kernels" / "__init__.py").write_text(f"STAND_IN = {STAND_IN_MARK!r}\n")
            info = site / "kernels-0.0.1.dist-info"
            info.mkdir()
            # A version below every transformers release's minimum: transformers sees it, declines it.
            (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.0.1\n")
    return site


def _run(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


PROBE = (
    "import importlib.util\n"
    "spec = importlib.util.find_spec('kernels')\n"
    "print('kernels:', spec.origin if spec and spec.origin else 'namespace' if spec else 'none')\n"
    "import transformers.activations\n"
    "from transformers import HubertConfig, HubertModel\n"
    "HubertModel(HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,\n"
    "    intermediate_size=32, conv_dim=(8,), conv_stride=(5,), conv_kernel=(10,)))\n"
    "import lpmn_fast.kernels.prototype_mil as k\n"
    "print('ours:', k.__file__)\n"
)


@pytest.mark.parametrize("situation", ["installed", "absent"])
def test_imports_from_the_repository_root(tmp_path, situation):
    site = _mirror_site(tmp_path, situation)
    result = _run(site, "-c", PROBE)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    if situation == "installed":
        origin = Path(lines["kernels"])
        assert origin.is_relative_to(site), f"`kernels` resolved to {origin}, not the installed one"
    else:
        # Our folder is at most a namespace portion, which transformers treats as "not installed".
        assert lines["kernels"] in ("namespace", "none")
    assert Path(lines["ours"]).resolve() == ROOT / "kernels" / "prototype_mil.py"


@pytest.mark.parametrize("situation", ["installed", "absent"])
def test_torchaudio_compat_module_from_the_repository_root(tmp_path, situation):
    result = _run(_mirror_site(tmp_path, situation), "-m", "lpmn_fast.torchaudio_compat", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "imports cleanly" in result.stdout


@pytest.mark.parametrize("situation", ["installed", "absent"])
def test_python_m_pytest_from_the_repository_root(tmp_path, situation):
    # A test that builds a transformers HuBERT model, collected and run by `python -m pytest`.
    result = _run(
        _mirror_site(tmp_path, situation),
        "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "tests/test_encoders.py::test_defaults_keep_every_block_and_tune_the_last_two",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.match(r"\d+ passed\b", summary) and "failed" not in summary and "error" not in summary, summary


def test_the_kernels_folder_is_not_a_regular_package():
    assert not (ROOT / "kernels" / "__init__.py").exists(), (
        "kernels/__init__.py makes the folder the top-level package `kernels` whenever the "
        "repository root is on sys.path, shadowing Hugging Face's `kernels`"
    )
