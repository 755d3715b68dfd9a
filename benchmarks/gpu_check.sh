#!/usr/bin/env bash
# The GPU check of issue 15, one script that ends within 8 minutes on one GPU machine:
#   1. installs what a bare GPU machine lacks (SimpleITK, batchgenerators...): from wheels carried in
#      .whl/ when present, else from PyPI when reachable;
#   2. runs the CUDA-marked tests (tests/test_cuda.py: mixed-precision training of the 2D nets and the VFN);
#   3. benchmarks/gpu_check.py: a 2D unit per view and the VFN on CUDA with mixed precision for a fixed
#      number of iterations, iterations/s, peak GPU memory, and the paper schedule's VFN time projected;
#      writes gpu.md and gpu.json into $OUT (the device tool's result folder) or else benchmarks/results.
#
# Wheels for a machine without internet (Python 3.12 there), prepared where pip works:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl SimpleITK batchgenerators future unittest2 traceback2 linecache2
# (.whl/ is git-ignored; name it in the device tool's carry.)
#
# VFNET_GPU_CHECK_ALLOW_CPU=1 bash benchmarks/gpu_check.sh   runs the same steps on the CPU at toy sizes,
# writing into a temporary folder (never into benchmarks/results).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
START=$(date +%s)

if ! $PY -c "import SimpleITK, batchgenerators, skimage, scipy, click, tqdm, matplotlib" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing carried wheels from .whl/"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vfnet_site .whl/*.whl \
      || exit 1
    export PYTHONPATH=/tmp/vfnet_site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "installing SimpleITK and batchgenerators from PyPI"
    $PY -m pip install -q SimpleITK batchgenerators || { echo "no wheels in .whl/ and PyPI unreachable"; exit 1; }
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ -n "${VFNET_GPU_CHECK_ALLOW_CPU:-}" ]; then
  DEST=$(mktemp -d /tmp/vfnet_gpu_check_dry.XXXX)
  EXTRA=--allow-cpu
else
  DEST=${OUT:-benchmarks/results}
  EXTRA=
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "no CUDA device (set VFNET_GPU_CHECK_ALLOW_CPU=1 for a dry run on the CPU)"; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
fi
mkdir -p "$DEST"
echo "results go to $DEST"

echo "== CUDA-marked tests"
timeout 200 $PY -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$DEST/gpu_tests.log"
TESTS=${PIPESTATUS[0]}

echo "== benchmark"
LEFT=$(( 470 - ($(date +%s) - START) ))
timeout $(( LEFT > 60 ? LEFT : 60 )) $PY benchmarks/gpu_check.py --out "$DEST" $EXTRA 2>&1 | tee "$DEST/gpu_check.log"
BENCH=${PIPESTATUS[0]}
echo "tests exit $TESTS, benchmark exit $BENCH, $(( $(date +%s) - START )) s in all; results in $DEST"
[ "$TESTS" -eq 0 ] && [ "$BENCH" -eq 0 ]
