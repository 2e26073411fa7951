"""Parallel kernels launched from several threads at once (the server does this)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from tessera_gpu.backends.cpu_kmeans import kmeans
from tessera_gpu.backends.cpu_knn import exact_knn
from tessera_gpu.projection import parallel

# Four threads, each running kNN and K-means on its own data, checked against one thread.
CONCURRENT = textwrap.dedent(
    """
    import json
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    import tessera_gpu
    from tessera_gpu.projection import parallel
    from tessera_gpu.backends.cpu_kmeans import kmeans
    from tessera_gpu.backends.cpu_knn import exact_knn

    tessera_gpu.configure_process()  # as create_app and the tessera command do

    def work(seed):
        x = np.random.default_rng(seed).normal(size=(3000, 24)).astype(np.float32)
        out = []
        for _ in range(5):
            idx, _ = exact_knn(x, 8)
            out.append((idx.sum().item(), kmeans(x, 16, seed=seed).labels.tolist()))
        return out

    alone = [work(s) for s in range(4)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(work, range(4)))
    import numba
    print(json.dumps({"same": alone == together, "safe": parallel.thread_safe(),
                      "layer": numba.threading_layer()}))
    """
)


def _run(layer: str | None) -> dict[str, object]:
    import json

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    proc = subprocess.run(
        [sys.executable, "-c", CONCURRENT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_unset_layer_picks_a_thread_safe_one() -> None:
    out = _run(None)
    assert out == {"same": True, "safe": True, "layer": out["layer"]}
    assert out["layer"] in ("tbb", "omp")


def test_workqueue_layer_is_serialised_instead_of_aborting() -> None:
    # numba aborts the process when two threads launch on the workqueue layer at once; the
    # kernel lock must prevent that (and the results stay those of one thread).
    assert _run("workqueue") == {"same": True, "safe": False, "layer": "workqueue"}


def test_serial_section_is_reentrant() -> None:
    with parallel.serial_section(), parallel.serial_section():
        idx, _ = exact_knn(np.eye(4, dtype=np.float32), 2)
    assert idx[:, 0].tolist() == [0, 1, 2, 3]


def test_kernels_in_this_process_agree_across_threads() -> None:
    x = np.random.default_rng(1).normal(size=(2000, 16)).astype(np.float32)
    expected = kmeans(x, 12, seed=3).labels
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda _: kmeans(x, 12, seed=3).labels, range(6)))
    assert all(np.array_equal(g, expected) for g in got)
    assert numba.threading_layer() in ("tbb", "omp")
