"""The one table of settings. Each is a CLI flag of ``tessera serve`` and a ``TESSERA_*`` variable.

A value comes from, in order: the command-line flag, the environment variable
(``TESSERA_`` + the upper-cased name), the default below. :data:`SETTINGS` is the table;
:class:`Settings` holds the resolved, checked values. List settings (``allow_path``) are
repeatable flags, or one variable separated by ``os.pathsep`` (``:`` on Linux and macOS).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera_gpu.backends import MODES
from tessera_gpu.errors import InvalidRequest

__all__ = ["SETTINGS", "Setting", "Settings", "env_var", "markdown_table"]


@dataclass(frozen=True)
class Setting:
    """One row of the table: its name, default and help line, and how to read a string."""

    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    multiple: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return env_var(self.name)


def env_var(name: str) -> str:
    """``data_dir`` -> ``TESSERA_DATA_DIR``."""
    return "TESSERA_" + name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "device",
        "auto",
        "Compute backend: auto (the GPU if one works, else the CPU), gpu (fail without one) "
        "or cpu.",
    ),
    Setting(
        "data_dir",
        "~/.tessera",
        "Where Tessera keeps its catalog (datasets, samples, jobs: catalog.sqlite), uploads "
        "and cached maps.",
    ),
    Setting("host", "127.0.0.1", "Interface to listen on (0.0.0.0 exposes the server)."),
    Setting("port", 8000, "Port to listen on.", parse=int),
    Setting(
        "allow_path",
        (),
        "A directory whose HDF5 files may be registered by path over HTTP (repeatable). "
        "Without one, registering by path is refused.",
        multiple=True,
    ),
    Setting("max_upload_mb", 100.0, "Largest file accepted by upload, in MB.", parse=float),
    Setting(
        "token",
        None,
        "Require this secret for the API and the page: an 'Authorization: Bearer' header, or "
        "a browser session started at /login?token=... (never printed or logged).",
    ),
    Setting(
        "insecure",
        False,
        "Allow listening on a non-loopback interface without a token.",
        parse=lambda raw: _flag(raw),
    ),
    Setting(
        "allowed_host",
        (),
        "A Host name the server also answers to (repeatable); besides it only the bound host, "
        "localhost, 127.0.0.1 and [::1] are accepted (a wildcard bind accepts any).",
        multiple=True,
    ),
    Setting(
        "dask",
        None,
        "Address of a Dask scheduler (e.g. tcp://scheduler:8786): the embedding-space work "
        "(kNN graph, K-means, projection placement, duplicates) runs on its workers, which "
        "read the files themselves from shared storage. Without it everything runs in-process.",
    ),
    Setting(
        "max_episodes_dask",
        10_000_000,
        "Most episodes in one dataset when --dask is set (without it, free memory is the limit).",
        parse=int,
    ),
    Setting(
        "dask_landmarks",
        200_000,
        "With --dask, the map is fitted on this many episodes (landmarks) and the rest are "
        "placed among them on the workers.",
        parse=int,
    ),
)


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


DEFAULT_DATA_DIR = Path("~/.tessera").expanduser()


@dataclass(frozen=True)
class Settings:
    """Resolved settings. Build with :meth:`load`; construct directly in tests."""

    device: str = "auto"
    data_dir: Path = DEFAULT_DATA_DIR
    host: str = "127.0.0.1"
    port: int = 8000
    allow_path: tuple[Path, ...] = ()
    max_upload_mb: float = 100.0
    token: str | None = field(default=None, repr=False)
    insecure: bool = False
    allowed_host: tuple[str, ...] = ()
    dask: str | None = None
    max_episodes_dask: int = 10_000_000
    dask_landmarks: int = 200_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "token", self.token or None)
        object.__setattr__(self, "insecure", bool(self.insecure))
        object.__setattr__(self, "allowed_host", tuple(str(h) for h in self.allowed_host))
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        object.__setattr__(self, "allow_path", tuple(Path(p).expanduser() for p in self.allow_path))
        object.__setattr__(self, "port", int(self.port))
        object.__setattr__(self, "max_upload_mb", float(self.max_upload_mb))
        object.__setattr__(self, "dask", (self.dask or "").strip() or None)
        object.__setattr__(self, "max_episodes_dask", int(self.max_episodes_dask))
        object.__setattr__(self, "dask_landmarks", int(self.dask_landmarks))
        _check(self)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)

    @classmethod
    def load(
        cls, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Resolve every setting: a flag that is given (not None, not empty) wins over the env."""
        flags = flags or {}
        environ = os.environ if environ is None else environ
        values = {s.name: _resolve(s, flags.get(s.name), environ) for s in SETTINGS}
        return cls(**values)


def _resolve(setting: Setting, flag: Any, environ: Mapping[str, str]) -> Any:
    if flag is not None and flag != ():
        return tuple(flag) if setting.multiple else flag
    raw = environ.get(setting.env)
    if raw is None or raw == "":
        return setting.default
    if setting.multiple:
        return tuple(p for p in raw.split(os.pathsep) if p)
    try:
        return setting.parse(raw)
    except ValueError:
        raise InvalidRequest(
            f"{setting.env} must be a {_type_name(setting)}: got {raw!r}", code="bad_setting"
        ) from None


def _type_name(setting: Setting) -> str:
    return "boolean (1/0, true/false)" if setting.name == "insecure" else setting.parse.__name__


def _check(s: Settings) -> None:
    if s.device not in MODES:
        raise InvalidRequest(
            f"device must be one of {', '.join(MODES)}: got {s.device!r}", code="bad_setting"
        )
    if not 0 <= s.port <= 65_535:
        raise InvalidRequest(f"port must be 0 to 65535: got {s.port}", code="bad_setting")
    if not s.max_upload_mb > 0:
        raise InvalidRequest(
            f"max_upload_mb must be more than 0: got {s.max_upload_mb}", code="bad_setting"
        )
    if s.max_episodes_dask < 1:
        raise InvalidRequest(
            f"max_episodes_dask must be at least 1: got {s.max_episodes_dask}", code="bad_setting"
        )
    if not 4 <= s.dask_landmarks <= 1_000_000:
        raise InvalidRequest(
            f"dask_landmarks must be 4 to 1,000,000: got {s.dask_landmarks}", code="bad_setting"
        )


def markdown_table() -> str:
    """The settings as a Markdown table, for the README (``python -m tessera_gpu.settings``)."""
    rows = ["| flag | environment variable | default | what it does |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        default = ", ".join(s.default) if s.multiple else s.default
        default = "false" if default is False else default
        rows.append(f"| `{s.flag}` | `{s.env}` | `{default or '(none)'}` | {s.help} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table())
