"""benchmarks/gpu_check.sh cannot rot: CI rehearses the whole script on the CPU.

The rehearsal builds (once, then keeps) a venv of the GPU image's Python and package versions,
runs the same steps as on a GPU with the CuPy tier on the numpy stand-in at 4,000 x 256, and
leaves every artefact in ``$OUT``, as the device machine brings them back.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from benchmarks.gpu_bench import floors, markdown

ROOT = Path(__file__).resolve().parents[1]


def _rehearse(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TESSERA_", "CUPY_"))}
    env["OUT"] = str(out)
    return subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--rehearse", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=580,
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rehearsal_passes_every_step_and_keeps_its_evidence(tmp_path: Path) -> None:
    run = _rehearse(tmp_path)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    (report_path,) = tmp_path.glob("gpu-*.json")
    files = {p.name for p in tmp_path.iterdir()}
    assert {"check.log", "environment.txt", "tests.xml", "runs.jsonl"} < files
    assert len(files) <= 8  # what the device machine brings back
    report = json.loads(report_path.read_text())
    assert report["standin"] == "numpy"
    assert report["n"] == 4000
    assert report["steps"] == {"preflight": 0, "tests": 0, "bench-tf32": 0, "bench-fp32": 0}
    log = (tmp_path / "check.log").read_text()
    for name in report["steps"]:
        assert re.search(rf"^== {name}: ok in \d+ s$", log, re.MULTILINE), name
    assert "Python 3.12" in (tmp_path / "environment.txt").read_text()  # the image's Python
    tests = report["tests"]
    assert tests["passed"] > 30
    assert tests["failures"] == tests["errors"] == 0
    assert tests["failed"] == []
    fast, exact = report["runs"]["tf32=1"], report["runs"]["tf32=0"]
    assert exact is not None
    assert exact["stage"] == "done"
    assert exact["knn_k15_s"] > 0
    assert exact["seeding_s"] > 0
    assert exact["kmeans_launches"] < 1500  # 3,579 with the old seeding, k=400
    assert fast["trust_gpu"] >= fast["trust_cpu"] - 0.01
    text = report_path.with_suffix(".md").read_text()
    assert "Rehearsal on the numpy stand-in" in text
    assert "| kNN k=15, s | <= 2 |" in text
    again = _rehearse(tmp_path / "again", "--only", "preflight")  # rerun one step
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    (report_path,) = (tmp_path / "again").glob("gpu-*.json")
    assert json.loads(report_path.read_text())["steps"] == {"preflight": 0}


def test_report_states_the_h200_floor_beside_an_unreachable_target() -> None:
    """1.64e14 FLOP for the kNN's Gram matrix at 200k x 2048: 2.4 s in FP32 on an H200."""
    assert floors(200_000, 2048, 5000, tf32=False) == {
        "knn_floor_s": 2.445,
        "kmeans_floor_s": 1.528,
    }
    assert floors(200_000, 2048, 5000, tf32=True)["knn_floor_s"] == 0.331
    report = {"date": "d", "host": "h", "n": 200_000, "dim": 2048, "kmeans_k": 5000,
              "standin": None, "steps": {}, "tests": None, "runs": {"tf32=0": None}}  # fmt: skip
    text = markdown(report)
    assert ("kNN k=15: the target (2 s) is below the FP32 floor at 200,000 x 2,048 on an H200 "
            "(2.44 s at 67 TFLOP/s)") in text  # fmt: skip
    assert "TF32 floor" not in text  # and none where the target can be met
    assert "below the" not in markdown({**report, "n": 50_000})


def test_report_shows_failed_steps_and_runs() -> None:
    report = {
        "date": "2026-12-01 00:00 UTC",
        "host": "h",
        "n": 10,
        "dim": 4,
        "kmeans_k": 2,
        "standin": None,
        "steps": {"preflight": 0, "bench-fp32": 124},
        "tests": None,
        "runs": {"tf32=1": {"knn_k15_s": 1.5, "trust_gpu": 0.99}, "tf32=0": None},
    }
    text = markdown(report)
    assert "| bench-fp32 | FAILED (exit 124) |" in text
    assert "| kNN k=15, s | <= 2 | 1.50 | failed |" in text
    assert "| kNN GEMM at an H200's peak, s | floor | - | failed |" in text
    assert "| trustworthiness, GPU map | >= CPU - 0.01 | 0.9900 | failed |" in text
    assert "stand-in" not in text
