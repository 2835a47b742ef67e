#!/usr/bin/env bash
# The GPU image's Python packages in a virtual environment on any Linux x86_64 machine (issue 21):
# .venv-image (or $LPMN_IMAGE_VENV) with the versions the image 'cuda' has (device KINDS.md):
#   torch 2.11.0 (PyPI's CUDA build: it runs on a CPU, with its nvidia-* libraries, ~6 GB),
#   triton 3.6.0, transformers 5.17.0, torchaudio 2.11.0, huggingface_hub 1.33.0, safetensors 0.8.0,
#   numpy 2.5.2 unless Triton 3.6's CPU interpreter fails with it (then the newest that works, said below),
# and otherwise only packages the image has (scipy, scikit-learn, matplotlib, tqdm, pyyaml, tensorboard,
# pytest, pytest-benchmark, pytest-timeout): no soundfile, which the image lacks. lpmn_fast itself goes in
# with `pip install --no-deps -e .` as on the device (a link lpmn_fast/kernels -> ../kernels is the
# fallback where that fails). Python 3.12 (the image's) when there is one, else python3.
#
#   bash scripts/image_env.sh            # build once; later runs check the versions and return at once
#   LPMN_IMAGE_WHEELS=DIR bash scripts/image_env.sh   # also take wheels from DIR (pip --find-links)
#   LPMN_IMAGE_REBUILD=1 ...             # start again from an empty venv
#
# Non-interactive, idempotent, safe on a fresh clone; prints the versions it installed (last line
# "image env: ..."). Exit code non-zero when a pinned version could not be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LPMN_IMAGE_VENV:-.venv-image}"
IMAGE_PINS="torch==2.11.0 triton==3.6.0 transformers==5.17.0 torchaudio==2.11.0 huggingface_hub==1.33.0 safetensors==0.8.0"
IMAGE_NUMPY=2.5.2
# Triton 3.6's interpreter fails on numpy >= 2.4 (a 1-element array to int raises); this one works.
FALLBACK_NUMPY=2.3.5
# Packages the image has (unpinned where its version was not read there).
IMAGE_OTHERS="scipy scikit-learn matplotlib tqdm pyyaml tensorboard pytest pytest-benchmark pytest-timeout"
stamp="$venv/.image-env"
want="$IMAGE_PINS numpy:$IMAGE_NUMPY/$FALLBACK_NUMPY $IMAGE_OTHERS"

pick_python() {
  local p
  for p in "${LPMN_IMAGE_PYTHON:-}" python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 python3; do
    [ -n "$p" ] || continue
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import venv' 2>/dev/null; then echo "$p"; return; fi
  done
  echo "image env: no python3 found" >&2; exit 1
}

versions() {
  "$venv/bin/python" - <<'EOF'
import importlib.metadata as md, platform
def v(n):
    try: return md.version(n)
    except md.PackageNotFoundError: return "-"
names = ["torch", "triton", "transformers", "torchaudio", "numpy", "huggingface_hub", "safetensors", "pytest", "soundfile"]
print(f"image env: python {platform.python_version()}, " + ", ".join(f"{n} {v(n)}" for n in names))
EOF
}

# Whether Triton's interpreter runs the op's forward and backward kernels with this numpy.
interpreter_works() {
  TRITON_INTERPRET=1 "$venv/bin/python" - <<'EOF' >/dev/null 2>&1
import torch
from lpmn_fast.ops import prototype_mil
x = torch.randn(2, 5, 8, requires_grad=True)
p = torch.randn(3, 8, requires_grad=True)
out = prototype_mil(x, p, torch.tensor([5, 3]), backend="triton")
out.pooled.sum().backward()
ref = prototype_mil(x.detach(), p.detach(), torch.tensor([5, 3]), backend="torch")
assert torch.allclose(out.pooled, ref.pooled, atol=1e-4)
EOF
}

if [ "${LPMN_IMAGE_REBUILD:-0}" = 1 ]; then rm -rf "$venv"; fi
if [ -f "$stamp" ] && [ "$(head -1 "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  versions
  exit 0
fi

py=$(pick_python)
if [ ! -x "$venv/bin/python" ]; then
  echo "image env: creating $venv with $py ($("$py" --version 2>&1))"
  "$py" -m venv "$venv"
fi
pip_args=(--quiet --disable-pip-version-check)
[ -n "${LPMN_IMAGE_WHEELS:-}" ] && pip_args+=(--find-links "$LPMN_IMAGE_WHEELS")
echo "image env: installing $IMAGE_PINS numpy==$IMAGE_NUMPY $IMAGE_OTHERS (several GB the first time)"
# shellcheck disable=SC2086  # lists of requirements
"$venv/bin/python" -m pip install "${pip_args[@]}" $IMAGE_PINS "numpy==$IMAGE_NUMPY" $IMAGE_OTHERS setuptools wheel
# lpmn_fast as on the device: no dependencies resolved, no build isolation (the device has no network)
if ! "$venv/bin/python" -m pip install "${pip_args[@]}" --no-deps --no-build-isolation -e . ; then
  echo "image env: pip install -e . failed; lpmn_fast imports from the repository root only"
fi
if interpreter_works; then
  echo "image env: Triton's interpreter works with numpy $IMAGE_NUMPY (the image's)"
else
  echo "image env: Triton's interpreter fails with numpy $IMAGE_NUMPY; installing numpy $FALLBACK_NUMPY" \
       "for CPU runs (the GPU image keeps $IMAGE_NUMPY: compiled kernels do not use it)"
  "$venv/bin/python" -m pip install "${pip_args[@]}" "numpy==$FALLBACK_NUMPY"
  interpreter_works || { echo "image env: the interpreter fails with numpy $FALLBACK_NUMPY too" >&2; exit 1; }
fi
echo "$want" > "$stamp"
versions
