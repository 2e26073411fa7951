"""Frames of episodes: one forward decode per file gives, bit for bit, what a per-episode PyAV
seek-and-decode (LeRobot's own way) gives, at the right frame of the right episode."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.robot_sources import frame_code, seek_and_decode
from tessera_gpu.errors import InvalidDataset
from tessera_gpu.ingest.lerobot import LeRobotSource
from tessera_gpu.ingest.pipeline import ingest
from tessera_gpu.ingest.robomimic import RobomimicSource
from tessera_gpu.ingest.video import read_frames
from tessera_gpu.io.dataset import load_dataset

pytest_plugins = ("tests.ingest_fixtures",)

REAL = Path("/work/shared/data/lerobot_small")  # LeRobot 0.6.1's own writer, AV1 video


def every_frame(root: Path) -> tuple[list, list[list[np.ndarray]]]:
    source = LeRobotSource(root)
    episodes = list(source.episodes(source.cameras[0]))
    requests = [(e.frames, list(range(e.length)), e.where) for e in episodes]
    return episodes, read_frames(requests)


@pytest.mark.skipif(
    not REAL.is_dir(), reason="the real LeRobot 0.6.1 dataset is not on this machine"
)
def test_the_real_av1_file_decodes_bit_identical_to_a_seek_per_episode() -> None:
    """Every third frame of each of the 60 episodes (and its last), all in one AV1 file."""
    source = LeRobotSource(REAL)
    episodes = list(source.episodes(source.cameras[0]))
    assert len(episodes) == 60
    assert len({e.frames.path for e in episodes}) == 1
    picks = [sorted({*range(0, e.length, 3), e.length - 1}) for e in episodes]
    frames = read_frames([(e.frames, p, e.where) for e, p in zip(episodes, picks, strict=True)])
    for episode, pick, got in zip(episodes, picks, frames, strict=True):
        expected = seek_and_decode(episode.frames.path, episode.frames.timestamps[pick])
        assert np.array_equal(np.stack(got), expected), episode.where


def test_each_frame_is_the_right_frame_of_the_right_episode(v30_root: Path) -> None:
    episodes, frames = every_frame(v30_root)
    assert len({e.frames.path for e in episodes}) == 3
    for episode, got in zip(episodes, frames, strict=True):
        assert [frame_code(f) for f in got] == [(episode.index, i) for i in range(episode.length)]
        expected = seek_and_decode(episode.frames.path, episode.frames.timestamps)
        assert np.array_equal(np.stack(got), expected)


def test_a_batch_of_scattered_frames_across_files_comes_back_in_request_order(
    v30_root: Path,
) -> None:
    source = LeRobotSource(v30_root)
    episodes = list(source.episodes(source.cameras[0]))
    picks = [(episodes[9], [5, 0, 5]), (episodes[10], [3]), (episodes[11], [0, 1])]
    got = read_frames([(e.frames, idx, e.where) for e, idx in picks])
    codes = [[frame_code(f) for f in frames] for frames in got]
    assert codes == [[(9, 5), (9, 0), (9, 5)], [(10, 3)], [(11, 0), (11, 1)]]


def test_robomimic_frames_are_read_by_index(robomimic_file: Path) -> None:
    source = RobomimicSource(robomimic_file)
    episode = next(iter(source.episodes("agentview_image")))
    (got,) = read_frames([(episode.frames, [4, 0, 4], episode.where)])
    assert [frame_code(f) for f in got] == [(0, 4), (0, 0), (0, 4)]
    source.close()


def test_thumbnails_and_gifs_show_the_episodes_own_frames(v30_root: Path, tmp_path: Path) -> None:
    ds = load_dataset(ingest(v30_root, tmp_path / "o.h5").paths[0])
    for row in (0, 9, 10, 23):  # first and last of a video file, first of the next
        thumb = np.asarray(Image.open(io.BytesIO(ds.thumbnail(row))).convert("RGB"))
        assert frame_code(thumb)[0] == row
        gif = Image.open(io.BytesIO(ds.gif(row)))
        length = int(ds.fields["episode_length"].values[row])
        assert gif.n_frames == min(16, length)
        gif.seek(gif.n_frames - 1)
        last = np.asarray(gif.convert("RGB"))
        assert frame_code(last) == (row, length - 1)


def test_a_truncated_video_is_one_error_naming_the_file_and_the_episode(
    v30_root: Path, tmp_path: Path
) -> None:
    import shutil

    root = shutil.copytree(v30_root, tmp_path / "cut")
    video = root / "videos/observation.image/chunk-000/file-001.mp4"
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    source = LeRobotSource(root)
    episodes = [e for e in source.episodes(source.cameras[0]) if e.frames.path == video]
    with pytest.raises(InvalidDataset, match=r"file-001\.mp4 is .*(truncated|corrupt)") as info:
        read_frames([(e.frames, list(range(e.length)), e.where) for e in episodes])
    assert "episode 1" in info.value.message
