#!/usr/bin/env bash
# One lease of a GPU machine (issues 7, 11, 12, 13): the GPU test matrix, the benchmark suite with the
# roofline ledger's modelled times beside the measured ones, and old-vs-new revisions at the paper
# shape, all on the same device in the same run; files under $OUT.
#
#   bash benchmarks/gpu_run.sh [REV ...]            # on the device machine, from the repository root
#   bash benchmarks/gpu_run.sh --prepare REV ...    # here, before the lease (see "Revisions")
#   bash benchmarks/gpu_run.sh --help
#
# Stages, each under a timeout cut to what is left of TOTAL_BUDGET (520 s; run it with timeout_s=540):
#   1. install (pip install --no-deps -e ., <= 60 s; a link kernels -> lpmn_fast/kernels if pip fails)
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
# Environment: PYTHON (python3), OUT (/tmp/lpmn-gpu-run when unset), LPMN_BENCH_PROFILE (gpu-quick with
# CUDA, cpu without: a dry run), TOTAL_BUDGET (520), TESTS_TIMEOUT (150), BENCH_BUDGET (180),
# REV_BUDGET (90), GPU_TESTS (test files), REV_FILTER (pytest -k of the revision cases),
# SKIP_INSTALL (1: keep the installed package, e.g. a dry run with .venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

label_of() { printf '%s' "$1" | tr -c 'A-Za-z0-9._-' '_'; }

prepare() {
  [ $# -gt 0 ] || { echo "--prepare needs at least one git revision" >&2; exit 2; }
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
  echo "carry .revs in the device run, e.g. run(command='bash benchmarks/gpu_run.sh $*', carry=['.revs'])"
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --prepare) shift; prepare "$@"; exit $? ;;
  -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
esac
REVS=("$@")

PY=${PYTHON:-python3}
# an absolute path: the revisions run from their own checkouts (a venv's bin/python stays a link into the venv)
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
OUT=${OUT:-/tmp/lpmn-gpu-run}
TOTAL_BUDGET=${TOTAL_BUDGET:-520}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-150}
BENCH_BUDGET=${BENCH_BUDGET:-180}
REV_BUDGET=${REV_BUDGET:-90}
SKIP_INSTALL=${SKIP_INSTALL:-0}
GPU_TESTS=${GPU_TESTS:-tests/test_triton_gpu.py tests/test_triton_op.py}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/lpmn-gpu-run-work.XXXXXX)
SUMMARY=()
TEST_RC=0
BENCH_RC=0

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
  # No network there: --no-build-isolation uses the setuptools already installed instead of fetching one.
  if timeout 60 $PY -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
    return
  fi
  # Fallback: pyproject.toml ships kernels/ as lpmn_fast.kernels; a link gives the same layout to
  # imports from the repository root (python -m puts it first on sys.path). The device's tree is a copy.
  echo "pip install -e . failed; falling back to imports from the repository root"
  [ -d kernels ] && [ ! -e lpmn_fast/kernels ] && ln -s ../kernels lpmn_fast/kernels && echo "linked lpmn_fast/kernels -> ../kernels"
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
  timeout -s INT -k 20 "$t" $PY -m pytest -q -p no:cacheprovider --tb=short -rfE --maxfail=50 \
    --junitxml="$OUT/tests.xml" "${files[@]}"
  local rc=$?
  [ $rc = 5 ] || TEST_RC=$rc  # 5: nothing collected (e.g. every file skipped at import)
  [ $(( $(elapsed) - start )) -ge "$t" ] && note "GPU tests: stopped at the ${t} s limit (the counts below are partial)"
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
  echo "profile: $PROFILE, budget ${budget} s, hard stop $((budget + 45)) s"
  LPMN_BENCH_PROFILE=$PROFILE LPMN_BENCH_OUT="$OUT/bench.json" LPMN_BENCH_BUDGET_S="$budget" \
    timeout -k 10 $((budget + 45)) $PY -m pytest --benchmark -q -p no:cacheprovider \
      --ignore=benchmarks/bench_compile_gate.py \
      --benchmark-json="$OUT/pytest-benchmark.json" --benchmark-columns=min,median,iqr,rounds \
      --benchmark-sort=name
  local rc=$?
  BENCH_RC=$rc
  [ $rc = 124 ] && note "benchmarks: stopped at the hard limit; bench.json holds the cases finished before it"
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
  ls -l "$OUT"
  return $(( TEST_RC != 0 || BENCH_RC != 0 ))
}

main 2>&1 | tee "$OUT/run.log"
rc=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$rc"
