"""The CLI: compact reports, JSON, and one clear error line with a non-zero exit."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from tessera_gpu.cli.main import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_validate_prints_compact_report(episode_file: Path) -> None:
    result = run("validate", str(episode_file))
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.splitlines()[0] == "episodes.h5: valid"
    assert "episodes   300" in out
    assert "dimension  16" in out
    assert "mode       full" in out
    assert "previews   thumbnails, gifs" in out
    assert "task" in out
    assert "category" in out
    assert "episode_length" in out


def test_validate_json(metadata_only_file: Path) -> None:
    result = run("validate", "--json", str(metadata_only_file))
    report = json.loads(result.output)
    assert report["valid"] is True
    assert report["mode"] == "metadata-only"
    assert report["dim"] is None
    assert {f["name"] for f in report["fields"]} >= {"success", "task", "episode_length"}


def test_validate_error_is_one_line_and_nonzero(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.output == "error: Not an HDF5 file: notes.txt has no HDF5 signature\n"


def test_validate_upload_limit(episode_file: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", "--max-file-mb", "0.5", str(episode_file)])
    assert result.exit_code == 1
    assert result.output.startswith("error: File too large: ")


def test_console_script_entry_point(tmp_path: Path) -> None:
    """The installed `tessera` command runs, and prints errors as one line on stderr."""
    exe = Path(sys.executable).with_name("tessera")
    proc = subprocess.run(
        [str(exe), "validate", str(tmp_path / "missing.h5")], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr == f"error: No such file: {tmp_path / 'missing.h5'}\n"


def test_serve_on_a_busy_port_is_one_line_and_touches_nothing(
    tmp_path: Path, episode_file: Path
) -> None:
    """It used to print "Serving at ...", register the file in the data dir, then die
    (Errno 98, exit 3)."""
    data_dir = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            cli, ["serve", str(episode_file), "--data-dir", str(data_dir), "--port", str(port)]
        )
    assert result.exit_code == 1
    assert result.output == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; is another server "
        "running there? Stop it, or pick another --port (or TESSERA_PORT)\n"
    )
    assert not data_dir.exists()
