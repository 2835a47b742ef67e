#!/usr/bin/env bash
# CI's second environment (.ci/run, after the README's test command): the oldest tested versions
# (`bash scripts/setup.sh floor` -> .venv-floor: torch 2.13.0, triton 3.6.0 as on the GPU image,
# transformers 5.0.0, torchaudio 2.11.0) running the op and kernel tests and the encoder tests,
# then the encoder tests again with the GPU image's transformers 5.17.0.
# About 10 minutes on 2 cores, most of it installing.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_IMAGE_TRANSFORMERS=5.17.0
py=.venv-floor/bin/python

bash scripts/setup.sh floor
shopt -s nullglob  # kernel test files come and go by name; list those that exist
op_tests=(tests/test_reference_op.py tests/test_op_validation.py tests/test_prototype_mil_module.py
          tests/test_triton*.py tests/test_*kernel*.py)
encoder_tests=(tests/test_encoders.py tests/test_encoder_training.py tests/test_models.py tests/test_environment.py)
"$py" -c "import torch, triton, transformers, torchaudio, numpy as np; print('floor environment: torch', \
torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'torchaudio', \
torchaudio.__version__, 'numpy', np.__version__)"
"$py" -m pytest -q -p no:cacheprovider "${op_tests[@]}" "${encoder_tests[@]}"

echo "floor environment: encoder tests with the GPU image's transformers $GPU_IMAGE_TRANSFORMERS"
"$py" -m pip install --quiet --disable-pip-version-check "transformers==$GPU_IMAGE_TRANSFORMERS"
"$py" -m pytest -q -p no:cacheprovider "${encoder_tests[@]}"
