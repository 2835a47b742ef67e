#!/usr/bin/env bash
# One lease of a GPU machine for issue 7: install, GPU tests, benchmark suite, report; files under $OUT.
#
#   bash benchmarks/gpu_run.sh            # on the device machine, from the repository root
#
# Time (worst case ~7.5 min, so run it with timeout_s=540): install <= 60 s, tests <= TESTS_TIMEOUT
# (90 s), benchmarks: cases that would start after BENCH_BUDGET (200 s) are skipped and listed, with
# a hard stop 60 s later, report ~20 s. Expected (estimated, not yet run on a GPU): 5-6 minutes.
# The results JSON is rewritten after every case, so a run cut short still reports what it measured.
# Prints a short table of the paper shape last.
#
# Files in $OUT (the device returns at most 8): run.log (everything printed), bench.json (results
# with derived figures), bench.md, bench.png, pytest-benchmark.json (pytest-benchmark's raw stats).
#
# Environment: PYTHON (python3), OUT (/tmp/lpmn-gpu-run when unset), LPMN_BENCH_PROFILE (gpu-quick
# with CUDA, cpu without: a dry run), BENCH_BUDGET (200), TESTS_TIMEOUT (90), SKIP_INSTALL (1: keep
# the installed package, e.g. a dry run with .venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/lpmn-gpu-run}
BENCH_BUDGET=${BENCH_BUDGET:-200}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-90}
SKIP_INSTALL=${SKIP_INSTALL:-0}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

stage() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }

install() {
  if [ "$SKIP_INSTALL" = 1 ]; then
    echo "SKIP_INSTALL=1: using the lpmn_fast already importable by $PY"
    return
  fi
  # No network there: --no-build-isolation uses the setuptools already installed instead of fetching one.
  if timeout 60 $PY -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
    return
  fi
  # Fallback: pyproject.toml ships kernels/ as lpmn_fast.kernels; a link gives the same layout to
  # imports from the repository root (python -m puts it first on sys.path). The device's tree is a copy.
  echo "pip install -e . failed; falling back to imports from the repository root"
  [ -d kernels ] && [ ! -e lpmn_fast/kernels ] && ln -s ../kernels lpmn_fast/kernels && echo "linked lpmn_fast/kernels -> ../kernels"
}

main() {
  T0=$(date +%s)
  stage "machine"
  date -u
  if command -v nvidia-smi >/dev/null; then
    # The card as found (clocks, temperature, other users): read only, nothing is changed.
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,utilization.gpu --format=csv
  else
    echo "no nvidia-smi: not a GPU machine (dry run)"
  fi

  stage "install (pip install --no-deps -e .)"
  install
  $PY - <<'EOF'
import importlib.metadata as md, torch, lpmn_fast
def v(n):
    try: return md.version(n)
    except md.PackageNotFoundError: return None
print(f"python ok: torch {torch.__version__} (CUDA {torch.version.cuda}), triton {v('triton')}, "
      f"pytest-benchmark {v('pytest-benchmark')}, matplotlib {v('matplotlib')}, lpmn_fast at {lpmn_fast.__file__}")
print("cuda available:", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF

  stage "GPU tests (timeout ${TESTS_TIMEOUT} s)"
  local tests=()
  for f in tests/test_triton_op.py tests/test_*triton*.py tests/test_*kernel*.py tests/test_reference_op.py \
           tests/test_op_validation.py tests/test_prototype_mil_module.py tests/test_benchmark_report.py; do
    [ -f "$f" ] && [[ ! " ${tests[*]} " =~ " $f " ]] && tests+=("$f")
  done
  local rc
  if [ ${#tests[@]} = 0 ]; then
    echo "no test files found"
  else
    echo "test files: ${tests[*]}"
    timeout -k 10 "$TESTS_TIMEOUT" $PY -m pytest -q -p no:cacheprovider --tb=short --maxfail=20 "${tests[@]}"
    rc=$?
    [ $rc = 124 ] && echo "tests: stopped at the ${TESTS_TIMEOUT} s limit"
    echo "tests exit code: $rc"
  fi

  stage "benchmarks (budget ${BENCH_BUDGET} s, hard stop $((BENCH_BUDGET + 60)) s)"
  rm -f "$OUT/bench.json" "$OUT/pytest-benchmark.json"
  local profile=${LPMN_BENCH_PROFILE:-$($PY -c "import torch; print('gpu-quick' if torch.cuda.is_available() else 'cpu')")}
  echo "profile: $profile"
  LPMN_BENCH_PROFILE=$profile LPMN_BENCH_OUT="$OUT/bench.json" \
  LPMN_BENCH_BUDGET_S="$BENCH_BUDGET" \
    timeout -k 10 $((BENCH_BUDGET + 60)) $PY -m pytest --benchmark -q -p no:cacheprovider \
      --benchmark-json="$OUT/pytest-benchmark.json" --benchmark-columns=min,median,iqr,rounds \
      --benchmark-sort=name
  rc=$?
  [ $rc = 124 ] && echo "benchmarks: stopped at the hard limit; bench.json holds the cases finished before it"
  echo "benchmarks exit code: $rc"

  stage "report"
  if [ -f "$OUT/bench.json" ]; then
    $PY -m benchmarks.report "$OUT/bench.json" >/dev/null && echo "wrote $OUT/bench.md and $OUT/bench.png"
    rm -f "$OUT"/*.tmp
    ls -l "$OUT"
    stage "done; paper shape (the table is in bench.md)"
    $PY -m benchmarks.report "$OUT/bench.json" --summary | grep -v '^wrote '
  else
    echo "no bench.json: the benchmarks wrote nothing (see above)"
  fi
}

main 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
