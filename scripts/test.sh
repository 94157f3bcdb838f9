#!/usr/bin/env bash
# One command: set up the venv, build, compile-check CUDA sources and the Triton kernels with the GPU image's
# Triton release, run the test suite.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
bash scripts/check_cuda_compile.sh
bash scripts/check_triton_compat.sh
set +e
python -m pytest -q -m "not slow" --durations=15 "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit $rc
