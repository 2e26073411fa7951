#!/usr/bin/env bash
# The GPU check, one prepared script for a machine with a CUDA GPU (< 3 minutes):
#   1. the GPU-marked tests (cupy / cuml parameters of tests/test_{backends,projection,clustering}.py)
#   2. benchmarks/gpu_bench.py at 200,000 x 2,048, with cuBLAS in fp32 and then TF32,
#      printed as a table against the targets (kNN k=15 <= 2 s, projection <= 10 s,
#      K-means k=5000 x 25 iterations <= 3 s).
#
# The GPU machine has CuPy, numba(-cuda), PyTorch, h5py, scikit-learn, pandas and pytest but
# no network; the rest comes as wheels in .whl/, fetched beforehand on a machine with PyPI:
#
#   bash benchmarks/gpu_check.sh --prepare        # downloads into .whl/ (CPython 3.10-3.13)
#   bash benchmarks/gpu_check.sh                  # on the GPU machine, from the repo root
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS="xxhash pillow click rich markdown-it-py mdurl pygments"  # beyond the GPU image's own

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: -d .whl click rich markdown-it-py mdurl pygments
    for v in 3.10 3.11 3.12 3.13; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$v" \
            --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl xxhash pillow
    done
    ls .whl
    exit 0
fi

PYTAG="cp$(python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
if compgen -G ".whl/*.whl" >/dev/null; then
    # Only the wheels this interpreter can use (pure ones and its own CPython tag).
    mapfile -t mine < <(ls .whl/*.whl | grep -E -- "-(py3|py2\.py3)-none-any\.whl$|-${PYTAG}-")
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${mine[@]}"
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python3 - <<'PY'
import cupy, numba
print("cupy", cupy.__version__, "| numba", numba.__version__, "| threads", numba.get_num_threads())
print("gpu", cupy.cuda.runtime.getDeviceProperties(0)["name"])
PY

echo "== GPU-marked tests"
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider \
    tests/test_backends.py tests/test_projection.py tests/test_clustering.py || status=$?

echo "== GPU benchmark 200,000 x 2,048"
out=$(mktemp -d)
for tf32 in 0 1; do
    CUPY_TF32=$tf32 timeout 150 python3 -m benchmarks.gpu_bench --data "$out/x.npy" \
        --json "$out/runs.jsonl" >/dev/null || echo "gpu_bench (CUPY_TF32=$tf32) failed"
done
python3 -m benchmarks.gpu_bench --table "$out/runs.jsonl"
cat "$out/runs.jsonl" > "${OUT:-$out}/gpu_bench.jsonl" 2>/dev/null || true
exit "${status:-0}"
