"""One request convention: every JSON body is a msgspec Struct that forbids unknown fields,
decoded at the edge by ``app/params.decode_body`` (through the ``JsonBody`` DTO), and core
services take the Struct, never the raw body.

Checked on the running app (every route with a body) and with ``ast`` over the code (nobody
else decodes a request type, and no core service takes a ``body`` or ``data``)."""

from __future__ import annotations

import ast
import tempfile
from pathlib import Path

import msgspec
import pytest
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from tessera_app.main import create_app
from tessera_app.params import JsonBody, decode_body

from tessera_gpu.core.curation import CountRequest
from tessera_gpu.errors import InvalidRequest
from tessera_gpu.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
#: Reads its request itself: a streamed multipart upload, or a small JSON body it decodes
#: with ``decode_body`` (documented by hand in ``app/openapi_docs.py``).
RAW_BODY = {"addDataset"}


@pytest.fixture(scope="module")
def app() -> Litestar:
    return create_app(Settings(device="cpu", data_dir=Path(tempfile.mkdtemp()) / "data"))


def handlers(app: Litestar) -> list[tuple[str, HTTPRouteHandler]]:
    """``(path as the schema writes it, handler)`` of every HTTP route."""
    return [(route.path_format, h) for route in app.routes
            for h in getattr(route, "route_handlers", ())
            if isinstance(h, HTTPRouteHandler)]  # fmt: skip


def test_every_body_is_a_strict_struct_read_by_decode_body(app: Litestar) -> None:
    with_body = []
    for _, handler in handlers(app):
        data = handler.parsed_fn_signature.parameters.get("data")
        if data is None:
            continue
        name = handler.operation_id
        with_body.append(name)
        dto = handler.resolve_data_dto()
        assert dto is not None, name
        assert issubclass(dto, JsonBody), name
        assert issubclass(dto.model_type, msgspec.Struct), name
        assert dto.model_type.__struct_config__.forbid_unknown_fields, name
        assert name not in RAW_BODY
    assert len(with_body) >= 8, with_body  # count, facets, samples, selections, ...


def test_the_schema_describes_each_body_from_its_struct(app: Litestar) -> None:
    schema = app.openapi_schema.to_schema()
    for path, handler in handlers(app):
        if handler.parsed_fn_signature.parameters.get("data") is None:
            continue
        model = handler.resolve_data_dto().model_type  # type: ignore[union-attr]
        body = schema["paths"][path][next(iter(handler.http_methods)).lower()]["requestBody"]
        ref = body["content"]["application/json"]["schema"]["allOf"][0]["$ref"]
        assert ref == f"#/components/schemas/{model.__name__}"
        fields = schema["components"]["schemas"][model.__name__]["properties"]
        assert set(fields) == set(model.__struct_fields__)


def test_decode_body_words_its_mistakes() -> None:
    def problem(body: bytes) -> str:
        with pytest.raises(InvalidRequest) as info:
            decode_body(body, CountRequest)
        return info.value.message

    assert decode_body(b"", CountRequest) == CountRequest()
    assert decode_body(b"null", CountRequest) == CountRequest()
    assert problem(b'{"where": []}') == (
        "unknown key 'where' in count request; keys: dedup_threshold, filter"
    )
    assert problem(b"[1, 2]") == "a count request must be a JSON object"
    assert (
        problem(b'{"filter": "task=pick"}')
        == "filter must be a list of conditions, got 'task=pick'"
    )
    assert problem(b'{"dedup_threshold": true}') == (
        "dedup_threshold must be a number in (0, 1]: got True"
    )
    assert problem(b'{"dedup_threshold": 2}') == (
        "dedup_threshold must be a cosine distance in (0, 1]: got 2.0"
    )
    assert problem(b"{not json").startswith("Invalid JSON body: ")
    # "1" is not 1: bodies are decoded strictly (Litestar's own decoding would convert it)
    assert problem(b'{"dedup_threshold": "0.1"}').startswith("dedup_threshold must be a number")


def python_files(*tops: str) -> list[Path]:
    return [p for top in tops for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts]


def request_types_decoded(tree: ast.AST) -> list[str]:
    """Names ending in ``Request`` handed to msgspec's decode or convert, or whose
    ``from_dict`` is called."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        if func.endswith(".from_dict") and func.split(".")[-2].endswith("Request"):
            found.append(func)
        if func in ("msgspec.json.decode", "msgspec.convert"):
            args = [*node.args[1:], *(k.value for k in node.keywords if k.arg == "type")]
            found += [ast.unparse(a) for a in args if ast.unparse(a).endswith("Request")]
    return found


def test_only_decode_body_decodes_a_request() -> None:
    offenders = {}
    for path in python_files("app", "tessera_gpu"):
        if path == ROOT / "app" / "params.py":
            continue
        found = request_types_decoded(ast.parse(path.read_text()))
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}


def test_core_services_take_typed_requests() -> None:
    """No public method of a core service takes a raw body (a ``body``/``data`` parameter),
    and a ``request`` parameter is a type, not ``Any`` or a dict."""
    offenders = []
    for path in python_files("tessera_gpu/core"):
        for cls in ast.walk(ast.parse(path.read_text())):
            if not isinstance(cls, ast.ClassDef):
                continue
            for fn in cls.body:
                if not isinstance(fn, ast.FunctionDef) or fn.name.startswith("_"):
                    continue
                names = {a.arg for a in [*fn.args.args, *fn.args.kwonlyargs]}
                offenders += [f"{path.name}:{cls.name}.{fn.name}({n})" for n in
                              names & {"body", "data", "raw_body"}]  # fmt: skip
                for arg in fn.args.args:
                    note = ast.unparse(arg.annotation) if arg.annotation else ""
                    if arg.arg == "request" and (note in ("", "Any") or note.startswith("dict")):
                        offenders.append(f"{path.name}:{cls.name}.{fn.name}(request: {note})")
    assert offenders == []
