"""``python benchmarks/ingest.py --smoke`` runs end to end and writes its table (it measures
nothing at that size; the figures in the README come from a full run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_ingest_benchmark_smoke_run_goes_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "TESSERA_BENCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "benchmarks/ingest.py", "--smoke", "--out", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "ingest-smoke.json").read_text())
    runs = results["runs"]
    assert runs["trajectory_2w"]["episodes"] == 40
    assert runs["previews_2w"]["episodes_per_s"] > 0
    assert runs["baseline"]["episodes"] == 10
    assert runs["decode"]["frames"] == runs["previews_2w"]["episodes"] * 20
    table = (tmp_path / "out" / "ingest-smoke.md").read_text()
    assert table.startswith("# Ingest benchmark (smoke): 40 episodes x 20 frames")
