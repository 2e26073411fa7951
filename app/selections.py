"""Named selections: make one (from a filter, ids, a sample, the near-duplicate keepers, or a
set operation), list, read, delete and export them."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Response, delete, get, post
from litestar.params import Body, PathParameter, QueryParameter

from tessera_gpu.selections import MAX_NAME, Selection, SelectionRequest

from .params import JsonBody, LiveDep, TesseraDep

__all__ = [
    "ExportBy",
    "ExportComplement",
    "ExportFormat",
    "ExportTau",
    "SelectionController",
    "download",
]

SelectionName = Annotated[str, PathParameter(description="The selection's name.",
                                             max_length=MAX_NAME * 4)]  # fmt: skip
ExportFormat = Annotated[
    Literal["txt", "csv", "json", "lerobot", "weights"],
    QueryParameter(
        name="format",
        description="txt: an id a line; csv: ids and metadata; json: the record; lerobot: "
        '{"episodes": [...]} (or one list per dataset); weights: episode_id,weight by field '
        "`by` with exponent `tau`.",
    ),
]
ExportBy = Annotated[
    str | None,
    QueryParameter(description="weights: the field whose groups are balanced.", max_length=256),
]
ExportTau = Annotated[
    float | None,
    QueryParameter(description="weights: 1 keeps the natural mix, 0 makes the groups equal."),
]
ExportComplement = Annotated[
    bool,
    QueryParameter(
        description="Export the dataset's episodes NOT in the set instead (the ones to drop, "
        "e.g. for lerobot-edit-dataset --operation.type delete_episodes); not with json.",
    ),
]
SELECTION_DOC = (
    '{"name": ..., and one of: "filter": [...] | "episode_ids": [...] | "sample_id": ... | '
    '"duplicates": {"threshold": 0.05, "filter": [...]} (the keepers) | "op": "union"|'
    '"intersect"|"difference", "of": [name, ...]}'
)


def download(content: bytes, media_type: str, filename: str) -> Response[bytes]:
    """A file download (Litestar adds the charset to text types itself)."""
    return Response(
        content,
        media_type=media_type.split(";")[0],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


class SelectionController(Controller):
    """Named, persisted sets of episodes of a dataset."""

    path = "/api/datasets/{dataset_id:str}/selections"
    tags = ("selections",)

    @post("/", operation_id="createSelection", summary="Make a named selection", status_code=201,
          sync_to_thread=True, dto=JsonBody[SelectionRequest], return_dto=None)  # fmt: skip
    def create(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        data: Annotated[SelectionRequest, Body(description=SELECTION_DOC)],
    ) -> Selection:
        """Keep a set of episodes under a name (1 to 100 characters, no '/'); its ids are
        stored, not its filter. 409 when the name is taken; 400 naming unknown selections in
        an operation, or for a difference of fewer than two."""
        return tessera.curation.create_selection(live, data)

    @get("/", operation_id="listSelections", summary="List selections", sync_to_thread=True)
    def list_selections(self, tessera: TesseraDep, live: LiveDep) -> list[Selection]:
        """Every selection of the dataset, oldest first, with its size and provenance."""
        return tessera.curation.selections(live)

    @get("/{name:str}", operation_id="getSelection", summary="One selection",
         sync_to_thread=True)  # fmt: skip
    def get_selection(self, tessera: TesseraDep, live: LiveDep, name: SelectionName) -> Selection:
        """The selection's size, creation time and provenance."""
        return tessera.curation.selection(live, name)

    @delete("/{name:str}", operation_id="deleteSelection", summary="Delete a selection",
            sync_to_thread=True)  # fmt: skip
    def delete_selection(self, tessera: TesseraDep, live: LiveDep, name: SelectionName) -> None:
        """Forget the selection (filters that name it then answer 400)."""
        tessera.curation.delete_selection(live, name)

    @get("/{name:str}/export", operation_id="exportSelection", summary="Download a selection",
         sync_to_thread=True, media_type="text/plain")  # fmt: skip
    def export(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        name: SelectionName,
        format: ExportFormat = "txt",
        by: ExportBy = None,
        tau: ExportTau = None,
        complement: ExportComplement = False,
    ) -> Response[bytes]:
        """The selection as a file download: txt, csv, json, lerobot or weights; with
        ``complement``, the dataset's other episodes (409 when a LeRobot list would be
        empty)."""
        content, media_type, filename = tessera.curation.export_selection(
            live, name, format, by=by, tau=tau, complement=complement
        )
        return download(content, media_type, filename)
