#!/usr/bin/env bash
# The GPU check: one command on a CUDA machine, from a fresh copy of the repository.
#
#   bash benchmarks/gpu_check.sh [--only STEP]             # on the GPU machine (~4 min typical)
#   bash benchmarks/gpu_check.sh --prepare                 # on a CPU machine with PyPI: fill .whl/
#   bash benchmarks/gpu_check.sh --rehearse [--only STEP]  # the same run on a CPU (CI does this)
#
# The steps, in this order, each under `timeout -k` (45 + 100 + 120 + 75 s: 5 min 40 s at
# most, so a first run and a second one fit in a borrowed machine's 15 minutes); --only STEP
# runs one of them (preflight, tests, bench-tf32 or bench-fp32) and the report:
#   1. preflight: every import the check needs, the GPU probe (a kernel, a matmul, eigh), the
#      doctor's report and each kernel's registers and spills;
#   2. the `gpu` tests, with TESSERA_REQUIRE_GPU=1 (a skipped CuPy-tier test fails), each
#      under a 60 s timeout that fails the test and goes on;
#   3. benchmarks/gpu_bench.py at 200,000 x 2,048, with CUPY_TF32=1 and then without: kNN
#      k=15, the full projection, the k-means++ seeding, K-means k=5,000 (25 iterations), the
#      diversity sample n=5,000, and (first run) trustworthiness against the CPU tier; each
#      stage's figures are written as soon as it ends, and a stopped run prints its stack;
#   4. the report, gpu-<date>.json and .md: every figure against its target and floor.
# Everything it learns lands in $OUT (else benchmarks/results/gpu-check/), 6 files: check.log
# (the whole run, each step's time), environment.txt (nvidia-smi, pip list, CuPy's config),
# tests.xml (every test, with tracebacks), runs.jsonl, gpu-<date>.json and gpu-<date>.md.
# It exits non-zero if any step failed.
#
# The GPU machine has no network. It has Python 3.12 with cupy-cuda13x, numpy, scipy, numba,
# h5py, pandas, scikit-learn, pytest, pytest-timeout, xxhash, pillow, click, rich, httpx and
# anyio; whatever else the check imports (CARRY) comes as wheels in .whl/ (git-ignored, 40 MiB
# at most), which --prepare downloads for CPython 3.12 on manylinux x86_64.
#
# --rehearse runs this same script on a CPU machine with the image's Python (3.12, from pyenv
# where it is there) and the image's package versions where this index has them (PINS; numpy
# 2.5.2 falls back to NUMPY_HERE with a line saying so), TESSERA_GPU_STANDIN=numpy and
# 4,000 x 256 rows. Its venv is kept in ~/.cache/tessera/, keyed by the Python and the pins.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

PINS="scipy==1.17.1 numba==0.68.1 h5py==3.16.0 pandas==3.1.1 scikit-learn==1.9.1 pytest==9.2.0
pytest-timeout==2.4.0 xxhash==4.1.0 pillow==13.0.0 click==8.5.1 rich==15.0.0 httpx==0.29.0
anyio==4.16.0"
NUMPY_IMAGE=2.5.2 NUMPY_HERE=2.4.6 PYTHON_IMAGE=3.12
CARRY="msgspec==0.23.0"   # packages the check imports that the GPU image lacks
WHEEL_LIMIT_MIB=40
TESTS="tests/test_backends.py tests/test_projection.py tests/test_clustering.py
tests/test_gpu_tier.py tests/test_gpu_seeding.py"
STEP_NAMES="preflight tests bench-tf32 bench-fp32"

download_wheels() {  # download_wheels DIR PYTHON_VERSION
    mkdir -p "$1"
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

step() {  # step NAME SECONDS COMMAND...: run it under a timeout, record its status and time
    local name=$1 limit=$2 rc=0 start=$SECONDS
    shift 2
    [[ -n $ONLY && $ONLY != "$name" ]] && return 0
    echo "== $name (at most ${limit} s), $(date -u +%H:%M:%S)"
    timeout -k 10 "$limit" "$@" || rc=$?
    STEPS+=("--step" "$name=$rc")
    echo "== $name: $( ((rc == 0)) && echo ok || echo "FAILED (exit $rc)") in $((SECONDS - start)) s"
    (( rc == 0 )) || FAILED=1
}

environment() {  # what a failure may need explained: the machine, the packages, CuPy
    {
        date -u; uname -a; nproc; free -g 2>&1 || true; "$PY" -VV
        nvidia-smi 2>&1 || echo "nvidia-smi: not here"
        "$PY" -m pip list 2>&1 || true
        if [[ -z ${TESSERA_GPU_STANDIN:-} ]]; then
            timeout -k 5 60 "$PY" -c 'import cupy; cupy.show_config()' 2>&1 || true
        fi
    } > "$RESULTS/environment.txt"
}

run_check() {  # the whole run, with $PY, $WHEELS, $N, $DIM, $KMEANS_K, $SAMPLE_N, $RESULTS
    local start=$SECONDS
    echo "GPU check ($MODE${ONLY:+, --only $ONLY}), $(date -u); artefacts in $RESULTS"
    install_wheels "$PY" "$WHEELS" "$WORK/site"
    export PYTHONPATH="$WORK/site:$PWD" PYTHONUNBUFFERED=1
    environment
    STEPS=() FAILED=0
    step preflight 45 "$PY" -m benchmarks.gpu_bench preflight
    step tests 100 env TESSERA_REQUIRE_GPU=1 "$PY" -m pytest -q -m gpu -p no:cacheprovider \
        -o timeout=60 -o timeout_method=signal -rfEs --durations=10 \
        --junitxml "$RESULTS/tests.xml" $TESTS
    local bench=("$PY" -m benchmarks.gpu_bench run --n "$N" --dim "$DIM" --kmeans-k "$KMEANS_K"
                 --sample-n "$SAMPLE_N" --data "$WORK/x.npy" --json "$RESULTS/runs.jsonl")
    step bench-tf32 120 env CUPY_TF32=1 "${bench[@]}" --cpu-trust
    step bench-fp32 75 env CUPY_TF32=0 "${bench[@]}"
    local expect=()
    [[ -z $ONLY || $ONLY == bench-tf32 ]] && expect+=(--expect tf32=1)
    [[ -z $ONLY || $ONLY == bench-fp32 ]] && expect+=(--expect tf32=0)
    "$PY" -m benchmarks.gpu_bench report --runs "$RESULTS/runs.jsonl" --junit "$RESULTS/tests.xml" \
        --out "$RESULTS" --n "$N" --dim "$DIM" --kmeans-k "$KMEANS_K" "${expect[@]}" \
        "${STEPS[@]}" || FAILED=1
    echo "GPU check: exit $FAILED after $((SECONDS - start)) s; $(ls "$RESULTS" | wc -l) files in $RESULTS"
    return "$FAILED"
}

rehearsal_venv() {  # a venv of the image's Python and versions, made once per pin set
    local python=python3 cache key venv
    for candidate in "$HOME"/.pyenv/versions/"$PYTHON_IMAGE".*/bin/python3; do
        [[ -x $candidate ]] && python=$candidate
    done
    command -v "python$PYTHON_IMAGE" >/dev/null && [[ $python == python3 ]] && python=python$PYTHON_IMAGE
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/tessera
    mkdir -p "$cache"
    key=$(printf '%s\n' "$("$python" -VV)" $PINS "$NUMPY_IMAGE" "$NUMPY_HERE" $CARRY | sha256sum | cut -c1-12)
    venv=$cache/rehearsal-$key
    (
        flock 9
        [[ -e $venv/complete ]] && exit 0
        echo "rehearsal: a venv of $("$python" -V) and the pinned packages in $venv"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        if ! "$venv/bin/python" -m pip install -q "numpy==$NUMPY_IMAGE" $PINS 2>/dev/null; then
            echo "rehearsal: numpy $NUMPY_IMAGE (the GPU image's) is not on this index: numpy $NUMPY_HERE" >&2
            "$venv/bin/python" -m pip install -q "numpy==$NUMPY_HERE" $PINS
        fi
        download_wheels "$venv/whl" "$("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')"
        touch "$venv/complete"
    ) 9> "$cache/rehearsal.lock" >&2
    echo "$venv"
}

MODE=gpu ONLY=""
while (( $# )); do
    case $1 in
    --prepare | --rehearse) MODE=${1#--} ;;
    --only)
        ONLY=${2:-}
        [[ " $STEP_NAMES " == *" $ONLY "* ]] || { echo "--only takes one of: $STEP_NAMES" >&2; exit 2; }
        shift ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--prepare | --rehearse] [--only STEP]" >&2; exit 2 ;;
    esac
    shift
done

checked() {  # checked: run_check with its whole output in $RESULTS/check.log as well
    mkdir -p "$RESULTS"
    rm -f "$RESULTS/check.log" "$RESULTS/tests.xml" "$RESULTS/runs.jsonl"
    set -o pipefail
    run_check 2>&1 | tee "$RESULTS/check.log"
}

case $MODE in
prepare)
    download_wheels .whl 3.12
    size=$(du -sm .whl | cut -f1)
    echo "wheelhouse .whl/: ${size} MiB (limit ${WHEEL_LIMIT_MIB}); carries: ${CARRY:-nothing}"
    (( size <= WHEEL_LIMIT_MIB ))
    ;;
rehearse)
    venv=$(rehearsal_venv)
    export TESSERA_GPU_STANDIN=numpy
    PY="$venv/bin/python" WHEELS="$venv/whl" N=4000 DIM=256 KMEANS_K=400 SAMPLE_N=400 \
        RESULTS="${OUT:-$WORK/results}" checked
    ;;
gpu)
    PY=python3 WHEELS=.whl N=200000 DIM=2048 KMEANS_K=5000 SAMPLE_N=5000 \
        RESULTS="${OUT:-benchmarks/results/gpu-check}" checked
    ;;
esac
