#!/usr/bin/env bash
# The GPU check: one command on a CUDA machine, from a fresh copy of the repository.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine (8 minutes at most)
#   bash benchmarks/gpu_check.sh --prepare    # on a CPU machine with PyPI: fill .whl/
#   bash benchmarks/gpu_check.sh --rehearse   # the same run on a CPU machine (CI does this)
#
# The run, in this order, each step under its own timeout (60 + 150 + 150 + 100 s < 8 min):
#   1. preflight: every import the check needs, and the GPU probe (a kernel, a matmul, eigh);
#   2. the `gpu` tests, with TESSERA_REQUIRE_GPU=1: a skipped CuPy-tier test fails;
#   3. benchmarks/gpu_bench.py at 200,000 x 2,048, with CUPY_TF32=1 and then without: kNN
#      k=15, the full projection, K-means k=5,000 (25 iterations), the diversity sample
#      n=5,000, and (first run) trustworthiness of the map against the CPU tier's;
#   4. gpu-<date>.json and gpu-<date>.md under $OUT if set, else benchmarks/results/.
# It exits non-zero if any step failed (a benchmark that fails or times out included).
#
# The GPU machine has no network. It has Python 3.12 with cupy-cuda13x, numpy, scipy, numba,
# h5py, pandas, scikit-learn, pytest, pytest-timeout, xxhash, pillow, click, rich, httpx and
# anyio; whatever else the check imports (CARRY below) comes as wheels in .whl/ (git-ignored,
# 40 MiB at most), which --prepare downloads for CPython 3.12 on manylinux x86_64.
#
# --rehearse runs this same script on a CPU machine: a fresh venv with only those image
# packages (from PyPI) plus the wheels --prepare would carry (fetched for this interpreter),
# TESSERA_GPU_STANDIN=numpy (the CuPy tier on the numpy stand-in) and 4,000 x 256 rows. Its
# report goes to $OUT, else a temporary folder; nothing is left in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

IMAGE="numpy scipy numba h5py pandas scikit-learn pytest pytest-timeout xxhash pillow click rich httpx anyio"
CARRY="msgspec"   # packages the check imports that the GPU image lacks
WHEEL_LIMIT_MIB=40
TESTS="tests/test_backends.py tests/test_projection.py tests/test_clustering.py tests/test_gpu_tier.py"

download_wheels() {  # download_wheels DIR PYTHON_VERSION
    mkdir -p "$1"
    [[ -z "$CARRY" ]] && return 0
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$2" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$1" $CARRY
}

install_wheels() {  # install_wheels PYTHON DIR SITE: the wheels of DIR this interpreter can use
    local tag
    tag=$("$1" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    mapfile -t mine < <(ls "$2"/*.whl 2>/dev/null | grep -E -- "-py3-none-any\.whl$|-${tag}-" || true)
    if (( ${#mine[@]} )); then
        "$1" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$3" "${mine[@]}"
    fi
}

step() {  # step NAME SECONDS COMMAND...: run it under a timeout, record its exit status
    local name=$1 limit=$2 rc=0
    shift 2
    echo "== $name (at most ${limit} s)"
    timeout "$limit" "$@" || rc=$?
    STEPS+=("--step" "$name=$rc")
    (( rc == 0 )) || { echo "!! $name failed (exit $rc)"; FAILED=1; }
}

run_check() {  # the whole run, with $PY, $WHEELS, $N, $DIM, $KMEANS_K, $SAMPLE_N, $RESULTS
    local work=$WORK/run
    mkdir -p "$work"
    install_wheels "$PY" "$WHEELS" "$work/site"
    export PYTHONPATH="$work/site:$PWD" PYTHONUNBUFFERED=1
    STEPS=() FAILED=0
    step preflight 60 "$PY" -m benchmarks.gpu_bench preflight
    step tests 150 env TESSERA_REQUIRE_GPU=1 "$PY" -m pytest -q -m gpu -p no:cacheprovider \
        --junitxml "$work/tests.xml" $TESTS
    local bench=("$PY" -m benchmarks.gpu_bench run --n "$N" --dim "$DIM" --kmeans-k "$KMEANS_K"
                 --sample-n "$SAMPLE_N" --data "$work/x.npy" --json "$work/runs.jsonl")
    step bench-tf32 150 env CUPY_TF32=1 "${bench[@]}" --cpu-trust
    step bench-fp32 100 env CUPY_TF32=0 "${bench[@]}"
    "$PY" -m benchmarks.gpu_bench report --runs "$work/runs.jsonl" --junit "$work/tests.xml" \
        --out "$RESULTS" --n "$N" --dim "$DIM" --expect tf32=1 --expect tf32=0 "${STEPS[@]}" \
        || FAILED=1
    return "$FAILED"
}

case "${1:-}" in
--prepare)
    download_wheels .whl 3.12
    size=$(du -sm .whl | cut -f1)
    echo "wheelhouse .whl/: ${size} MiB (limit ${WHEEL_LIMIT_MIB}); carries: ${CARRY:-nothing}"
    (( size <= WHEEL_LIMIT_MIB ))
    ;;
--rehearse)
    start=$SECONDS
    scratch=$WORK/rehearsal
    python3 -m venv "$scratch/venv"
    "$scratch/venv/bin/python" -m pip install -q $IMAGE
    download_wheels "$scratch/whl" "$(python3 -c 'import sys; print(sys.version.split()[0])')"
    export TESSERA_GPU_STANDIN=numpy
    PY="$scratch/venv/bin/python" WHEELS="$scratch/whl" N=4000 DIM=256 KMEANS_K=400 \
        SAMPLE_N=400 RESULTS="${OUT:-$scratch/results}" run_check && rc=0 || rc=$?
    echo "rehearsal: exit $rc after $((SECONDS - start)) s"
    exit "$rc"
    ;;
"")
    PY=python3 WHEELS=.whl N=200000 DIM=2048 KMEANS_K=5000 SAMPLE_N=5000 \
        RESULTS="${OUT:-benchmarks/results}" run_check
    ;;
*)
    echo "usage: bash benchmarks/gpu_check.sh [--prepare | --rehearse]" >&2
    exit 2
    ;;
esac
