"""`tessera doctor` reports what is installed and which backend will run, and why."""

from __future__ import annotations

import importlib.metadata
import json

import h5py
from click.testing import CliRunner

from tessera_gpu.backends import gpu_status
from tessera_gpu.cli.main import cli


def doctor(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["doctor", "--json", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_reports_versions_without_importing() -> None:
    report = doctor()
    assert report["hdf5"] == h5py.version.hdf5_version
    assert report["packages"]["umap-learn"] == importlib.metadata.version("umap-learn")
    assert report["packages"]["dask"] == importlib.metadata.version("dask")  # the test extra's
    assert report["cpu_kernels"] == "thread-safe layer (TBB or OpenMP)"  # libgomp is here


def test_choice_follows_the_machine() -> None:
    gpu, _ = gpu_status()
    assert doctor("--device", "cpu")["will_use"] == "cpu"
    auto = doctor("--device", "auto")
    assert auto["will_use"] == (gpu or "cpu")
    if gpu is None:
        assert auto["gpu"] is None
        assert auto["why"].startswith("no GPU backend: ")
        asked = doctor("--device", "gpu")
        assert asked["will_use"] is None
        assert "will refuse" in asked["why"]
    else:
        assert auto["gpu"]["gpu_memory_total_gib"] > 0


def test_text_report_ends_with_the_verdict() -> None:
    result = CliRunner().invoke(cli, ["doctor", "--device", "cpu"])
    assert result.exit_code == 0
    assert result.output.rstrip().splitlines()[-1] == (
        "Tessera will use: cpu (--device cpu (or TESSERA_DEVICE=cpu) was asked for)"
    )
    assert "hdf5" in result.output
    assert "umap-learn" in result.output
