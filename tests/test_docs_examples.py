"""Every example in README.md and docs/*.md runs, and every documented flag exists.

Python blocks are executed, each in a fresh namespace, in a folder that holds what the examples
name: ``runs/demo`` (a tiny trained LPMN run, as ``lpmn-train --data synthetic --head lpmn
--run-dir runs/demo`` makes a larger one) and ``clip.wav`` (a stereo 44.1 kHz file). A block
preceded by ``<!-- example: skip (why) -->`` is not run (it needs a GPU, a corpus or the network;
the reason is required); ``<!-- example: skip-cpu (why) -->`` runs only where CUDA is available.

Shell blocks are not run; each command of ours (lpmn-*, python -m lpmn_fast.* / benchmarks.*,
torchrun -m ..., pytest, bash scripts) is checked against the command's own --help, so that a
documented flag cannot disappear unnoticed. The markdown files are read directly: mkdocs is not
needed here.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from training_fixtures import TINY, write_tiny_corpus

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
MARKER = re.compile(r"<!--\s*example:\s*(skip|skip-cpu)\s*\(([^)]+)\)\s*-->")
# Console scripts and `python -m` modules the docs call -> the module whose main() parses the flags.
COMMANDS = {"lpmn-train": "lpmn_fast.train", "lpmn-predict": "lpmn_fast.predict",
            "lpmn-experiment": "lpmn_fast.experiment", "lpmn-demo": "lpmn_fast.demo"}
OUR_MODULES = ("lpmn_fast", "benchmarks")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str
    marker: tuple[str, str] | None  # (skip or skip-cpu, reason)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(lang: str) -> list[Block]:
    found = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) != lang:
                continue
            before = text[:match.start()].rstrip().splitlines()
            marker = MARKER.search(before[-1]) if before else None
            found.append(Block(path, text.count("\n", 0, match.start()) + 1, lang, match.group(2),
                               (marker.group(1), marker.group(2).strip()) if marker else None))
    return found


PYTHON = blocks("python")
SHELL = blocks("bash")


def test_the_docs_have_examples_and_markers_give_reasons():
    assert len(PYTHON) >= 5 and len(SHELL) >= 10
    for path in DOC_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            if "<!-- example:" in line:
                assert MARKER.search(line), f"{path.name}: a marker needs a kind and a reason: {line!r}"


README_LIMIT = 10 * 1024  # bytes: a README that fits on a screen or two; the rest is in docs/
SETUP = ("```bash\n"
         "bash scripts/setup.sh && .venv/bin/lpmn-train --data synthetic --head lpmn,ap,mp\n"
         "bash scripts/setup.sh dev && .venv/bin/python -m pytest\n"
         "```\n")


def test_readme_is_short_and_opens_with_the_two_setup_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) <= README_LIMIT
    assert text.startswith("# lpmn_fast\n\n" + SETUP)  # CI runs exactly these lines


def test_the_nav_lists_every_page():
    """mkdocs.yml's nav names each docs page once (mkdocs itself only warns about omitted ones)."""
    nav = re.findall(r"^\s*- (?:[^:\n]+: )?([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert sorted(nav) == pages


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with runs/demo (a tiny trained LPMN run) and clip.wav (stereo, 44.1 kHz)."""
    import torchaudio.functional

    import lpmn_fast.training.corpus as training_corpus
    from lpmn_fast.training import make_config, train

    root = tmp_path_factory.mktemp("docs")
    corpus = write_tiny_corpus(root / "corpus")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training_corpus, "load_corpus", lambda config: corpus)
        train(make_config(**TINY, cache_dir=str(root / "cache"), run_dir=str(root / "runs" / "demo")))
    wave = torch.cat([torch.from_numpy(soundfile.read(u.path, dtype="float32")[0]) for u in corpus.utterances[:2]])
    at_44k = torchaudio.functional.resample(wave, 16000, 44100).numpy()
    soundfile.write(root / "clip.wav", np.stack([at_44k, 0.5 * at_44k], axis=1), 44100)
    return root


@pytest.mark.parametrize("block", PYTHON, ids=[b.where for b in PYTHON])
def test_python_example_runs(block, workspace, monkeypatch):
    if block.marker and block.marker[0] == "skip":
        pytest.skip(f"{block.where}: {block.marker[1]}")
    if block.marker and block.marker[0] == "skip-cpu" and not torch.cuda.is_available():
        pytest.skip(f"{block.where}: {block.marker[1]}")
    monkeypatch.chdir(workspace)
    torch.manual_seed(0)
    code = compile(block.code, block.where, "exec")
    with contextlib.redirect_stdout(io.StringIO()):
        exec(code, {"__name__": "__doc_example__"})


# ---- shell blocks: every flag exists -------------------------------------------------------------

def commands(code: str) -> list[list[str]]:
    """The command lines of a shell block: continuations joined, comments cut, split at && and |."""
    text = code.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            tokens = line.split("#")[0].split()
        command: list[str] = []
        for token in tokens + ["&&"]:
            if token in ("&&", "||", "|", ";"):
                if command:
                    found.append(command)
                command = []
            else:
                command.append(token)
    return found


def target(command: list[str]) -> tuple[str, list[str]] | None:
    """(what parses the flags, the arguments after it) of one of our commands, else None."""
    for i, token in enumerate(command):
        name = Path(token).name
        if name in COMMANDS:
            return COMMANDS[name], command[i + 1:]
        if token == "-m" and i + 1 < len(command) and command[i + 1].split(".")[0] in OUR_MODULES:
            return command[i + 1], command[i + 2:]
        if token == "-m" and i + 1 < len(command) and command[i + 1] == "pytest":
            return "pytest", command[i + 2:]
        if name == "bash" and i + 1 < len(command):
            return "bash", command[i + 1:]
    return None


_HELP: dict[str, set[str]] = {}


def known_flags(module: str) -> set[str]:
    """The flags ``module``'s main() shows in --help (run in this process, its output captured)."""
    if module not in _HELP:
        if module == "pytest":
            text = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=120).stdout
        else:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit:
                importlib.import_module(module).main(["--help"])
            assert exit.value.code == 0, f"{module} --help failed"
            text = out.getvalue()
        _HELP[module] = set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", text))
    return _HELP[module]


@pytest.mark.parametrize("block", SHELL, ids=[b.where for b in SHELL])
def test_shell_example_flags_exist(block):
    checked = 0
    for command in commands(block.code):
        found = target(command)
        if found is None:
            continue
        module, args = found
        if module == "bash":  # one of our scripts: it exists
            assert (ROOT / args[0]).is_file(), f"{block.where}: no script {args[0]}"
            checked += 1
            continue
        flags = {a.split("=")[0] for a in args if a.startswith("--") and a != "--"}
        missing = sorted(flags - known_flags(module))
        assert not missing, f"{block.where}: {module} has no {missing} (command: {' '.join(command)})"
        checked += 1
    if not checked:
        pytest.skip(f"{block.where}: no lpmn_fast command in this block")
