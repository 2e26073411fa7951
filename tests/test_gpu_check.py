"""benchmarks/gpu_check.sh cannot rot: CI rehearses the whole script on the CPU.

The rehearsal builds a fresh venv holding only the GPU image's packages (from PyPI), runs the
same steps as on a GPU with the CuPy tier on the numpy stand-in at 4,000 x 256, and writes
its report to ``$OUT``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks.gpu_bench import markdown

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rehearsal_passes_every_step(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TESSERA_", "CUPY_"))}
    env["OUT"] = str(tmp_path)
    run = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--rehearse"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    (report_path,) = tmp_path.glob("gpu-*.json")
    report = json.loads(report_path.read_text())
    assert report["standin"] == "numpy"
    assert report["n"] == 4000
    assert report["steps"] == {"preflight": 0, "tests": 0, "bench-tf32": 0, "bench-fp32": 0}
    tests = report["tests"]
    assert tests["passed"] > 30
    assert tests["failures"] == tests["errors"] == 0
    fast, exact = report["runs"]["tf32=1"], report["runs"]["tf32=0"]
    assert exact is not None
    assert exact["knn_k15_s"] > 0
    assert fast["trust_gpu"] >= fast["trust_cpu"] - 0.01
    text = report_path.with_suffix(".md").read_text()
    assert "Rehearsal on the numpy stand-in" in text
    assert "| kNN k=15, s | <= 2 |" in text


def test_report_shows_failed_steps_and_runs() -> None:
    report = {
        "date": "2026-12-01 00:00 UTC",
        "host": "h",
        "n": 10,
        "dim": 4,
        "standin": None,
        "steps": {"preflight": 0, "bench-fp32": 124},
        "tests": None,
        "runs": {"tf32=1": {"knn_k15_s": 1.5, "trust_gpu": 0.99}, "tf32=0": None},
    }
    text = markdown(report)
    assert "| bench-fp32 | FAILED (exit 124) |" in text
    assert "| kNN k=15, s | <= 2 | 1.50 | failed |" in text
    assert "| trustworthiness, GPU map | >= CPU - 0.01 | 0.9900 | failed |" in text
    assert "stand-in" not in text
