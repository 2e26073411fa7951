"""``tessera serve``: register files, start the web app, print its URL.

Its flags are generated from the settings table (:mod:`.settings`), so a setting, its flag,
its ``TESSERA_*`` variable and its help line never drift apart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tessera_gpu import __version__
from tessera_gpu.backends import MODES
from tessera_gpu.errors import InvalidRequest
from tessera_gpu.io.safety import Limits, check_file_on_disk
from tessera_gpu.names import check_dataset_name
from tessera_gpu.settings import SETTINGS, Setting, Settings

__all__ = ["DEMO_FILE", "check_exposure", "login_token", "serve", "setting_options"]

DEMO_FILE = "demo.h5"


def _click_type(setting: Setting) -> Any:
    if setting.name == "device":
        return click.Choice(MODES)
    if setting.name in ("data_dir", "allow_path"):
        return click.Path(path_type=Path, file_okay=False)
    if setting.parse is int:
        return click.INT
    if setting.parse is float:
        return click.FloatRange(min=0, min_open=True)
    return click.STRING


def setting_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one ``--flag`` per setting; an absent flag is None, so the env var can apply."""
    for setting in reversed(SETTINGS):
        default = ", ".join(setting.default) if setting.multiple else setting.default
        if setting.default is False:  # a boolean setting: a flag with no value
            command = click.option(
                setting.flag,
                setting.name,
                is_flag=True,
                flag_value=True,
                default=None,
                help=f"{setting.help} [env: {setting.env}; default: off]",
            )(command)
            continue
        command = click.option(
            setting.flag,
            setting.name,
            type=_click_type(setting),
            multiple=setting.multiple,
            default=None,
            help=f"{setting.help} [env: {setting.env}; default: {default or 'none'}]",
        )(command)
    return command


@click.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--demo", is_flag=True, help="Also serve the built-in demo dataset (built once).")
@click.option(
    "--join",
    metavar="NAME",
    default=None,
    help="Register FILES as one dataset named NAME: one map across them, each episode's file "
    "in the 'source' field (same D in every file, unique episode ids). A quoted glob such as "
    "'shards/*.h5' is expanded here.",
)
@setting_options
def serve(files: tuple[Path, ...], demo: bool, join: str | None, **flags: Any) -> None:
    """Serve FILES (Tessera HDF5 files, registered by path; LeRobot roots and robomimic files,
    ingested into the data directory once) and the data directory's datasets."""
    from tessera_app.access_log import configure_logging
    from tessera_app.main import create_app
    from tessera_app.server import bind, run

    from tessera_gpu.io.shards import expand_paths

    configure_logging()
    settings, login_url = login_token(Settings.load(flags))
    check_exposure(settings)
    if join is not None and (not files or demo):
        raise click.UsageError("--join NAME needs the FILES to join (and no --demo)")
    if join is not None:
        join = check_dataset_name(join).strip()
    sock = bind(settings.host, settings.port)  # a busy port: one line, the data dir untouched
    try:
        port = sock.getsockname()[1]
        # a quoted glob expanded; LeRobot roots and robomimic files ingested (once)
        paths = ingest_sources(expand_paths(files), settings.data_dir, joined=join is not None)
        for path in paths:
            check_file_on_disk(path, Limits())  # a typo or a wrong file: one clear line, no server
        if demo:
            paths.append(ensure_demo(settings.data_dir))
        app = create_app(settings, files=paths, join=join)
        announce(app.state.tessera, settings, port, login_url)
        run(app, settings, sock)
    finally:
        sock.close()


def announce(core: Any, settings: Settings, port: int, login_url: str | None) -> None:
    """What ``tessera serve`` prints before it serves: backend, data, cluster, URL."""
    backend = core.backend
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    click.echo(
        f"Tessera {__version__} on {backend.name} ({backend.device}), data in {settings.data_dir}"
    )
    if core.engine is not None:
        cluster = core.engine.describe()
        click.echo(
            f"Dask scheduler {cluster['scheduler']}: {cluster['workers']} workers, "
            f"{cluster['threads']} threads{', cuml.dask' if cluster['cuml_dask'] else ''}"
        )
    if core.catalog.problem is not None:
        click.echo(f"warning: {core.catalog.damaged('reads go on, writes are refused').message}")
    click.echo(f"Serving at http://{host}:{port}/  (API docs: /api/schema)")
    if login_url is not None:  # stdout only, once: never logged, never written to a file
        click.echo(f"No --token given, so this run made one. Log in once: {login_url}")


def ingest_sources(paths: list[Path], data_dir: Path, *, joined: bool) -> list[Path]:
    """LeRobot roots and robomimic files replaced by their ingested files (with a progress bar
    the first time; reused when their content has not changed). ``joined``: they will be one
    dataset, so their episode ids carry their names."""
    from tessera_gpu.cli.ingest import progress_bar
    from tessera_gpu.ingest.ingested import ingested_files
    from tessera_gpu.ingest.sources import is_source

    out = []
    for path in paths:
        if not is_source(path):
            out.append(path)
            continue
        with progress_bar(f"Ingesting {path.name}") as progress:
            (ingested,) = ingested_files([path], data_dir, progress=progress, joined=joined)
        click.echo(f"{path} is served from {ingested}")
        out.append(ingested)
    return out


def login_token(settings: Settings) -> tuple[Settings, str | None]:
    """Jupyter's way: a bind beyond this machine with no token (and no ``--insecure``) gets a
    random token for this run. Returns the settings with it and the login URL to print once,
    or the settings unchanged and None (a token was given, ``--insecure``, or loopback)."""
    if settings.token or settings.insecure or is_loopback(settings.host):
        return settings, None
    token = secrets.token_urlsafe(32)
    bound = settings.host.strip("[]")
    browse = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(bound)  # noqa: S104
    if browse is None:
        browse = f"[{bound}]" if ":" in bound else bound
    url = f"http://{browse}:{settings.port}/login?token={token}"
    return dataclasses.replace(settings, token=token), url


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond this machine without a token, unless told ``--insecure``
    (the last guard: :func:`login_token` gives such a bind a token first)."""
    if settings.token or settings.insecure or is_loopback(settings.host):
        return
    raise InvalidRequest(
        f"refusing to listen on {settings.host} without --token (or TESSERA_TOKEN); "
        "pass --insecure to do it anyway",
        code="insecure_bind",
    )


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ensure_demo(data_dir: Path) -> Path:
    """The demo dataset in the data directory, built the first time (about a minute)."""
    path = Path(data_dir).expanduser() / DEMO_FILE
    if path.exists():
        return path
    from rich.progress import Progress

    from tessera_gpu.io.demo import build_demo

    path.parent.mkdir(parents=True, exist_ok=True)
    with Progress(transient=True) as bar:
        task = bar.add_task("Building the demo dataset", total=None)
        build_demo(path, progress=lambda done, total: bar.update(task, completed=done, total=total))
    click.echo(f"built the demo dataset: {path}")
    return path
