"""requirements/lock.txt, the set the README's commands install, agrees with pyproject.toml, and the
README's environment (.venv, made by scripts/setup.sh) holds exactly the locked versions."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def _lock() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line.strip())
        assert match, f"lock line is not 'name==version': {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{name} is locked twice"
        pins[name] = Version(match.group(2))
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["dev"]]


def test_every_dependency_is_locked_within_its_range():
    pins = _lock()
    for req in _declared():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements/lock.txt: refresh it with scripts/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements/lock.txt has {req.name}=={pins[name]}, outside pyproject.toml's {req}")


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="checks the README's environment (.venv from scripts/setup.sh) only; this is "
                           f"{sys.prefix}")
def test_the_readme_environment_holds_the_locked_versions():
    wrong = []
    for name, version in _lock().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an extra's package (docs, tensorboard) that this set-up did not ask for
        if Version(Version(installed).public) != version:
            wrong.append(f"{name} {installed} (locked {version})")
    assert not wrong, "not the locked versions: " + ", ".join(wrong) + "; rerun bash scripts/setup.sh dev"
