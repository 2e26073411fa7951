"""Untrusted files are validated in a child process; crashes and limit hits become 422s."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera_gpu import InvalidDataset, Limits, PayloadTooLarge, UnsupportedMediaType
from tessera_gpu.io.isolation import ChildLimits, validate_isolated

from .conftest import write_episode_file


def test_valid_file_returns_summary(episode_file: Path) -> None:
    summary = validate_isolated(episode_file)
    assert summary["n_episodes"] == 300
    assert summary["mode"] == "full"


def test_errors_keep_their_class_code_and_message(tmp_path: Path, episode_file: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"<html>not hdf5</html>")
    with pytest.raises(UnsupportedMediaType) as info:
        validate_isolated(junk)
    assert info.value.code == "not_hdf5"
    assert info.value.status == 415
    with pytest.raises(PayloadTooLarge):
        validate_isolated(episode_file, limits=Limits(max_file_bytes=1000))


def test_memory_limit_is_a_422(tmp_path: Path) -> None:
    path = write_episode_file(tmp_path / "wide.h5", n=20_000, dim=768, previews=False)  # 61 MB
    assert validate_isolated(path)["n_episodes"] == 20_000
    with pytest.raises(InvalidDataset) as info:
        validate_isolated(path, child=ChildLimits(memory_bytes=24 * 2**20))
    assert (info.value.code, info.value.status) == ("parser_memory_limit", 422)
    assert info.value.message == (
        "Validation hit its memory limit; the file asks for too much memory"
    )


def test_timeout_is_a_422(episode_file: Path) -> None:
    with pytest.raises(InvalidDataset) as info:
        validate_isolated(episode_file, child=ChildLimits(timeout_seconds=0.01))
    assert info.value.code == "parser_timeout"
    assert info.value.message == "Validation timed out after 0.01 s"


# Validations started while another thread is inside a threaded BLAS call (as an upload during a
# projection is): with a fork-based child start, OpenBLAS's atfork handler tore its thread pool
# down under that call and the projection hung forever.
BLAS_DURING_VALIDATION = """
import sys, threading
import numpy as np
from pathlib import Path
from tessera_gpu.io.isolation import validate_isolated

x = np.random.default_rng(0).normal(size=(2000, 64)).astype(np.float32)
stop = threading.Event()
def blas():
    while not stop.is_set():
        x @ x.T
worker = threading.Thread(target=blas, daemon=True)
worker.start()
for _ in range(12):
    validate_isolated(Path(sys.argv[1]))
stop.set()
worker.join(30)
print("hung" if worker.is_alive() else "ok")
"""


def test_validation_does_not_stall_blas_in_other_threads(episode_file: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", BLAS_DURING_VALIDATION, str(episode_file)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok"]
