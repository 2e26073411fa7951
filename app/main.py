"""The Tessera web app: ``create_app(settings)`` builds it; ``tessera serve`` runs it.

At start-up the app sweeps stale temporary files, reloads every dataset in the data
directory, registers the files it was given, and starts the projection worker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin

from tessera_gpu import __version__
from tessera_gpu.backends import get_backend
from tessera_gpu.settings import Settings

from .access_log import access_log_middleware
from .auth import auth_middleware_factory, login
from .catalog import Catalog
from .controllers import (
    MAX_JSON_BYTES,
    DatasetController,
    EpisodeController,
    HealthController,
    ProjectionController,
    SampleController,
)
from .error_handlers import EXCEPTION_HANDLERS
from .maps import MapController, PreviewController
from .openapi_docs import document_errors
from .page import PAGE_HANDLERS

__all__ = ["CONTROLLERS", "create_app"]

log = logging.getLogger("tessera.app")

CONTROLLERS: Sequence[type] = (
    HealthController,
    DatasetController,
    ProjectionController,
    EpisodeController,
    SampleController,
)


def create_app(
    settings: Settings | None = None,
    *,
    files: Iterable[str | Path] = (),
    backend: Any = None,
    route_handlers: Sequence[Any] = (),
) -> Litestar:
    """The app for ``settings`` (default: from the environment); ``files`` are registered by
    path at start. ``backend`` overrides ``get_backend(settings.device)``;
    ``route_handlers`` adds handlers (e.g. the page) next to the API."""
    settings = settings or Settings.load()
    catalog = Catalog(settings, backend or get_backend(settings.device))
    paths = [Path(f) for f in files]

    async def start() -> None:
        await anyio.to_thread.run_sync(catalog.open, paths)

    async def stop() -> None:
        await anyio.to_thread.run_sync(catalog.close)
        log.info("shutdown", extra={"fields": {"datasets": len(catalog.all())}})

    def provide_catalog() -> Catalog:
        return catalog

    app = Litestar(
        route_handlers=[
            *CONTROLLERS,
            MapController,
            PreviewController,
            *PAGE_HANDLERS,
            login,
            *route_handlers,
        ],
        dependencies={"catalog": Provide(provide_catalog, sync_to_thread=False)},
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
    app.state.catalog = catalog
    document_errors(app)
    return app
