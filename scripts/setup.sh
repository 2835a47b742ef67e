#!/usr/bin/env bash
# Set up lpmn_fast in a virtual environment (default .venv, or $LPMN_VENV).
#   bash scripts/setup.sh        # the package and its runtime dependencies
#   bash scripts/setup.sh dev    # plus pytest and pytest-benchmark
#   bash scripts/setup.sh floor  # .venv-floor: the oldest tested versions (FLOOR_PINS below) + pytest,
#                                # the second CI environment (.ci/run)
# torch is pinned to 2.13.0: pip takes the CPU wheel where one lies on disk and the CUDA build
# from PyPI elsewhere. PyPI's torchaudio ships compiled libraries built for another torch;
# lpmn_fast.torchaudio_compat disables them when (and only when) they fail to load, so that
# torchaudio's pure-Python parts and transformers' HubertModel import cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LPMN_VENV:-.venv}"
extras=""
pins="torch==2.13.0"
# The oldest versions lpmn_fast is tested with, = the floors in pyproject.toml. triton 3.6.0 and
# torchaudio 2.11 are the GPU image's (its torch 2.11 is a multi-GB CUDA wheel on PyPI: torch stays
# 2.13.0); transformers 5.0.0 is the oldest that passes (4.57.6 lacks create_bidirectional_mask),
# and scripts/ci_floor.sh reruns the encoder tests with the GPU image's transformers 5.17.0.
# numpy: triton 3.6's CPU interpreter fails on numpy 2.4 (a 1-element array to int now raises); 2.3.5 works.
FLOOR_PINS="torch==2.13.0 triton==3.6.0 transformers==5.0.0 torchaudio==2.11.0 numpy==2.3.5"
case "${1:-}" in
  "") ;;
  dev) extras="[dev]" ;;
  floor) extras="[dev]"; pins="$FLOOR_PINS"; venv="${LPMN_VENV:-.venv-floor}" ;;
  *) echo "usage: bash scripts/setup.sh [dev|floor]" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating virtual environment $venv"
  python3 -m venv "$venv"
fi
echo "setup: installing lpmn_fast$extras with $pins into $venv"
# shellcheck disable=SC2086  # $pins is a list of requirements
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check $pins -e ".$extras"
"$venv/bin/python" -m lpmn_fast.torchaudio_compat
