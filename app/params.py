"""The parameter types every controller shares, the one dependency that resolves a dataset,
and the one way a JSON body is read.

A handler that names ``live: LiveDep`` gets the loaded dataset of its path's ``dataset_id``
(404 ``dataset_not_found`` before the handler runs). A handler with a JSON body declares it as
a msgspec Struct and ``dto=JsonBody[ThatStruct]``: :func:`decode_body` reads it, strictly, into
the Struct the core takes, and the OpenAPI schema describes it from the Struct.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
from litestar.di import NamedDependency
from litestar.dto import AbstractDTO, DTOFieldDefinition
from litestar.openapi.spec import Reference, Schema
from litestar.params import PathParameter, QueryParameter
from litestar.typing import FieldDefinition

from tessera_gpu.core import Live, Tessera
from tessera_gpu.errors import InvalidRequest

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator

__all__ = [
    "ColorByParam",
    "DatasetId",
    "EpisodeIndex",
    "FilterParam",
    "JsonBody",
    "LiveDep",
    "TesseraDep",
    "body_or_empty",
    "decode_body",
    "provide_live",
]

TesseraDep = NamedDependency[Tessera]
LiveDep = NamedDependency[Live]
RequestT = TypeVar("RequestT", bound=msgspec.Struct)

DatasetId = Annotated[
    str,
    PathParameter(description="The dataset's id (from its files' content hash).", max_length=64),
]
EpisodeIndex = Annotated[int, PathParameter(ge=0, description="Row of the episode, from 0.")]
FilterParam = Annotated[
    str | None,
    QueryParameter(
        name="filter",
        description='URL-encoded JSON list of conditions, e.g. [{"field":"task","op":"eq",'
        '"value":"pick"}]; the same filters as POST .../count, including map "within".',
        max_length=200_000,
    ),
]
ColorByParam = Annotated[
    str | None,
    QueryParameter(
        description="density (default), a category or bool field (one glasbey colour per "
        "value), or a number field (its mean per pixel on viridis, from its blue up).",
        max_length=256,
    ),
]


def provide_live(tessera: TesseraDep, dataset_id: DatasetId) -> Live:
    """The loaded dataset of the path's ``dataset_id``."""
    return tessera.registry.get(dataset_id)


def decode_body(body: bytes, request_type: type[RequestT]) -> RequestT:
    """The one way a JSON body becomes a request: ``request_type`` (a Struct that forbids
    unknown fields) from ``body``; no body (or ``null``) is ``{}``, every field's default.

    A mistake is a 400 ``invalid_request`` in words: ``unknown key 'k' in sample request;
    keys: ...``, ``sample request is missing 'n'``, or the field's own rule from the
    Struct's ``rules`` (``{value!r}`` filled with what was sent). Checks beyond the types are
    the Struct's ``__post_init__``, which raises its own :class:`InvalidRequest`."""
    if body.strip() in (b"", b"null"):
        body = b"{}"
    try:
        return msgspec.json.decode(body, type=request_type)
    except msgspec.DecodeError as exc:
        if isinstance(exc, msgspec.ValidationError):
            raise InvalidRequest(_problem(str(exc), body, request_type)) from None
        raise InvalidRequest(f"Invalid JSON body: {exc}") from None


def _problem(error: str, body: bytes, request_type: type[msgspec.Struct]) -> str:
    what = re.sub(r"(?<!^)(?=[A-Z])", " ", request_type.__name__).lower()
    if (unknown := _UNKNOWN.match(error)) is not None:
        keys = ", ".join(sorted(request_type.__struct_fields__))
        return f"unknown key {unknown[1]!r} in {what}; keys: {keys}"
    if (missing := _MISSING.match(error)) is not None:
        return f"{what} is missing {missing[1]!r}"
    if " - at `$" not in error:  # the body itself has the wrong type
        return f"a {what} must be a JSON object"
    at = _AT_FIELD.search(error)
    rule = getattr(request_type, "rules", {}).get(at[1]) if at is not None else None
    if at is None or rule is None:
        return f"{what}: {error}"
    return str(rule).format(value=msgspec.json.decode(body).get(at[1]))


def body_or_empty(data: RequestT | None, request_type: type[RequestT]) -> RequestT:
    """The decoded body, or what no body means (Litestar hands a handler None for it)."""
    return data if data is not None else decode_body(b"", request_type)


_UNKNOWN = re.compile(r"Object contains unknown field `(.*)`$")
_MISSING = re.compile(r"Object missing required field `(.*)`$")
_AT_FIELD = re.compile(r" - at `\$\.(\w+)")


class JsonBody(AbstractDTO[RequestT]):
    """A handler's JSON body (``dto=JsonBody[SampleRequest]``): read by :func:`decode_body`
    and documented from the Struct. A Litestar DTO only because that is where Litestar lets
    an app decode a body itself: its own decoding converts loosely (``"1"`` to ``1``)."""

    def decode_bytes(self, value: bytes) -> Any:
        return decode_body(value, self.model_type)

    @classmethod
    def create_for_field_definition(
        cls, field_definition: FieldDefinition, handler_id: str, backend_cls: Any = None
    ) -> None:
        """Nothing to build: :meth:`decode_bytes` needs no transfer model."""

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: SchemaCreator
    ) -> Reference | Schema:
        kwargs = field_definition.kwarg_definition
        return schema_creator.for_field_definition(
            FieldDefinition.from_annotation(cls.model_type, kwarg_definition=kwargs)
        )

    @classmethod
    def generate_field_definitions(cls, model_type: type[Any]) -> Generator[DTOFieldDefinition]:
        yield from ()

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        return False
