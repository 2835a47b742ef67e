"""Make torchaudio importable next to a torch it was not compiled for.

PyPI's torchaudio wheels carry compiled libraries (``torchaudio/lib/*.so``) built
against one exact torch release (and CUDA). Next to another torch they fail to
load, and because ``import torchaudio`` loads them eagerly, even
``from transformers import HubertModel`` breaks. lpmn_fast only needs
torchaudio's pure-Python parts (``compliance.kaldi.fbank``,
``functional.resample``, ``transforms.MelSpectrogram``), which work without
those libraries: torchaudio skips a library that is not there.

``python -m lpmn_fast.torchaudio_compat`` checks ``import torchaudio`` in a
fresh interpreter and, only if it fails while loading a compiled library,
renames those libraries to ``*.so.disabled`` (nothing is deleted; ``--restore``
puts them back). ``scripts/setup.sh`` runs it after installing.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

DISABLED_SUFFIX = ".disabled"


def torchaudio_import_error(python: str = sys.executable) -> str | None:
    """Import torchaudio and HubertModel in a fresh interpreter; return the error text, or None."""
    probe = "import torchaudio, torchaudio.compliance.kaldi; from transformers import HubertModel"
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if result.returncode == 0:
        return None
    return (result.stderr.strip().splitlines() or ["(no message)"])[-1]


def torchaudio_lib_dir() -> Path:
    """Directory of torchaudio's compiled libraries, found without importing torchaudio."""
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("torchaudio is not installed: pip install torchaudio")
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def compiled_libraries(lib_dir: Path) -> list[Path]:
    """The loadable shared libraries torchaudio would try to load."""
    return sorted(p for p in lib_dir.glob("*") if p.suffix in (".so", ".pyd", ".dylib"))


def disable_compiled_libraries(lib_dir: Path) -> list[Path]:
    """Rename each compiled library to ``<name>.disabled``; return the new paths."""
    moved = []
    for path in compiled_libraries(lib_dir):
        target = path.with_name(path.name + DISABLED_SUFFIX)
        path.rename(target)
        moved.append(target)
    return moved


def restore_compiled_libraries(lib_dir: Path) -> list[Path]:
    """Undo :func:`disable_compiled_libraries`; return the restored paths."""
    restored = []
    for path in sorted(lib_dir.glob(f"*{DISABLED_SUFFIX}")):
        target = path.with_name(path.name[: -len(DISABLED_SUFFIX)])
        path.rename(target)
        restored.append(target)
    return restored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lpmn_fast.torchaudio_compat",
        description="Check that torchaudio imports next to the installed torch; if its compiled "
        "libraries cannot load, disable them (rename to *.disabled) so its pure-Python parts work.",
    )
    parser.add_argument("--check", action="store_true", help="only report, change nothing (exit 1 if broken)")
    parser.add_argument("--restore", action="store_true", help="rename disabled libraries back and exit")
    args = parser.parse_args(argv)

    lib_dir = torchaudio_lib_dir()
    if args.restore:
        for path in restore_compiled_libraries(lib_dir):
            print(f"restored {path}")
        return 0

    error = torchaudio_import_error()
    if error is None:
        print("torchaudio: imports cleanly next to this torch; nothing to do")
        return 0
    if args.check:
        print(f"torchaudio: import fails: {error}")
        return 1
    if not compiled_libraries(lib_dir):
        print(f"torchaudio: import fails and no compiled library is left to disable: {error}", file=sys.stderr)
        return 1
    print(f"torchaudio: import fails ({error}); disabling its compiled libraries")
    for path in disable_compiled_libraries(lib_dir):
        print(f"  disabled {path}")
    error = torchaudio_import_error()
    if error is not None:
        print(f"torchaudio: still fails after disabling: {error}", file=sys.stderr)
        return 1
    print("torchaudio: pure-Python parts import cleanly now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
