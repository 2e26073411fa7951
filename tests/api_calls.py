"""Small functions shared by the API tests: requests, expected bodies, polling."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import anyio
import msgspec
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tessera_gpu import load_dataset

JSON = "application/json"
#: The Host that Litestar's test client sends; the app answers only to hosts it is told of.
TEST_HOSTS = ("testserver.local",)
Client = AsyncTestClient[Litestar]


def dataset_id_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def error(message: str, code: str, status: int) -> dict[str, Any]:
    return {"error": message, "code": code, "status": status}


async def upload(client: Client, path: Path, name: str | None = None) -> Any:
    files = {"file": (name or path.name, path.read_bytes(), "application/x-hdf5")}
    return await client.post("/api/datasets", files=files)


async def add(client: Client, path: Path) -> str:
    """Register a file as ``tessera serve FILE`` does (no HTTP, no validating child): fast."""
    catalog = client.app.state.tessera
    live = await anyio.to_thread.run_sync(lambda: catalog.register_path(path, check_allowed=False))
    return str(live.entry.id)


async def register(client: Client, path: Path) -> str:
    """Register a file over HTTP, by path."""
    r = await client.post("/api/datasets", json={"path": str(path)})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


#: Fields a finished similarity job adds (it runs beside the request: may or may not be done).
DERIVED = ("uniqueness", "duplicate_group")


def without_derived(body: dict[str, Any]) -> dict[str, Any]:
    """A dataset summary without the fields the similarity job adds when it finishes."""
    return {**body, "fields": [f for f in body["fields"] if f["name"] not in DERIVED]}


def expected_summary(path: Path, body: dict[str, Any], source: str) -> dict[str, Any]:
    ds = load_dataset(path, name=body["name"])
    return {
        "id": dataset_id_of(path),
        **msgspec.to_builtins(ds.summary()),
        "source": source,
        "added_at": body["added_at"],
        "projection": body["projection"],
    }


async def wait_for_projection(client: Client, dataset_id: str, timeout: float = 180) -> Any:
    with anyio.fail_after(timeout):
        while True:
            r = await client.get(f"/api/datasets/{dataset_id}/projection")
            if r.json()["status"] in ("done", "failed"):
                return r
            await anyio.sleep(0.05)


def uploads_dir(client: Client) -> list[str]:
    """The files in the uploads folder (made by the first upload)."""
    folder = client.app.state.tessera.data.uploads_dir
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
