#!/usr/bin/env bash
# Refresh requirements/lock.txt, the exact versions `bash scripts/setup.sh [dev]` installs (the README
# path). Deliberately, never in CI: it resolves pyproject.toml's dependencies with every extra afresh
# in a throw-away environment (.venv-lock), with torch at TORCH (the CPU wheel where one lies on
# disk, PyPI's build elsewhere), and writes `pip freeze` of the result. Then test and commit it:
#   bash scripts/lock.sh && rm -rf .venv && bash scripts/setup.sh dev && .venv/bin/python -m pytest
#   git add requirements/lock.txt && git commit -m "lock: refreshed"
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="${TORCH:-torch==2.13.0}"
extras="dev,docs,tensorboard"
rm -rf .venv-lock
python3 -m venv .venv-lock
echo "lock: resolving lpmn_fast[$extras] with $TORCH afresh"
.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# shellcheck disable=SC2086
.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check $TORCH -e ".[$extras]"
{
  echo "# The exact set CI tests and scripts/setup.sh installs (pip constraints). Made by scripts/lock.sh"
  echo "# on $(date -u +%Y-%m-%d) with $(.venv-lock/bin/python --version); refresh it only with that script."
  # Local version labels (+cpu) dropped: '==2.13.0' then takes the CPU wheel or PyPI's build alike.
  .venv-lock/bin/python -m pip freeze --exclude-editable --disable-pip-version-check | sed -E 's/\+[a-z0-9.]+$//' | sort -f
} > requirements/lock.txt
rm -rf .venv-lock
echo "lock: wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages)"
