"""Schemathesis against the served OpenAPI schema, through the ASGI app (no network).

Every operation gets up to 15 generated requests. Checked: no 5xx (but the documented 503s of
a projection restarted by the fuzzing); a success response
matches its documented schema; an error response is Tessera's ``{"error", "code",
"status"}``. (Error responses are not checked against the schema: Litestar documents its
own validation-error shape for 400, which the app's handlers replace with Tessera's.)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402
from tessera_app.main import create_app  # noqa: E402

from tessera_gpu.settings import Settings  # noqa: E402

from .conftest import write_episode_file  # noqa: E402

ROOT = Path(tempfile.mkdtemp(prefix="tessera-fuzz-"))
APP = create_app(
    Settings(device="cpu", data_dir=ROOT / "data",
             allowed_host=("testserver", "testserver.local", "localhost"))
)  # fmt: skip
schema = schemathesis.openapi.from_asgi("/api/schema/openapi.json", APP)


@pytest.fixture(scope="module")
def dataset_id() -> str:
    """One real, projected dataset, so generated requests reach past the 404 for an unknown id
    (the app's lifespan is not run by the ASGI transport: the catalog is opened here)."""
    catalog = APP.state.tessera
    catalog.open([write_episode_file(ROOT / "fuzz.h5", n=40)])
    (live,) = catalog.registry.all()
    deadline = time.monotonic() + 30  # best effort: an unfinished map is a documented 503
    while catalog.jobs.status(live.entry.id).status not in ("done", "failed"):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    yield live.entry.id
    catalog.close()


#: 503s that are the API working as documented: fuzzing restarts the projection, and a
#: restarted projection's map is not ready; a burst of restarts fills the queue.
EXPECTED_503 = {"projection_not_ready", "queue_full"}


def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code < 500:
        return None
    body = response.json()
    assert response.status_code == 503, body
    assert body.get("code") in EXPECTED_503, body
    return True


def errors_have_one_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code < 400:
        return None
    body = response.json()
    assert set(body) == {"error", "code", "status"}, body
    assert body["status"] == response.status_code, body
    return True


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(case: Any, dataset_id: str) -> None:
    # Aim most operations at the real dataset; deleting it would leave the rest with a 404.
    if "dataset_id" in (case.path_parameters or {}) and case.operation.method.upper() != "DELETE":
        case.path_parameters["dataset_id"] = dataset_id
    case.call_and_validate(
        checks=[no_server_error, response_schema_conformance, errors_have_one_shape]
    )
