"""`tessera ingest`: the command, its shards, bad input (one clear line, exit 1, nothing
written) and interruption (no partial file)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from benchmarks.robot_sources import SyntheticEpisode, synthetic_episodes, write_lerobot_v30
from tessera_gpu.cli.main import cli
from tessera_gpu.io.dataset import load_dataset
from tessera_gpu.io.shards import load_shards

pytest_plugins = ("tests.ingest_fixtures",)

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str | Path):
    return CliRunner().invoke(cli, [str(a) for a in args])


def only(folder: Path) -> list[str]:
    """Every entry of ``folder``, hidden temporary files included."""
    return sorted(p.name for p in folder.iterdir())


def test_ingest_writes_a_valid_file_and_says_what_it_wrote(v30_root: Path, tmp_path: Path) -> None:
    result = run("ingest", v30_root, "-o", tmp_path / "pusht.h5")
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith(f"wrote {tmp_path / 'pusht.h5'}: 24 episodes, 252-d trajectory ")
    assert "thumbnails and GIFs of observation.image" in line
    assert load_dataset(tmp_path / "pusht.h5").n_episodes == 24
    assert only(tmp_path) == ["pusht.h5"]


def test_ingest_help_loads_neither_the_web_app_nor_the_map_stack() -> None:
    code = (
        "import sys\n"
        "from tessera_gpu.cli import main\n"
        "try:\n    main(['ingest', '--help'])\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('litestar', 'datashader', 'bokeh', 'uvicorn') if m in sys.modules])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert "Turn SOURCE" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_more_episodes_than_a_shard_holds_make_shards_and_the_join_line(
    v30_root: Path, tmp_path: Path
) -> None:
    result = run(
        "ingest", v30_root, "-o", tmp_path / "big.h5", "--shard-size", "10", "--no-previews"
    )
    assert result.exit_code == 0, result.output
    assert only(tmp_path) == ["big-000.h5", "big-001.h5", "big-002.h5"]
    line = f"serve them as one dataset: tessera serve '{tmp_path}/big-*.h5' --join big"
    assert line in result.output
    joined = load_shards(sorted(tmp_path.glob("big-*.h5")))
    assert joined.n_episodes == 24
    assert [load_dataset(p).n_episodes for p in sorted(tmp_path.glob("big-*.h5"))] == [8, 8, 8]
    assert joined.episode_ids.tolist() == [f"ep_{i:06d}" for i in range(24)]


# ---- bad input: one clear line naming the file (and the episode), exit 1, nothing written -----


def broken_copy(v30_root: Path, tmp_path: Path) -> Path:
    return shutil.copytree(v30_root, tmp_path / "broken")


def refused(source: Path, out_dir: Path, *extra: str) -> str:
    out = out_dir / "out"
    out.mkdir()
    result = run("ingest", source, "-o", out / "x.h5", *extra)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ")
    assert result.output.count("\n") == 1  # one line
    assert only(out) == []  # nothing written, no temporary file left
    return result.output


def test_not_a_lerobot_root(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    out = refused(tmp_path / "photos", tmp_path)
    assert (
        out
        == f"error: {tmp_path / 'photos'} is not a LeRobot dataset root: it has no meta/info.json\n"
    )


def test_an_unsupported_codebase_version(v30_root: Path, tmp_path: Path) -> None:
    root = broken_copy(v30_root, tmp_path)
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.0"}))
    out = refused(root, tmp_path)
    assert out.startswith(f"error: {root}/meta/info.json: codebase_version v2.0 is not supported")


def test_a_missing_video_file(v30_root: Path, tmp_path: Path) -> None:
    root = broken_copy(v30_root, tmp_path)
    video = root / "videos/observation.image/chunk-000/file-001.mp4"
    video.unlink()
    assert (
        refused(root, tmp_path) == f"error: video file {video} is missing (episode 10 of broken)\n"
    )


def test_a_truncated_video_file(v30_root: Path, tmp_path: Path) -> None:
    root = broken_copy(v30_root, tmp_path)
    video = root / "videos/observation.image/chunk-000/file-002.mp4"
    video.write_bytes(video.read_bytes()[:3000])
    out = refused(root, tmp_path)
    assert out.startswith(f"error: video file {video} is ")
    assert "episode 20 of broken" in out


def test_a_corrupt_parquet_file(v30_root: Path, tmp_path: Path) -> None:
    root = broken_copy(v30_root, tmp_path)
    data = root / "data/chunk-000/file-001.parquet"
    data.write_bytes(b"PAR1" + os.urandom(2000))
    out = refused(root, tmp_path)
    assert out.startswith(f"error: {data} is not a readable parquet file (episode 7): ")


def test_a_camera_that_does_not_exist(v30_root: Path, tmp_path: Path) -> None:
    out = refused(v30_root, tmp_path, "--camera", "observation.images.top")
    assert out == (
        f"error: camera 'observation.images.top' is not in {v30_root}: its cameras "
        "are observation.image\n"
    )


def test_an_episode_of_zero_frames(v30_root: Path, tmp_path: Path) -> None:
    root = broken_copy(v30_root, tmp_path)
    meta = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(meta)
    lengths = table.column("length").to_pylist()
    lengths[5] = 0
    pq.write_table(table.set_column(2, "length", [lengths]), meta)
    assert refused(root, tmp_path) == f"error: episode 5 of {root} has 0 frames\n"


def test_a_robomimic_file_without_data(tmp_path: Path) -> None:
    path = tmp_path / "empty.hdf5"
    with h5py.File(path, "w") as f:
        f["mask/train"] = np.array([b"demo_0"])
    out = refused(path, tmp_path)
    assert out == (
        f"error: {path} has no data/ group: not a robomimic-style HDF5 (data/demo_N/...)\n"
    )


def test_a_failed_ingest_keeps_the_older_output(v30_root: Path, tmp_path: Path) -> None:
    target = tmp_path / "x.h5"
    target.write_bytes(b"the older file")
    result = run("ingest", v30_root, "-o", target, "--camera", "nope")
    assert result.exit_code == 1
    assert target.read_bytes() == b"the older file"
    assert only(tmp_path) == ["x.h5"]


# ---- interruption ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough episodes (300 x 40 frames, GIFs on one worker) to interrupt mid-way."""
    episodes: list[SyntheticEpisode] = synthetic_episodes(300, 40, seed=5)
    return write_lerobot_v30(
        tmp_path_factory.mktemp("long") / "long", episodes, size=64, episodes_per_video=100
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_ingest_leaves_no_partial_file(
    long_root: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "x.h5"
    for _ in range(3):  # a busy machine may let the ingest finish before the signal lands
        proc, err = interrupt_ingest(long_root, out, sig)
        if not (proc.returncode == 0 and out.exists()):
            break
        out.unlink()
    assert proc.returncode != 0, (err[-500:], only(tmp_path))
    assert "Traceback" not in err
    assert only(tmp_path) == []


def interrupt_ingest(root: Path, out: Path, sig: signal.Signals) -> tuple[Any, str]:
    """Start ``tessera ingest root -o out`` and send it ``sig`` once writing has begun."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tessera_gpu.cli",
            "ingest",
            str(root),
            "-o",
            str(out),
            "--workers",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started in the background inherits SIGINT ignored, and Python then never
        # turns it into KeyboardInterrupt: give the child the terminal's default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".tmp") for p in out.parent.iterdir()):  # writing has begun
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc, err


def test_a_root_whose_cameras_are_images_ingests_without_previews_and_says_why(
    v30_root: Path, tmp_path: Path
) -> None:
    root = broken_copy(v30_root, tmp_path)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.image"]["dtype"] = "image"  # PNGs in the parquet files
    (root / "meta/info.json").write_text(json.dumps(info))
    result = run("ingest", root, "-o", tmp_path / "x.h5")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        f"no previews: {root} stores its cameras (observation.image) as images in its parquet "
        "files, and tessera ingest reads video cameras only (convert them with "
        "lerobot-edit-dataset --operation.type convert_image_to_video)"
    )
    assert not load_dataset(tmp_path / "x.h5").has_thumbnails
    out = refused(root, tmp_path, "--camera", "observation.image")
    assert "is stored as images in its parquet files" in out
