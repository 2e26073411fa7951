"""The Tessera web app: ``create_app(settings)`` wraps a :class:`~tessera_gpu.core.Tessera`;
``tessera serve`` runs it.

At start-up the core sweeps stale temporary files, opens the catalog, reloads every dataset,
registers the files it was given, and starts the projection worker; at shutdown it stops them.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin

from tessera_gpu import __version__, configure_process
from tessera_gpu.backends import Backend
from tessera_gpu.core import Tessera
from tessera_gpu.settings import Settings

if TYPE_CHECKING:
    from tessera_gpu.distributed import DaskEngine

from .access_log import access_log_middleware
from .auth import auth_middleware_factory, login
from .controllers import (
    MAX_JSON_BYTES,
    DatasetController,
    EpisodeController,
    HealthController,
    ProjectionController,
    SampleController,
)
from .error_handlers import EXCEPTION_HANDLERS
from .groups import GroupController
from .maps import MapController, PreviewController
from .openapi_docs import document_errors
from .page import PAGE_HANDLERS
from .params import provide_live
from .selections import SelectionController
from .similarity import SimilarityController

__all__ = ["CONTROLLERS", "create_app"]

log = logging.getLogger("tessera.app")

CONTROLLERS: Sequence[type] = (
    HealthController,
    DatasetController,
    ProjectionController,
    EpisodeController,
    SampleController,
)


def warm_up(tessera: Tessera) -> None:
    """Load what the page needs first, in the background, once the datasets are back: the
    density tile kernel (datashader's import and numba compile, ~3.5 s on 2 cores) and
    Bokeh's models (~1 s). A request that needs them first waits for them, no longer; the
    page's own request warms the colour-by kernels."""
    tessera.maps.warm_up(first_only=True)
    threading.Thread(target=_load_map_document, daemon=True, name="tessera-page-warm-up").start()


def _load_map_document() -> None:
    from . import mapdoc  # noqa: F401  (Bokeh's models, imported once for the process)


def create_app(
    settings: Settings | None = None,
    *,
    files: Iterable[str | Path] = (),
    join: str | None = None,
    backend: Backend | None = None,
    engine: DaskEngine | None = None,
    route_handlers: Sequence[Any] = (),
) -> Litestar:
    """The app for ``settings`` (default: from the environment); ``files`` are registered by
    path at start (with ``join``, as one dataset of that name). ``backend`` overrides
    ``get_backend(settings.device)``, ``engine`` the Dask cluster of ``settings.dask``;
    ``route_handlers`` adds handlers next to the API. The app's core is ``app.state.tessera``.
    """
    configure_process()
    settings = settings or Settings.load()
    tessera = Tessera(settings, backend=backend, engine=engine)
    paths = [Path(f) for f in files]

    async def start() -> None:
        await anyio.to_thread.run_sync(functools.partial(tessera.open, paths, join=join))
        warm_up(tessera)  # after the restore, which it would slow (the GIL)

    async def stop() -> None:
        datasets = len(tessera.registry.all())
        await anyio.to_thread.run_sync(tessera.close)
        log.info("shutdown", extra={"fields": {"datasets": datasets}})

    def provide_tessera() -> Tessera:
        return tessera

    app = Litestar(
        route_handlers=[
            *CONTROLLERS,
            MapController,
            PreviewController,
            SimilarityController,
            SelectionController,
            GroupController,
            *PAGE_HANDLERS,
            login,
            *route_handlers,
        ],
        dependencies={
            "tessera": Provide(provide_tessera, sync_to_thread=False),
            "live": Provide(provide_live, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[access_log_middleware, auth_middleware_factory(settings)],
        on_startup=[start],
        on_shutdown=[stop],
        openapi_config=OpenAPIConfig(
            title="Tessera",
            version=__version__,
            description="Episode datasets as density maps, and training subsets picked from them.",
            path="/api/schema",
            render_plugins=[SwaggerRenderPlugin(), JsonRenderPlugin()],
            use_handler_docstrings=True,
        ),
        request_max_body_size=MAX_JSON_BYTES,
    )
    app.state.tessera = tessera
    document_errors(app)
    return app
