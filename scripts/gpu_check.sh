#!/usr/bin/env bash
# One command for a lent GPU machine (no network needed): build the CUDA extension against the machine's
# torch, run the whole test suite on CUDA, compute-sanitizer memcheck + racecheck on the CUDA kernel tests,
# then the benchmarks. Logs and benchmark JSON/MD/PNG go flat into $OUT when set (else ./out), named
# <gpu>-<date>-<stage>.log and <gpu>-<date>.{json,md,png}: at most 8 files.
#
# Through the `device` tool: first, here, `echo /shared/ >> .git/info/exclude; cp -r ../shared shared` (it travels
# with the working tree, ~35 MB, and is linked to ../shared there; never commit it; delete it afterwards).
# Usage: bash scripts/gpu_check.sh quick
#        the one prepared call for a lent GPU (within 8 minutes): build, the CUDA/Triton kernel tests, compute-sanitizer
#        memcheck on the NHWC block kernels' and the fp32 CUDA kernel tests, and benchmarks/gpu_quick.py's model
#        table (eager fp32/fp16, folded nhwc/cuda/triton in fp32/fp16/bf16 with and without CUDA graphs, training
#        step, a profiler table of one NHWC block,
#        torch.compile); each step under its own time limit. Files in $OUT: <tag>-quick.log, gpu-quick.json/.md,
#        history.jsonl (merge with `python -m benchmarks.history --merge`), latest-<gpu>.md/.png.
# Usage: bash scripts/gpu_check.sh [build] [kernels] [test] [sanitize] [bench] [model] [dotprec]
#        (no argument: build test sanitize bench model dotprec, in order; `kernels` runs only the CUDA/Triton kernel
#        test files, for a first quick look; `bench` is the op and sub-op section, `model` the whole-model one;
#        `dotprec` times the Triton MOLRCM kernels with each fp32 tl.dot precision, benchmarks/dot_precision.py)
# One device call is limited to 10 minutes, so split the stages over calls when needed, e.g.
#   bash scripts/gpu_check.sh build test      then      bash scripts/gpu_check.sh build sanitize bench
# (the build is incremental: ignored build outputs stay on a warm machine between calls).
# Environment:
#   PYTHON (default python3), CUDA_HOME (else detected from nvcc / /usr/local/cuda*), TORCH_CUDA_ARCH_LIST
#   (default 9.0), MAX_JOBS (default: number of CPUs), PYTEST_ARGS (extra args for the test stage),
#   SANITIZER_PYTEST_ARGS (extra pytest args under compute-sanitizer), SANITIZER_K (a pytest -k expression for
#   the tests run under the sanitizer, e.g. "float32 and not gradcheck"; default: all),
#   SANITIZER_TIMEOUT (seconds per tool, default 240), TEST_TIMEOUT (seconds per test where pytest-timeout is
#   installed, default 300), BENCH_ARGS (default: --quick; "" for the full run),
#   STAGE_TIMEOUT (seconds for each of build/kernels/test/bench/model, default 0 = none; the device call is
#   limited to 10 minutes and a stage that runs over loses its log's tail only, not the call's other files).
# Exit status: non-zero when any stage failed (all requested stages still run).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-$PWD/out}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test sanitize bench model dotprec)
TO=${STAGE_TIMEOUT:-0}

# The ground truth is read from ../shared; a shared/ folder carried inside the checkout is linked there.
if [ ! -e ../shared ] && [ -d shared ]; then ln -s "$PWD/shared" ../shared 2>/dev/null || true; fi

detect_cuda_home() {
  local c nv
  for c in "${CUDA_HOME:-}" "${CUDA_PATH:-}"; do
    [ -n "$c" ] && [ -x "$c/bin/nvcc" ] && { echo "$c"; return; }
  done
  nv=$(command -v nvcc 2>/dev/null || true)
  if [ -n "$nv" ]; then
    c=$(dirname "$(dirname "$(readlink -f "$nv")")")
    [ -f "$c/include/cuda_runtime.h" ] && { echo "$c"; return; }
  fi
  for c in /usr/local/cuda /usr/local/cuda-*; do
    [ -x "$c/bin/nvcc" ] && [ -f "$c/include/cuda_runtime.h" ] && { echo "$c"; return; }
  done
}
export CUDA_HOME=$(detect_cuda_home)
[ -n "$CUDA_HOME" ] && export PATH="$CUDA_HOME/bin:$PATH"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# The compiler: the system g++ unless EIMN_CXX names another. On the lent H100 image (2026-11-25) CC/CXX point
# at a wrapper, /opt/gcc/bin/g++ ("g++-real", GCC 13.3): the extension it built segfaulted whenever a
# TORCH_CHECK message streamed an integer (all bad-input tests); /usr/bin/g++ (the same GCC 13.3) is fine.
if [ -n "${EIMN_CXX:-}" ]; then export CXX=$EIMN_CXX
elif [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'nogpu')" 2>/dev/null || echo unknown)
TAG=$(echo "$GPU" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9.]\+/-/g; s/^-//; s/-$//')-$(date -u +%Y%m%d-%H%M)
SANITIZER=$(command -v compute-sanitizer || ls "$CUDA_HOME"/bin/compute-sanitizer "$CUDA_HOME"/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
echo "gpu_check: $GPU | torch $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>/dev/null)" \
     "| CUDA_HOME=${CUDA_HOME:-none} | nvcc $("$CUDA_HOME/bin/nvcc" --version 2>/dev/null | grep -o 'release [0-9.]*')" \
     "| arch $TORCH_CUDA_ARCH_LIST | CXX ${CXX:-c++} | sanitizer ${SANITIZER:-none} | out $OUTDIR | tag $TAG"

declare -A STATUS
fail=0
run_stage() {  # run_stage NAME CMD...: output to $OUTDIR/$TAG-NAME.log and stdout tail
  local name=$1; shift
  local log="$OUTDIR/$TAG-$name.log" t0=$SECONDS rc
  echo "=== $name: $*" >"$log"
  "$@" >>"$log" 2>&1
  rc=$?
  tail -n 25 "$log"
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s (log $log)"
  STATUS[$name]=$rc
  [ $rc -ne 0 ] && fail=1
  return $rc
}

build() {
  [ -n "$CUDA_HOME" ] || { echo "no CUDA toolkit found (set CUDA_HOME)"; return 1; }
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
  FORCE_CUDA=1 timeout "$TO" "$PY" setup.py build_ext --inplace &&
  "$PY" -c "import eimn_kernels as ek, torch; assert ek._ext.built_with_cuda(), ek._ext.extension_error(); \
print('backends on cuda:', ek.available_backends('cuda'), '| on cpu:', ek.available_backends('cpu'))"
}

tests() {
  # The whole suite with the GPU visible: CUDA and Triton backends run on CUDA tensors. -v: one line per test in
  # the log, so a run stopped at STAGE_TIMEOUT still names its failures (2026-11-25: three runs cut off at 90-95%
  # printed an F and no name); pytest-timeout, where installed, stops a single hung test after 300 s.
  local tmo=()
  "$PY" -c "import pytest_timeout" 2>/dev/null && tmo=(--timeout "${TEST_TIMEOUT:-300}")
  timeout "$TO" "$PY" -m pytest -v -rfEs --durations=15 "${tmo[@]}" ${PYTEST_ARGS:-}
}

gpu_test_files() {  # the given test files without the CPU emulations of the CUDA kernels (*_emu.py)
  local f
  for f in "$@"; do [[ "$f" == *_emu.py ]] || echo "$f"; done
}

kernel_tests() {
  # Only the CUDA and Triton kernel tests (and backend selection), on CUDA tensors.
  local files
  mapfile -t files < <(gpu_test_files tests/test_nhwc_block.py tests/test_cuda_*.py tests/test_triton_*.py \
    tests/test_backends.py)
  timeout "$TO" "$PY" -m pytest -q -rs --durations=15 ${PYTEST_ARGS:-} "${files[@]}"
}

sanitize() {
  [ -n "$SANITIZER" ] || { echo "compute-sanitizer not found"; return 1; }
  shopt -s nullglob
  local files rc=0
  mapfile -t files < <(gpu_test_files tests/test_cuda_*.py)
  [ ${#files[@]} -gt 0 ] || { echo "no tests/test_cuda_*.py"; return 1; }
  local trc kexpr=()
  [ -n "${SANITIZER_K:-}" ] && kexpr=(-k "$SANITIZER_K")
  for tool in memcheck racecheck; do
    echo "--- compute-sanitizer --tool $tool on ${files[*]}"
    # PYTORCH_NO_CUDA_MEMORY_CACHING: every allocation is a real cudaMalloc, so memcheck sees exact bounds.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${SANITIZER_TIMEOUT:-240}" "$SANITIZER" --tool "$tool" \
      --error-exitcode 99 --print-limit 50 --show-backtrace device \
      "$PY" -m pytest -q -x -p no:cacheprovider ${SANITIZER_PYTEST_ARGS:-} "${kexpr[@]}" "${files[@]}"
    trc=$?
    echo "--- $tool rc=$trc (99: the tool found errors; 124: timed out)"
    [ $trc -ne 0 ] && rc=$trc
  done
  return $rc
}

quick() {
  # One prepared call within 8 minutes (a lent GPU gives 15 minutes in all, at most 10 per call, starts included):
  # each step under its own limit (140 + 100 + 2 x 35 + 110 + 50 s of slack = 470 s at most), the next step runs
  # whatever the last one did.
  local rc=0 files
  echo "--- quick: build (limit ${QUICK_BUILD_S:-140} s)"
  TO=${QUICK_BUILD_S:-140} build || rc=1
  echo "--- quick: kernel tests (limit ${QUICK_TEST_S:-100} s)"
  mapfile -t files < <(gpu_test_files tests/test_nhwc_block.py tests/test_cuda_*.py tests/test_triton_*.py \
    tests/test_backends.py)
  local xd=()
  "$PY" -c "import xdist" 2>/dev/null && xd=(-n 8)
  timeout "${QUICK_TEST_S:-100}" "$PY" -m pytest -q -x -rfE "${xd[@]}" "${files[@]}" || rc=1
  if [ -n "$SANITIZER" ]; then
    echo "--- quick: compute-sanitizer memcheck, NHWC block kernels + fp32 CUDA kernel tests (limit ${QUICK_SANITIZE_S:-35} s)"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${QUICK_SANITIZE_S:-35}" "$SANITIZER" --tool memcheck \
      --error-exitcode 99 --print-limit 20 "$PY" -m pytest -q -x -p no:cacheprovider -k block_eimn_width \
      tests/test_nhwc_block.py || rc=1  # the CUDA block kernels (auto on a GPU), fp32 / fp16 / bf16
    mapfile -t files < <(gpu_test_files tests/test_cuda_*.py)
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${QUICK_SANITIZE_S:-35}" "$SANITIZER" --tool memcheck \
      --error-exitcode 99 --print-limit 20 "$PY" -m pytest -q -x -p no:cacheprovider \
      -k "${SANITIZER_K:-float32 and not gradcheck and not compile}" "${files[@]}" || rc=1
  else
    echo "--- quick: compute-sanitizer not found"
  fi
  echo "--- quick: model table (budget ${QUICK_BENCH_S:-110} s)"
  timeout $(( ${QUICK_BENCH_S:-110} + 50 )) "$PY" -m benchmarks.gpu_quick --out "$OUTDIR" \
    --budget-s "${QUICK_BENCH_S:-110}" || rc=1
  return $rc
}

bench() {
  timeout "$TO" "$PY" -m benchmarks.run --device cuda --out-dir "$OUTDIR" --results-dir "$OUTDIR" --sections ops,subops ${BENCH_ARGS---quick}
}

dot_precision() {
  timeout "$TO" "$PY" -m benchmarks.dot_precision --json "$OUTDIR/$TAG-dot-precision.json"
}

bench_model() {
  timeout "$TO" "$PY" -m benchmarks.run --device cuda --out-dir "$OUTDIR" --results-dir "$OUTDIR" --sections complexity,model,train \
    ${BENCH_ARGS---quick}
}

for s in "${stages[@]}"; do
  case $s in
    build) run_stage build build ;;
    kernels) run_stage kernels kernel_tests ;;
    test) run_stage test tests ;;
    sanitize) run_stage sanitize sanitize ;;
    bench) run_stage bench bench ;;
    model) run_stage model bench_model ;;
    dotprec) run_stage dotprec dot_precision ;;
    quick) run_stage quick quick ;;
    *) echo "unknown stage $s (quick, build, kernels, test, sanitize, bench, model, dotprec)"; fail=1 ;;
  esac
done

echo "gpu_check summary ($GPU, $(date -u +%FT%TZ)):"
for s in "${stages[@]}"; do echo "  $s: rc=${STATUS[$s]:-n/a}"; done
ls -la "$OUTDIR"
exit $fail
