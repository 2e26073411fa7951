"""Shared fixtures: small seeded files built in tmp_path, the way a user would write them."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from PIL import Image

TASKS = ("pick", "place", "stack")


@contextlib.contextmanager
def local_dask_client() -> Iterator[Any]:
    """A ``Client`` of a LocalCluster of 2 worker processes, 1 thread each. It is not the
    default client, as a server's is not: code that needs one fails here as it would there."""
    distributed = pytest.importorskip("dask.distributed", reason="the dask extra is not installed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with distributed.Client(cluster, set_as_default=False) as client:
        yield client
    cluster.close()


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for a server the test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- suite hygiene ------------------------------------------------------------------------------


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Print a failure the moment it happens: if a later test hangs and the run is killed,
    the log still says what failed first (``-q`` otherwise shows it only at the end)."""
    if report.failed and _terminal is not None:
        _terminal.write_line(f"\nFAILED {report.nodeid} ({report.when})", red=True)
        _terminal.write_line(report.longreprtext[-6000:])


_terminal = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """``TESSERA_REQUIRE_GPU=1`` (set by benchmarks/gpu_check.sh): a skipped ``gpu`` test is a
    failure, so a GPU check cannot pass by skipping.  Allowed skips: ``cuml`` tests (the GPU
    image has no RAPIDS), and ``real_gpu`` tests while the numpy stand-in is on (rehearsal)."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or os.environ.get("TESSERA_REQUIRE_GPU") != "1":
        return
    if item.get_closest_marker("gpu") is None or item.get_closest_marker("cuml") is not None:
        return
    if item.get_closest_marker("real_gpu") is not None and os.environ.get("TESSERA_GPU_STANDIN"):
        return
    report.outcome = "failed"
    report.longrepr = f"TESSERA_REQUIRE_GPU=1, but this GPU test skipped: {report.longrepr}"


def pytest_configure(config: pytest.Config) -> None:
    global _terminal
    _terminal = config.pluginmanager.get_plugin("terminalreporter")


@pytest.fixture(autouse=True)
def _no_projection_outlives_its_test() -> Iterator[None]:
    """An app's projection thread stops at its next progress report once the app closes;
    wait for that, so no test's leftover work runs (and competes for the cores) in the next."""
    yield
    deadline = time.monotonic() + 120
    workers = ("tessera-projection", "tessera-analysis")
    while alive := [t.name for t in threading.enumerate() if t.name in workers]:
        if time.monotonic() > deadline:
            pytest.fail(f"background work outlived its test: {alive}")
        time.sleep(0.02)


@lru_cache(maxsize=16)
def jpeg_bytes(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


@lru_cache(maxsize=16)
def gif_bytes(seed: int, size: int = 16, frames: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    imgs = [
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        for _ in range(frames)
    ]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=125, loop=0)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def write_episode_file(
    path: Path,
    *,
    n: int = 300,
    dim: int = 16,
    seed: int = 0,
    embeddings: bool = True,
    previews: bool = True,
    edit: Callable[[h5py.File], None] | None = None,
) -> Path:
    """A 300-episode file with every optional part; ``edit`` may break it afterwards."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        if embeddings:
            centers = rng.normal(size=(len(TASKS), dim)) * 4
            labels = rng.integers(0, len(TASKS), n)
            emb = (centers[labels] + rng.normal(size=(n, dim))).astype(np.float32)
            f.create_dataset("embeddings", data=emb)
        else:
            labels = rng.integers(0, len(TASKS), n)
        f.create_dataset("episode_ids", data=[f"ep_{i:05d}" for i in range(n)])
        meta = f.create_group("metadata")
        meta.create_dataset("success", data=rng.random(n) < 0.7)
        meta.create_dataset("episode_length", data=rng.integers(50, 200, n))
        meta.create_dataset(
            "task", data=np.array(TASKS, dtype=object)[labels], dtype=h5py.string_dtype()
        )
        meta.create_dataset("dataset", data=np.array([b"droid", b"bridge"])[rng.integers(0, 2, n)])
        meta.create_dataset("gripper_force", data=rng.normal(size=n))
        if previews:
            vlen = h5py.vlen_dtype(np.uint8)
            thumbs = np.empty(n, dtype=object)
            thumbs[:] = [jpeg_bytes(i % 8) for i in range(n)]
            gifs = np.empty(n, dtype=object)
            gifs[:] = [gif_bytes(i % 8) for i in range(n)]
            f.create_dataset("thumbnails", data=thumbs, dtype=vlen)
            f.create_dataset("gifs", data=gifs, dtype=vlen)
        if edit is not None:
            edit(f)
    return path


@pytest.fixture(scope="session")
def episode_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_episode_file(tmp_path_factory.mktemp("data") / "episodes.h5")


@pytest.fixture(scope="session")
def metadata_only_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_episode_file(
        tmp_path_factory.mktemp("data") / "meta_only.h5", embeddings=False, previews=False
    )


@pytest.fixture(autouse=True)
def _own_data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test touches the user's ~/.tessera: commands that use the default data directory
    (``tessera sample``, ``tessera project``) get a fresh one."""
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path_factory.mktemp("tessera-home")))
