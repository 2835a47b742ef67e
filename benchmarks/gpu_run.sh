#!/usr/bin/env bash
# One lease of a GPU machine (issues 7, 11, 12, 13): the GPU test matrix, the benchmark suite with the
# roofline ledger's modelled times beside the measured ones, and old-vs-new revisions at the paper
# shape, all on the same device in the same run; files under $OUT.
#
#   bash benchmarks/gpu_run.sh [REV ...]            # on the device machine, from the repository root
#   bash benchmarks/gpu_run.sh --prepare [REV ...]  # here, before the lease: the wheels the image lacks
#                                                   # (.gpu-wheels/) and revision snapshots (.revs/)
#   bash benchmarks/gpu_run.sh --rehearse [REV ...] # here, on a CPU: the whole run with the GPU image's
#                                                   # packages (scripts/image_env.sh), Triton's interpreter
#                                                   # instead of CUDA, no network (docs/gpu-rehearsal.md)
#   bash benchmarks/gpu_run.sh --help
#
# Stages, each under a timeout cut to what is left of TOTAL_BUDGET (360 s: a first run and a second with
# fixes fit one 15-minute lease; run it with timeout_s=400):
#   0. imports: every module the stages import is checked first, and what is missing is named
#   1. install (pip install --no-deps -e ., <= 60 s; a link kernels -> lpmn_fast/kernels if pip fails);
#      the carried wheels (.gpu-wheels/, from --prepare) with --no-index --no-deps into a folder of
#      the run's own on PYTHONPATH (the image's site-packages stay as they are)
#   2. GPU tests: tests/test_triton_gpu.py and tests/test_triton_op.py (GPU_TESTS), <= TESTS_TIMEOUT (150 s);
#      failures are listed in the summary at the end (junit XML in tests.xml)
#   3. benchmarks of the working tree: `pytest --benchmark` (op cases, training steps, matmul), profile
#      gpu-quick, cases that would start after BENCH_BUDGET (180 s, less if revisions wait) are skipped
#      and listed; the sm_90 compile gate (a CPU job) is left out
#   4. each REV: the paper-shape cases (REV_FILTER: bf16, providers triton and eager) in a checkout of
#      its own, <= REV_BUDGET (90 s) each, then compare.md: median [q1-q3] per revision, x vs the tree
#   5. report: bench.md, bench.png, the ledger's summary for the tree, and the summary of every stage
# The results JSON is rewritten after every case, so a stage cut short still reports what it measured.
#
# Revisions: each is benchmarked from a checkout of its own (git archive into a temporary folder, its
# kernels/ linked as lpmn_fast/kernels the way pyproject.toml maps them, the working tree's harness
# benchmarks/*.py copied in so that every revision is timed by the same code) and imported from there.
# The device machine's copy of the tree may have no .git: prepare snapshots here first with
# `bash benchmarks/gpu_run.sh --prepare main` (writes .revs/main/, git-ignored) and name .revs in the
# run's carry. A REV found neither in .revs/ nor by git is skipped with a message.
#
# Files in $OUT (the device returns at most 8): run.log (everything printed), tests.xml, bench.json
# (results with modelled and derived figures), bench.md, bench.png, pytest-benchmark.json,
# compare.md and compare.json (with revisions).
#
# The last line: "rehearsal: tests N passed, N failed, N errors; benchmarks N passed, N failed; report
# written; S s of B s budget" ("gpu run: ..." on a GPU); exit code 0 only when nothing failed or errored
# and every stage finished inside its limit.
#
# Environment: PYTHON (python3), OUT (/tmp/lpmn-gpu-run when unset), LPMN_BENCH_PROFILE (gpu-quick with
# CUDA, cpu without: a dry run), TOTAL_BUDGET (360), TESTS_TIMEOUT (150), BENCH_BUDGET (150),
# REV_BUDGET (90), GPU_TESTS (test files), REV_FILTER (pytest -k of the revision cases),
# SKIP_INSTALL (1: keep the installed package, e.g. a dry run with .venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

label_of() { printf '%s' "$1" | tr -c 'A-Za-z0-9._-' '_'; }

# Wheels of what the GPU image lacks and the run imports (soundfile: the prediction benchmark reads WAVs;
# cffi and pycparser: soundfile's own dependencies, not on the image either), for its Python 3.12.
CARRIED_WHEELS="soundfile cffi pycparser"
WHEELS_DIR=.gpu-wheels

download_wheels() {
  local pip=${PYTHON:-python3}
  mkdir -p "$WHEELS_DIR"
  # shellcheck disable=SC2086  # a list of names
  $pip -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform any -d "$WHEELS_DIR" $CARRIED_WHEELS \
    || { echo "downloading the wheels ($CARRIED_WHEELS) failed" >&2; return 1; }
  echo "wheels for the image (Python 3.12, manylinux x86_64) in $WHEELS_DIR/: $(cd "$WHEELS_DIR" && ls | tr '\n' ' ')"
  echo "carry $WHEELS_DIR in the device run, e.g. run(command='bash benchmarks/gpu_run.sh', carry=['$WHEELS_DIR'])"
}

prepare() {
  download_wheels || exit 1
  [ $# -gt 0 ] || return 0
  git rev-parse --git-dir >/dev/null 2>&1 || { echo "--prepare needs git and the repository's history" >&2; exit 2; }
  for rev in "$@"; do
    local sha label dir
    sha=$(git rev-parse --verify -q "$rev^{commit}") || { echo "unknown revision: $rev" >&2; exit 2; }
    label=$(label_of "$rev")
    dir=".revs/$label"
    rm -rf "$dir" && mkdir -p "$dir"
    git archive "$sha" | tar -x -C "$dir" || { echo "git archive $rev failed" >&2; exit 1; }
    git log -1 --format="%H %cI %s" "$sha" > "$dir/.revision"
    echo "prepared $dir: $(cat "$dir/.revision")"
  done
  echo "carry .revs in the device run, e.g. run(command='bash benchmarks/gpu_run.sh $*', carry=['.revs', '$WHEELS_DIR'])"
}

# The rehearsal: the GPU image's packages (built once by scripts/image_env.sh), the carried wheels, no
# network, then this script as the device runs it.
rehearse() {
  bash scripts/image_env.sh || { echo "rehearsal: building the image environment failed" >&2; exit 1; }
  ls "$WHEELS_DIR"/*.whl >/dev/null 2>&1 || download_wheels || exit 1
  local venv=${LPMN_IMAGE_VENV:-.venv-image}
  # No network, as on the device: pip may not reach an index, the Hub is offline, proxies lead nowhere.
  export PIP_NO_INDEX=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 http_proxy=http://127.0.0.1:9 \
    https_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 no_proxy=
  export LPMN_REHEARSAL=1 PYTHON="$PWD/$venv/bin/python"
  # The interpreter is slower than a GPU and the CPU is shared: the rehearsal's own limits, in the
  # same proportions (tests, then benchmarks), unless set.
  export TOTAL_BUDGET=${TOTAL_BUDGET:-1800} TESTS_TIMEOUT=${TESTS_TIMEOUT:-1100} BENCH_BUDGET=${BENCH_BUDGET:-300} \
    BENCH_GRACE=${BENCH_GRACE:-150}
  exec bash "$PWD/benchmarks/gpu_run.sh" "$@"
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --prepare) shift; prepare "$@"; exit $? ;;
  --rehearse) shift; rehearse "$@" ;;
  -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
esac
REVS=("$@")
REHEARSAL=${LPMN_REHEARSAL:-0}

PY=${PYTHON:-python3}
# an absolute path: the revisions run from their own checkouts (a venv's bin/python stays a link into the venv)
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
OUT=${OUT:-/tmp/lpmn-gpu-run}
TOTAL_BUDGET=${TOTAL_BUDGET:-360}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-150}
BENCH_BUDGET=${BENCH_BUDGET:-150}
REV_BUDGET=${REV_BUDGET:-90}
SKIP_INSTALL=${SKIP_INSTALL:-0}
GPU_TESTS=${GPU_TESTS:-tests/test_triton_gpu.py tests/test_triton_op.py}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/lpmn-gpu-run-work.XXXXXX)
SUMMARY=()
TEST_RC=0
BENCH_RC=0
OVERRUNS=()  # stages stopped at their limit

T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( TOTAL_BUDGET - $(elapsed) )); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
stage() { echo; echo "=== [$(elapsed) s] $*"; }
note() { SUMMARY+=("$*"); }

install() {
  if [ "$SKIP_INSTALL" = 1 ]; then
    echo "SKIP_INSTALL=1: using the lpmn_fast already importable by $PY"
    return
  fi
  carried_wheels
  # No network there: --no-build-isolation uses the setuptools already installed instead of fetching one.
  if timeout 60 $PY -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
    return
  fi
  # Fallback: pyproject.toml ships kernels/ as lpmn_fast.kernels; a link gives the same layout to
  # imports from the repository root (python -m puts it first on sys.path). The device's tree is a copy.
  echo "pip install -e . failed; falling back to imports from the repository root"
  [ -d kernels ] && [ ! -e lpmn_fast/kernels ] && ln -s ../kernels lpmn_fast/kernels && echo "linked lpmn_fast/kernels -> ../kernels"
}

# The wheels carried from --prepare, installed without an index into this run's own folder.
carried_wheels() {
  ls "$WHEELS_DIR"/*.whl >/dev/null 2>&1 || { echo "no $WHEELS_DIR/*.whl carried (gpu_run.sh --prepare makes them)"; return; }
  if timeout 60 $PY -m pip install -q --disable-pip-version-check --no-index --no-deps --target "$WORK/carried" \
      "$WHEELS_DIR"/*.whl; then
    export PYTHONPATH="$WORK/carried${PYTHONPATH:+:$PYTHONPATH}"
    echo "carried wheels installed in $WORK/carried: $(cd "$WHEELS_DIR" && ls | tr '\n' ' ')"
  else
    note "install: the carried wheels in $WHEELS_DIR failed to install"
  fi
}

# Every module the stages import, checked before the first of them; names what is missing.
check_imports() {
  $PY - <<'EOF'
import importlib, sys
needed = {  # module: who needs it
    "torch": "everything", "triton": "the fused kernels", "numpy": "everything", "pytest": "tests, benchmarks",
    "pytest_benchmark": "benchmarks", "matplotlib": "report (bench.png)", "lpmn_fast": "everything",
    "lpmn_fast.kernels.prototype_mil": "the fused kernels", "benchmarks.cases": "benchmarks",
    "transformers": "benchmarks (HuBERT training step)", "soundfile": "benchmarks (prediction)",
    "scipy": "lpmn_fast.training", "sklearn": "lpmn_fast.protocol", "yaml": "lpmn_fast", "tqdm": "training",
    "safetensors": "checkpoints", "huggingface_hub": "model folders",
}
missing = []
for name, why in needed.items():
    try:
        importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 - any failure to import is what we report
        missing.append(f"{name} ({why}): {type(error).__name__}: {error}")
if missing:
    print("imports missing:\n  " + "\n  ".join(missing))
    sys.exit(1)
print(f"imports ok: {len(needed)} modules")
EOF
}

gpu_tests() {
  local files=() f
  for f in $GPU_TESTS; do
    if [ -f "$f" ]; then files+=("$f"); else echo "no $f in this tree"; note "GPU tests: $f not in this tree"; fi
  done
  [ ${#files[@]} -gt 0 ] || { note "GPU tests: none run"; return; }
  # leave the benchmarks at least 120 s (plus the revisions' share)
  local t
  t=$(min "$TESTS_TIMEOUT" $(( $(left) - 120 - ${#REVS[@]} * REV_BUDGET )))
  [ "$t" -ge 30 ] || t=30
  echo "test files: ${files[*]} (timeout ${t} s)"
  rm -f "$OUT/tests.xml"
  # SIGINT at the limit: pytest stops like on Ctrl-C and still writes its summary and the junit XML
  local start=$(elapsed)
  # LPMN_AUTOTUNE_TOP: only the first config of each kernel family is compiled and tuned here (the
  # benchmarks tune them all); TESTS_AUTOTUNE_TOP=0 tests every config
  LPMN_AUTOTUNE_TOP=${TESTS_AUTOTUNE_TOP:-1} timeout -s INT -k 20 "$t" $PY -m pytest -q -p no:cacheprovider --tb=short -rfE --maxfail=50 \
    --junitxml="$OUT/tests.xml" "${files[@]}"
  local rc=$?
  [ $rc = 5 ] || TEST_RC=$rc  # 5: nothing collected (e.g. every file skipped at import)
  echo "GPU tests took $(( $(elapsed) - start )) s of ${t} s"
  if [ $(( $(elapsed) - start )) -ge "$t" ]; then
    note "GPU tests: stopped at the ${t} s limit (the counts below are partial)"
    OVERRUNS+=("GPU tests")
  fi
  note "$($PY - "$OUT/tests.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("GPU tests: no junit XML written (the run was cut or failed to start)"); sys.exit()
suites = [root] if root.tag == "testsuite" else list(root)
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
bad = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
       if c.find("failure") is not None or c.find("error") is not None]
print(f"GPU tests: {n['tests'] - n['failures'] - n['errors'] - n['skipped']} passed, {n['failures']} failed, "
      f"{n['errors']} errors, {n['skipped']} skipped" + "".join(f"\n    FAILED {b}" for b in bad[:40])
      + (f"\n    ... and {len(bad) - 40} more" if len(bad) > 40 else ""))
EOF
)"
}

benchmarks() {
  rm -f "$OUT/bench.json" "$OUT/pytest-benchmark.json"
  local budget
  budget=$(min "$BENCH_BUDGET" $(( $(left) - 60 - ${#REVS[@]} * REV_BUDGET )))
  [ "$budget" -ge 30 ] || budget=30
  local grace=${BENCH_GRACE:-45}  # for the case running when the budget ends
  echo "profile: $PROFILE, budget ${budget} s, hard stop $((budget + grace)) s"
  LPMN_BENCH_PROFILE=$PROFILE LPMN_BENCH_OUT="$OUT/bench.json" LPMN_BENCH_BUDGET_S="$budget" \
    timeout -s INT -k 20 $((budget + grace)) $PY -m pytest --benchmark -q -p no:cacheprovider \
      --ignore=benchmarks/bench_compile_gate.py --junitxml="$WORK/bench.xml" \
      --benchmark-json="$OUT/pytest-benchmark.json" --benchmark-columns=min,median,iqr,rounds \
      --benchmark-sort=name
  local rc=$?
  BENCH_RC=$rc
  # SIGINT at the hard stop: pytest ends like on Ctrl-C (exit code 2 or 124) and still writes its junit XML
  if [ $rc = 124 ] || [ $rc = 137 ] || [ $rc = 2 ]; then
    note "benchmarks: stopped at the hard limit; bench.json holds the cases finished before it"
    OVERRUNS+=("benchmarks")
  fi
  note "benchmarks (working tree): exit code $rc"
}

# A checkout of REV in $WORK/rev-LABEL, ready to import from: echoes its path, or fails with a reason.
checkout() {
  local rev=$1 label dir
  label=$(label_of "$rev")
  dir="$WORK/rev-$label"
  rm -rf "$dir"
  if [ -d ".revs/$label" ]; then
    cp -r ".revs/$label" "$dir"
  elif git rev-parse --verify -q "$rev^{commit}" >/dev/null 2>&1; then
    mkdir -p "$dir" && git archive "$rev" | tar -x -C "$dir" && git log -1 --format="%H %cI %s" "$rev" > "$dir/.revision"
  else
    echo "revision $rev: neither .revs/$label nor git history here (prepare it with --prepare $rev)" >&2
    return 1
  fi
  # the same timing code for every revision: the working tree's harness
  mkdir -p "$dir/benchmarks" && cp benchmarks/*.py "$dir/benchmarks/" && cp conftest.py "$dir/"
  [ -d "$dir/kernels" ] && [ ! -e "$dir/lpmn_fast/kernels" ] && ln -s ../kernels "$dir/lpmn_fast/kernels"
  echo "$dir"
}

revisions() {
  local compare_args=("tree=$OUT/bench.json") rev
  local filter=${REV_FILTER:-"$HEADLINE and bf16 and (triton or eager)"}
  for rev in "${REVS[@]}"; do
    local label dir budget
    label=$(label_of "$rev")
    stage "revision $rev"
    dir=$(checkout "$rev") || { note "revision $rev: skipped (no checkout)"; continue; }
    [ -f "$dir/.revision" ] && echo "checkout $dir: $(cat "$dir/.revision")"
    # imported from its own checkout, not from the installed working tree
    if ! (cd "$dir" && $PY -c "
import os, sys
import lpmn_fast, lpmn_fast.kernels.prototype_mil as k
here = os.path.realpath(os.getcwd())
where = [os.path.realpath(m.__file__) for m in (lpmn_fast, k)]
print('imports:', *where)
sys.exit(0 if all(w.startswith(here + os.sep) for w in where) else 1)"); then
      note "revision $rev: skipped (lpmn_fast did not import from its checkout)"
      continue
    fi
    budget=$(min "$REV_BUDGET" $(( $(left) - 25 )))
    if [ "$budget" -lt 20 ]; then note "revision $rev: skipped (total budget spent)"; continue; fi
    echo "cases: -k '$filter' (budget ${budget} s)"
    (cd "$dir" && LPMN_BENCH_PROFILE=$PROFILE LPMN_BENCH_OUT="$WORK/$label.json" LPMN_BENCH_BUDGET_S="$budget" \
      timeout -k 10 $((budget + 30)) $PY -m pytest --benchmark -q -p no:cacheprovider \
        benchmarks/bench_prototype_mil.py -k "$filter")
    local rc=$?
    note "revision $rev: exit code $rc$([ $rc = 124 ] && echo ' (stopped at its limit)')"
    [ -f "$WORK/$label.json" ] && compare_args+=("$label=$WORK/$label.json")
  done
  if [ ${#compare_args[@]} -gt 1 ] && [ -f "$OUT/bench.json" ]; then
    $PY -m benchmarks.report --compare "${compare_args[@]}" --md "$OUT/compare.md" && cat "$OUT/compare.md"
    $PY - "$OUT/compare.json" "${compare_args[@]}" <<'EOF'
import json, sys
runs = {label: json.load(open(path)) for label, _, path in (a.partition("=") for a in sys.argv[2:])}
json.dump(runs, open(sys.argv[1], "w"), indent=1)
EOF
  else
    note "revisions: nothing to compare"
  fi
}

main() {
  stage "machine"
  date -u
  if command -v nvidia-smi >/dev/null; then
    # The card as found (clocks, temperature, other users): read only, nothing is changed.
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,utilization.gpu --format=csv
  else
    echo "no nvidia-smi: not a GPU machine (dry run)"
  fi
  echo "revisions to compare with the working tree: ${REVS[*]:-(none)}"

  stage "install (pip install --no-deps -e .)"
  install

  stage "imports"
  if ! check_imports; then
    note "imports: missing (listed above); nothing else was run"
    echo; printf '%s\n' "${SUMMARY[@]}"
    final_line
    return 2
  fi
  $PY - <<'EOF'
import importlib.metadata as md, torch, lpmn_fast
def v(n):
    try: return md.version(n)
    except md.PackageNotFoundError: return None
print(f"python ok: torch {torch.__version__} (CUDA {torch.version.cuda}), triton {v('triton')}, "
      f"pytest-benchmark {v('pytest-benchmark')}, matplotlib {v('matplotlib')}, lpmn_fast at {lpmn_fast.__file__}")
print("cuda available:", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF
  PROFILE=${LPMN_BENCH_PROFILE:-$($PY -c "import torch; print('gpu-quick' if torch.cuda.is_available() else 'cpu')")}
  local shape
  shape=$($PY -c "from benchmarks.cases import resolve_profile as r; print(*r('$PROFILE', False).headline)") \
    || { echo "unknown benchmark profile $PROFILE"; return 2; }
  read -r B T C K <<< "$shape"
  HEADLINE="B$B-T$T-C$C-K$K"

  stage "GPU tests"
  gpu_tests

  stage "benchmarks of the working tree"
  benchmarks

  if [ ${#REVS[@]} -gt 0 ]; then
    revisions
  fi

  stage "report"
  if [ -f "$OUT/bench.json" ]; then
    $PY -m benchmarks.report "$OUT/bench.json" >/dev/null && echo "wrote $OUT/bench.md and $OUT/bench.png"
    rm -f "$OUT"/*.tmp
  else
    note "report: no bench.json, the benchmarks wrote nothing"
  fi
  stage "ledger of the working tree (modelled, H100/H200)"
  timeout 60 $PY -m benchmarks.roofline --shape "$B,$T,$C,$K" --summary 2>/dev/null | grep '^|' \
    || echo "ledger failed (see above)"

  stage "done; paper shape (the table is in bench.md)"
  [ -f "$OUT/bench.json" ] && $PY -m benchmarks.report "$OUT/bench.json" --summary | grep -v '^wrote '
  echo
  echo "=== summary ($(elapsed) s of ${TOTAL_BUDGET})"
  printf '%s\n' "${SUMMARY[@]}"
  [ ${#OVERRUNS[@]} -gt 0 ] && echo "stages over their limit: ${OVERRUNS[*]}"
  ls -l "$OUT"
  final_line
}

# "rehearsal: tests N passed, N failed, N errors; benchmarks N passed, N failed; report written; S s of
# B s budget" from the two junit files; returns 0 only when all passed and every stage fitted.
final_line() {
  local report="report written"
  [ -f "$OUT/bench.md" ] || report="no report"
  local what="gpu run"
  [ "$REHEARSAL" = 1 ] && what="rehearsal"
  $PY - "$OUT/tests.xml" "$WORK/bench.xml" "$what" "$report" "$(elapsed)" "$TOTAL_BUDGET" "${#OVERRUNS[@]}" <<'EOF'
import sys, xml.etree.ElementTree as ET
def counts(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root)
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return n["tests"] - n["failures"] - n["errors"] - n["skipped"], n["failures"], n["errors"]
tests, bench = counts(sys.argv[1]), counts(sys.argv[2])
what, report, spent, budget, overruns = sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
t = tests or (0, 0, 1)  # no junit file: the stage did not run (an error)
b = bench or (0, 1, 0)
print(f"{what}: tests {t[0]} passed, {t[1]} failed, {t[2]} errors; benchmarks {b[0]} passed, {b[1] + b[2]} failed; "
      f"{report}; {spent} s of {budget} s budget")
ok = tests is not None and bench is not None and t[1] == t[2] == 0 and b[1] == b[2] == 0 \
    and report == "report written" and overruns == 0 and spent <= budget
sys.exit(0 if ok else 1)
EOF
}

main 2>&1 | tee "$OUT/run.log"
rc=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$rc"
