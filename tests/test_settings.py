"""The settings table, its flags and variables, and ``tessera serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tessera_gpu.cli.main import cli
from tessera_gpu.cli.serve import serve
from tessera_gpu.errors import InvalidRequest
from tessera_gpu.settings import SETTINGS, Settings

from .conftest import write_episode_file

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_come_from_the_table() -> None:
    assert Settings.load({}, environ={}) == Settings()
    assert [s.name for s in SETTINGS] == list(Settings.__dataclass_fields__)


def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    env = {
        "TESSERA_PORT": "9000",
        "TESSERA_DEVICE": "cpu",
        "TESSERA_ALLOW_PATH": f"{tmp_path}/a:{tmp_path}/b",
        "TESSERA_MAX_UPLOAD_MB": "2.5",
        "TESSERA_DATA_DIR": str(tmp_path / "d"),
    }
    s = Settings.load({"port": 9100, "host": None, "allow_path": ()}, environ=env)
    assert (s.port, s.device, s.host, s.max_upload_mb) == (9100, "cpu", "127.0.0.1", 2.5)
    assert s.allow_path == (tmp_path / "a", tmp_path / "b")
    assert s.data_dir == tmp_path / "d"
    assert s.max_upload_bytes == 2_500_000


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TESSERA_PORT": "http"}, "TESSERA_PORT must be a int: got 'http'"),
        ({"TESSERA_PORT": "70000"}, "port must be 0 to 65535: got 70000"),
        ({"TESSERA_DEVICE": "tpu"}, "device must be one of auto, gpu, cpu: got 'tpu'"),
        ({"TESSERA_MAX_UPLOAD_MB": "0"}, "max_upload_mb must be more than 0: got 0.0"),
    ],
)
def test_bad_values_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        Settings.load({}, environ=env)
    assert info.value.message == message
    assert info.value.code == "bad_setting"


def test_every_setting_is_a_serve_flag() -> None:
    text = CliRunner().invoke(serve, ["--help"], terminal_width=200).output
    for s in SETTINGS:
        assert s.flag in text
        assert s.env in text


def test_every_setting_is_in_the_readme() -> None:
    """``python -m tessera_gpu.settings`` prints the table to paste."""
    text = README.read_text()
    missing = [s.env for s in SETTINGS if s.env not in text or s.flag not in text]
    assert not missing, f"README.md does not document {missing}"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Stand in for the server (app/server.py): record where it would listen and the app."""
    import tessera_app.server as server

    seen: dict[str, Any] = {}

    class Bound:
        def __init__(self, host: str, port: int) -> None:
            seen.update(host=host, port=port)

        def getsockname(self) -> tuple[str, int]:
            return (seen["host"], seen["port"])

        def close(self) -> None:
            pass

    monkeypatch.setattr(server, "bind", Bound)
    monkeypatch.setattr(server, "run", lambda app, settings, sock: seen.update(app=app))
    return seen


def test_serve_builds_the_app_and_prints_the_url(
    tmp_path: Path, served: dict[str, Any], episode_file: Path
) -> None:
    args = [str(episode_file), "--data-dir", str(tmp_path / "d"), "--port", "8123"]
    result = CliRunner().invoke(serve, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Serving at http://127.0.0.1:8123/" in result.output
    assert (served["host"], served["port"]) == ("127.0.0.1", 8123)
    assert served["app"].state.tessera.settings.data_dir == tmp_path / "d"


def test_serve_refuses_a_file_that_is_not_hdf5(tmp_path: Path, served: dict[str, Any]) -> None:
    junk = tmp_path / "x.h5"
    junk.write_text("hello")
    result = CliRunner().invoke(cli, ["serve", str(junk), "--data-dir", str(tmp_path / "d")])
    assert (result.exit_code, "app" in served) == (1, False)
    assert result.output == "error: Not an HDF5 file: x.h5 has no HDF5 signature\n"


def test_demo_is_built_once(
    tmp_path: Path, served: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tessera_gpu.io.demo

    built: list[Path] = []

    def small_demo(path: Path, **kw: Any) -> Path:
        built.append(Path(path))
        return write_episode_file(Path(path), n=50, previews=False)

    monkeypatch.setattr(tessera_gpu.io.demo, "build_demo", small_demo)
    args = ["--demo", "--data-dir", str(tmp_path / "d"), "--device", "cpu"]
    for _ in range(2):
        assert CliRunner().invoke(serve, args).exit_code == 0
    assert built == [tmp_path / "d" / "demo.h5"]
