"""Untrusted files are validated in a child process; crashes and limit hits become 422s."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera_gpu import InvalidDataset, Limits, PayloadTooLarge, UnsupportedMediaType
from tessera_gpu.isolation import ChildLimits, validate_isolated


def test_valid_file_returns_summary(episode_file: Path) -> None:
    summary = validate_isolated(episode_file)
    assert summary["n_episodes"] == 300 and summary["mode"] == "full"


def test_errors_keep_their_class_code_and_message(tmp_path: Path, episode_file: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"<html>not hdf5</html>")
    with pytest.raises(UnsupportedMediaType) as info:
        validate_isolated(junk)
    assert info.value.code == "not_hdf5" and info.value.status == 415
    with pytest.raises(PayloadTooLarge):
        validate_isolated(episode_file, limits=Limits(max_file_bytes=1000))


def test_memory_limit_is_a_422(episode_file: Path) -> None:
    with pytest.raises(InvalidDataset) as info:
        validate_isolated(episode_file, child=ChildLimits(memory_bytes=64 * 2**20))
    assert (info.value.code, info.value.status) == ("parser_memory_limit", 422)


def test_timeout_is_a_422(episode_file: Path) -> None:
    with pytest.raises(InvalidDataset) as info:
        validate_isolated(episode_file, child=ChildLimits(timeout_seconds=0.01))
    assert info.value.code == "parser_timeout"
    assert info.value.message == "Validation timed out after 0.01 s"
