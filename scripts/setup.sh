#!/usr/bin/env bash
# Set up lpmn_fast in a virtual environment (default .venv, or $LPMN_VENV).
#   bash scripts/setup.sh        # the package and its runtime dependencies
#   bash scripts/setup.sh dev    # plus pytest and pytest-benchmark
# torch is pinned to 2.13.0: pip takes the CPU wheel where one lies on disk and the CUDA build
# from PyPI elsewhere. PyPI's torchaudio ships compiled libraries built for another torch;
# lpmn_fast.torchaudio_compat disables them when (and only when) they fail to load, so that
# torchaudio's pure-Python parts and transformers' HubertModel import cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LPMN_VENV:-.venv}"
extras=""
case "${1:-}" in
  "") ;;
  dev) extras="[dev]" ;;
  *) echo "usage: bash scripts/setup.sh [dev]" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating virtual environment $venv"
  python3 -m venv "$venv"
fi
echo "setup: installing lpmn_fast$extras with torch==2.13.0 into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".$extras"
"$venv/bin/python" -m lpmn_fast.torchaudio_compat
