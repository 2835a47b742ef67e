#!/usr/bin/env bash
# Set up lpmn_fast in a virtual environment.
#   bash scripts/setup.sh         # .venv: the package and its runtime dependencies, locked
#   bash scripts/setup.sh dev     # .venv: plus pytest, pytest-benchmark and tensorboard, locked
#   bash scripts/setup.sh newest  # .venv-newest: dev, resolved afresh from pyproject.toml (no lock):
#                                 # the newest releases, CI's second environment
# "Locked" = requirements/lock.txt, the exact versions CI last passed with (pip constraints; refresh
# only with scripts/lock.sh). The floor environment (the oldest tested versions = the GPU image's) is
# scripts/image_env.sh. $LPMN_VENV overrides the folder.
# PyPI's torchaudio ships compiled libraries built for one torch; lpmn_fast.torchaudio_compat
# disables them when (and only when) they fail to load, so that torchaudio's pure-Python parts and
# transformers' HubertModel import cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
lock=(-c requirements/lock.txt)
upgrade=()
case "${1:-}" in
  "") extras=""; venv="${LPMN_VENV:-.venv}" ;;
  dev) extras="[dev]"; venv="${LPMN_VENV:-.venv}" ;;
  newest) extras="[dev]"; venv="${LPMN_VENV:-.venv-newest}"; lock=(); upgrade=(--upgrade --upgrade-strategy eager) ;;
  *) echo "usage: bash scripts/setup.sh [dev|newest]" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating virtual environment $venv"
  python3 -m venv "$venv"
fi
if [ ${#lock[@]} -gt 0 ]; then what="the locked versions (requirements/lock.txt)"; else what="the newest releases"; fi
echo "setup: installing lpmn_fast$extras with $what into $venv"
# pip's own cache is kept: a second environment, or CI's next run, reuses its downloads.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${upgrade[@]}" "${lock[@]}" -e ".$extras"
"$venv/bin/python" -m lpmn_fast.torchaudio_compat
"$venv/bin/python" -c "from importlib.metadata import version as v, PackageNotFoundError as E
def show(name):
    try: return name + ' ' + v(name)
    except E: return name + ' -'
print('setup:', ' | '.join(map(show, ('torch', 'triton', 'transformers', 'torchaudio', 'numpy'))))"
