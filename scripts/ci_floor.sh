#!/usr/bin/env bash
# CI's floor environment (.ci/run): the oldest versions lpmn_fast claims, tested. .venv-floor gets
# every dependency in pyproject.toml at exactly its floor ('>=X' installed as '==X', read from the
# file, so a floor cannot drift from what is tested), with torch 2.11.0 and triton 3.6.0, the GPU
# image's. It runs the op, kernel, encoder and training tests, then the encoder tests again with the
# GPU image's transformers 5.17.0. torch 2.11.0 from PyPI is a CUDA build (with its nvidia-*
# wheels, about 2.6 GB to download once; pip's cache keeps them) that runs on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_IMAGE_TRANSFORMERS=5.17.0
venv="${LPMN_VENV:-.venv-floor}"
py="$venv/bin/python"

[ -x "$py" ] || python3 -m venv "$venv"
floors="$venv/floor-requirements.txt"
python3 - > "$floors" <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
pins = {"torch": "2.11.0", "triton": "3.6.0"}  # the GPU image's (torch>=2.11 / triton>=3.6 as floors)
out = []
for dep in deps:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)(;[^#]*)?", dep.split("#")[0].strip())
    if not m:
        raise SystemExit(f"ci_floor: cannot read a floor from {dep!r}")
    name, floor = m.group(1), m.group(2)
    out.append(f"{name}=={pins.get(name, floor)}{m.group(3) or ''}")
print("\n".join(out))
PY
echo "floor environment: $(grep -o '^[^;]*' "$floors" | tr '\n' ' ')"
"$py" -m pip install --quiet --disable-pip-version-check -r "$floors" -e ".[dev]"
"$py" -m lpmn_fast.torchaudio_compat
"$py" -m pip check
"$py" -c "import sys, torch, triton, transformers, torchaudio, numpy as np; print('floor environment: python', \
sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'transformers', \
transformers.__version__, 'torchaudio', torchaudio.__version__, 'numpy', np.__version__)"

shopt -s nullglob  # kernel test files come and go by name; list those that exist
op_tests=(tests/test_reference_op.py tests/test_op_validation.py tests/test_prototype_mil_module.py
          tests/test_triton*.py tests/test_*kernel*.py)
encoder_tests=(tests/test_encoders.py tests/test_encoder_training.py tests/test_models.py tests/test_environment.py)
training_tests=(tests/test_training.py tests/test_training_fast_path.py)
"$py" -m pytest -q -p no:cacheprovider "${op_tests[@]}" "${encoder_tests[@]}" "${training_tests[@]}"

echo "floor environment: encoder tests with the GPU image's transformers $GPU_IMAGE_TRANSFORMERS"
"$py" -m pip install --quiet --disable-pip-version-check "transformers==$GPU_IMAGE_TRANSFORMERS"
"$py" -m pytest -q -p no:cacheprovider "${encoder_tests[@]}"
