"""Fixtures of the API tests; test modules load them with ``pytest_plugins``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from tessera_app.main import create_app

from tessera_gpu.settings import Settings

from .api_calls import TEST_HOSTS, Client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    root.mkdir()
    return root


@pytest.fixture
def settings(tmp_path: Path, allowed: Path) -> Settings:
    return Settings(
        device="cpu", data_dir=tmp_path / "data", allow_path=(allowed,), allowed_host=TEST_HOSTS
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with AsyncTestClient(create_app(settings)) as c:
        yield c
