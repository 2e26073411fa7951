"""Several spec files (shards) as one :class:`~.dataset.Dataset`: one map across files.

Each shard is validated on its own by :func:`~.dataset.load_dataset` (the spec's rules and the
safety checks, unchanged); then they are joined:

* rows follow the files in the order given (a glob's matches sorted, :func:`expand_paths`);
  ``Dataset.parts`` says which rows came from which file, so a preview is read from its own
  file at its own row; ``path`` is the first file's, ``file_size`` the sum;
* episode ids must be unique across shards: a collision is a 422 naming both files and the id;
* all shards have embeddings of one width D, or none has any: otherwise a 422 says which;
* every episode gains a ``source`` category field holding its file's name (the path relative to
  the files' common folder when two shards share a name). The file name wins: a shard's own
  ``metadata/source`` is kept as ``source_in_file``, so colouring by ``source`` always compares
  the files;
* a field that only some shards hold is *missing* in the other shards' rows: ``Field.missing``
  marks them, and no filter condition matches them (``ne`` and ``not_in`` included; see
  :mod:`tessera_gpu.filters`). What their ``values`` hold, for code that reads values only:

  =========  ===================================================================================
  float      NaN (numbers already treat NaN as "no value": grey on the map, a "missing" stratum)
  int        still ``int``, its values held as float64 with NaN (no int64 value can mean "none";
             pandas' nullable Int64 does the same with a mask): numbers read as NaN, JSON as int
  bool       False, with the mask; colour-by and stratify show a third value, ``missing``
  category   the label ``(missing)``, with the mask (a legend entry and a stratum of its own)
  string     ``""``;  array: zeros (or None where the shards' shapes differ)
  =========  ===================================================================================

  Kinds that differ across shards are widened: bool < int < float, and category with string is
  text (a category again up to 1,000 values). Others (text and numbers, arrays and scalars) get
  a 422 naming the field and the files.

Embeddings are copied into one float32 C-order array and hashed as one file would be (one shard
gives :func:`load_dataset`'s hash), after :func:`check_fits_in_memory`: without Dask, memory is
the limit (507). With ``load_embeddings=False`` they stay on disk for Dask workers
(:mod:`tessera_gpu.distributed`), which read them with the same checks.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from tessera_gpu.errors import (
    InsufficientStorage,
    InvalidDataset,
    InvalidRequest,
    NotFound,
    TesseraError,
)
from tessera_gpu.io.dataset import (
    MAX_CATEGORIES,
    Dataset,
    Field,
    Part,
    embeddings_hasher,
    load_dataset,
    read_embedding_rows,
)
from tessera_gpu.io.safety import Limits

__all__ = [
    "MAX_SHARDS",
    "MISSING_LABEL",
    "SOURCE_FIELD",
    "check_fits_in_memory",
    "expand_paths",
    "free_host_memory",
    "glob_files",
    "glob_root",
    "load_shards",
    "shard_labels",
]

SOURCE_FIELD = "source"
OWN_SOURCE_FIELD = "source_in_file"
MISSING_LABEL = "(missing)"
MAX_SHARDS = 1_000
#: Memory the in-process path needs besides the embeddings: a share of their size (PCA, kNN
#: blocks, device copies) plus a per-row cost (graphs, coordinates), from benchmarks/results.
HEADROOM_FACTOR = 1.5
HEADROOM_PER_ROW = 2_048
_WIDEN = {"bool": 0, "int": 1, "float": 2}
_GLOB_CHARS = frozenset("*?[")
#: Bounds on one glob's listing: folders below ``**``, and seconds.
GLOB_DEPTH = 32
GLOB_SECONDS = 5.0


# ---- paths ------------------------------------------------------------------------------------


def expand_paths(patterns: Sequence[str | Path]) -> list[Path]:
    """Paths and globs (``shards/*.h5``, ``**`` too) as a list of files: each glob's matches
    sorted, in the order the patterns come, each file once. A glob matching nothing is a 404
    (``no_match``); a plain path (or one that exists as written, ``[`` and all) is kept for
    :func:`load_shards` to check. Globs are bounded (:func:`glob_files`)."""
    out: list[Path] = []
    seen: set[str] = set()
    for pattern in patterns:
        text = os.fspath(pattern)
        if _GLOB_CHARS & set(text) and not os.path.lexists(text):  # a file named a[1].h5 is
            matches = glob_files(text, MAX_SHARDS - len(out))  # itself, not a glob
            if not matches:
                raise NotFound(f"No file matches {text}", code="no_match")
        else:
            matches = [text]
        for match in matches:
            real = os.path.realpath(match)
            if real not in seen:
                seen.add(real)
                out.append(Path(match))
    if len(out) > MAX_SHARDS:
        raise InvalidRequest(f"Too many files: {len(out):,} > {MAX_SHARDS:,} shards")
    return out


def glob_root(pattern: str) -> str:
    """The folder a glob is listed from: its path up to the first part with a wildcard."""
    return _split_glob(pattern)[1]


def _split_glob(pattern: str) -> tuple[str, str, list[str]]:
    """``(prefix, root, parts)``: the fixed path as written (joined to every match, as
    :func:`glob.glob` names them), the folder it names, and the parts after it."""
    parts = pattern.split(os.sep)
    first = next((i for i, part in enumerate(parts) if _GLOB_CHARS & set(part)), len(parts))
    prefix = os.sep.join(parts[:first])
    if not prefix and first > 0:  # an absolute pattern: "/*.h5"
        prefix = os.sep
    return prefix, prefix or ".", [p for p in parts[first:] if p]


def glob_files(pattern: str, limit: int = MAX_SHARDS) -> list[str]:
    """The files ``pattern`` matches, sorted and named as :func:`glob.glob` with
    ``recursive=True`` names them (a hidden name only by a part starting with ``.``), but
    bounded, so that no glob can hang a server: it never enters a symlinked folder (a loop, or
    a way out of the allowed directories; name such a folder in the fixed part of the path),
    ``**`` goes at most :data:`GLOB_DEPTH` folders deep (400 ``glob_too_deep``), and the
    listing stops at match ``limit + 1`` (400 ``too_many_files``) and after
    :data:`GLOB_SECONDS` seconds (400 ``glob_too_slow``)."""
    prefix, root, parts = _split_glob(pattern)
    if not parts:
        return []
    walk = _GlobWalk(pattern, parts, limit)
    walk.visit(root, 0, 0, "")
    return sorted(os.path.join(prefix, rel) for rel in walk.found)


class _GlobWalk:
    """One bounded walk of a glob's parts below its root (see :func:`glob_files`)."""

    def __init__(self, pattern: str, parts: list[str], limit: int) -> None:
        self.pattern, self.limit = pattern, limit
        self.parts = [None if p == "**" else re.compile(fnmatch.translate(p)) for p in parts]
        self.hidden = [p.startswith(".") for p in parts]
        self.found: set[str] = set()
        self.seen: set[tuple[str, int]] = set()
        self.deadline = time.monotonic() + GLOB_SECONDS
        self.entries = 0

    def visit(self, folder: str, rel_depth: int, k: int, rel: str) -> None:
        """Match parts ``k:`` below ``folder`` (``rel`` is its path below the root)."""
        if (rel, k) in self.seen:
            return
        self.seen.add((rel, k))
        last = k == len(self.parts) - 1
        part = self.parts[k]
        if part is None and not last:  # "**": zero folders here, or one more level down
            self.visit(folder, rel_depth, k + 1, rel)
        for entry in self._entries(folder):
            name = entry.name
            if name.startswith(".") and not self.hidden[k]:
                continue
            child = os.path.join(rel, name) if rel else name
            if part is None:
                if _is_dir(entry):
                    if rel_depth >= GLOB_DEPTH:
                        raise InvalidRequest(
                            f"The glob {self.pattern} goes more than {GLOB_DEPTH} folders deep "
                            "under **: name a deeper folder in its fixed part",
                            code="glob_too_deep",
                        )
                    self.visit(entry.path, rel_depth + 1, k, child)
                elif last and entry.is_file():
                    self._add(child)
            elif part.match(name):
                if last:
                    if entry.is_file():  # a symlinked file counts (its target is checked)
                        self._add(child)
                elif _is_dir(entry):
                    self.visit(entry.path, rel_depth, k + 1, child)

    def _entries(self, folder: str) -> Iterator[os.DirEntry[str]]:
        """The folder's entries as they are listed (a walk that must stop, stops at once)."""
        try:
            listing = os.scandir(folder)
        except OSError:  # unreadable or vanished: as glob does, nothing here
            return
        with listing:
            for entry in listing:
                self.entries += 1
                if self.entries % 512 == 0 and time.monotonic() > self.deadline:
                    raise InvalidRequest(
                        f"The glob {self.pattern} took more than {GLOB_SECONDS:g} s to list "
                        f"({self.entries:,} entries so far): name a narrower folder",
                        code="glob_too_slow",
                    )
                yield entry

    def _add(self, rel: str) -> None:
        self.found.add(rel)
        if len(self.found) > self.limit:
            raise InvalidRequest(
                f"Too many files: {self.pattern} matches more than {self.limit:,} "
                f"(at most {MAX_SHARDS:,} shards)",
                code="too_many_files",
            )


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """A folder that is not a symlink: a glob never enters one."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def shard_labels(paths: Sequence[Path]) -> list[str]:
    """Each file's name, or its path below the files' common folder where names repeat."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    real = [os.path.realpath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(r) for r in real])
    return [os.path.relpath(r, root) for r in real]


# ---- memory -----------------------------------------------------------------------------------


def free_host_memory() -> int:
    """Bytes of host memory free for this process: MemAvailable, capped by a cgroup's limit."""
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(int(free), 0)


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


def check_fits_in_memory(
    n: int, d: int, *, device_free_bytes: int | None = None, host_free_bytes: int | None = None
) -> None:
    """507 unless ``n x d`` float32 embeddings fit, with headroom, in free host memory and (when
    ``device_free_bytes`` is given) in free GPU memory. The message names the size, the free
    memory and ``--dask`` as the way out. ``host_free_bytes`` defaults to
    :func:`free_host_memory`."""
    size = 4 * n * d
    need = int(HEADROOM_FACTOR * size + HEADROOM_PER_ROW * n)
    host = free_host_memory() if host_free_bytes is None else host_free_bytes
    for where, free in (("host", host), ("GPU", device_free_bytes)):
        if free is not None and need > free:
            raise InsufficientStorage(
                f"Embeddings of {n:,} x {d:,} ({_gb(size)}) need about {_gb(need)} of {where} "
                f"memory with headroom, but only {_gb(free)} is free. Start Tessera with "
                "--dask ADDRESS (or TESSERA_DASK) to spread them over a Dask cluster",
                code="insufficient_memory",
            )


# ---- joining ----------------------------------------------------------------------------------


def load_shards(
    paths: Sequence[str | Path],
    *,
    name: str | None = None,
    limits: Limits | None = None,
    load_embeddings: bool = True,
    max_episodes: int | None = None,
    check_memory: Callable[[int, int], None] = check_fits_in_memory,
) -> Dataset:
    """Validate every file and join them into one :class:`Dataset` (see the module docstring).

    ``paths`` may hold globs; a file named twice is read once. ``max_episodes`` caps the
    total (422 ``too_many_episodes``); ``check_memory(n, d)`` refuses embeddings that cannot
    fit before they are read (default: :func:`check_fits_in_memory` on host memory). Raises
    :class:`~tessera_gpu.errors.InvalidDataset` (422) naming the files on a clash, and
    :class:`~tessera_gpu.errors.InsufficientStorage` (507) when the embeddings cannot fit.
    """
    files = expand_paths(paths)
    if not files:
        raise InvalidRequest("No files given: a dataset needs at least one")
    labels = shard_labels(files)
    limits = limits or Limits()
    shards = _load_each(files, labels, limits, max_episodes)
    starts = np.cumsum([0, *(s.n_episodes for s in shards)])
    dim = _common_dim(shards, labels)
    parts = tuple(
        Part(f, int(a), int(b), dim, s.has_thumbnails, s.has_gifs)
        for f, s, a, b in zip(files, shards, starts[:-1], starts[1:], strict=True)
    )
    embeddings, digest = None, None
    if dim is not None and load_embeddings:
        embeddings, digest = _read_embeddings(parts, labels, limits, check_memory)
    return Dataset(
        path=files[0],
        name=name or (files[0].stem if len(files) == 1 else f"{files[0].stem} +{len(files) - 1}"),
        episode_ids=_joined_ids(shards, labels, starts),
        resident=embeddings,
        embeddings_hash=digest,
        fields=_joined_fields(shards, labels, starts),
        has_thumbnails=any(s.has_thumbnails for s in shards),
        has_gifs=any(s.has_gifs for s in shards),
        file_size=sum(s.file_size for s in shards),
        parts=parts,
    )


def _named(label: str, exc: TesseraError, several: bool) -> TesseraError:
    """The same error with the shard's name in front (when there is more than one shard)."""
    if not several:
        return exc
    return type(exc)(f"{label}: {exc.message}", code=exc.code)


def _load_each(
    files: list[Path], labels: list[str], limits: Limits, max_episodes: int | None
) -> list[Dataset]:
    shards: list[Dataset] = []
    total = 0
    for path, label in zip(files, labels, strict=True):
        try:
            shard = load_dataset(path, limits=limits, read_embeddings=False)
        except TesseraError as exc:
            raise _named(label, exc, len(files) > 1) from None
        total += shard.n_episodes
        if max_episodes is not None and total > max_episodes:
            raise InvalidDataset(
                f"Too many episodes: more than {max_episodes:,} in the first {len(shards) + 1} "
                f"of {len(files)} shards (the limit is a setting: --max-episodes-dask)",
                code="too_many_episodes",
            )
        shards.append(shard)
    return shards


def _listing(labels: list[str], limit: int = 5) -> str:
    shown = ", ".join(labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def _common_dim(shards: list[Dataset], labels: list[str]) -> int | None:
    """The shards' one embedding width, or None when none has embeddings; else a 422."""
    dims = [s.dim for s in shards]
    with_emb = [lab for lab, d in zip(labels, dims, strict=True) if d is not None]
    if with_emb and len(with_emb) < len(shards):
        without = [lab for lab, d in zip(labels, dims, strict=True) if d is None]
        raise InvalidDataset(
            "Shards must all have embeddings or all be metadata-only: "
            f"{_listing(with_emb)} {'has' if len(with_emb) == 1 else 'have'} embeddings, "
            f"{_listing(without)} {'has' if len(without) == 1 else 'have'} none",
            code="mixed_embeddings",
        )
    distinct = sorted({d for d in dims if d is not None})
    if len(distinct) > 1:
        groups = [
            f"D={d:,} in {_listing([lab for lab, e in zip(labels, dims, strict=True) if e == d])}"
            for d in distinct
        ]
        raise InvalidDataset(
            f"Shards must have the same embedding dimension: {'; '.join(groups)}",
            code="dim_mismatch",
        )
    return distinct[0] if distinct else None


def _joined_ids(shards: list[Dataset], labels: list[str], starts: np.ndarray) -> np.ndarray:
    """All episode ids; a 422 naming both files when one id is in two shards."""
    ids = np.concatenate([s.episode_ids for s in shards])
    dup = np.ones(len(ids), dtype=bool)
    dup[np.unique(ids, return_index=True)[1]] = False  # each id's first row is not a duplicate
    if dup.any():
        second = int(np.argmax(dup))
        first = int(np.flatnonzero(ids == ids[second])[0])
        a, b = (int(np.searchsorted(starts, r, side="right")) - 1 for r in (first, second))
        raise InvalidDataset(
            f"episode_ids must be unique across shards: {ids[second]!r} is in both {labels[a]} "
            f"(row {first - starts[a]}) and {labels[b]} (row {second - starts[b]})",
            code="duplicate_episode_ids",
        )
    return ids


def _read_embeddings(
    parts: tuple[Part, ...],
    labels: list[str],
    limits: Limits,
    check_memory: Callable[[int, int], None],
) -> tuple[np.ndarray, str]:
    """Every shard's embeddings, checked again as they are read, into one array; its hash."""
    n, dim = parts[-1].stop, parts[0].dim
    assert dim is not None
    check_memory(n, dim)
    out = np.empty((n, dim), dtype=np.float32)
    hasher = embeddings_hasher(n, dim)  # as load_dataset hashes one file
    for part, label in zip(parts, labels, strict=True):
        try:
            read_embedding_rows(
                part.path, limits=limits, shape=(part.n_rows, dim),
                out=out[part.start : part.stop], hasher=hasher,
            )  # fmt: skip
        except TesseraError as exc:
            raise _named(label, exc, len(parts) > 1) from None
    return out, hasher.hexdigest()


# ---- fields -----------------------------------------------------------------------------------


def _joined_fields(
    shards: list[Dataset], labels: list[str], starts: np.ndarray
) -> dict[str, Field]:
    """``source`` first, then every shard's fields in order of first appearance, joined."""
    n = int(starts[-1])
    codes = np.repeat(np.arange(len(shards), dtype=np.int32), np.diff(starts))
    fields = {SOURCE_FIELD: Field(SOURCE_FIELD, "category", codes, tuple(labels))}
    names = list(dict.fromkeys(k for s in shards for k in s.fields))
    for key in names:
        out_name = _free_name(OWN_SOURCE_FIELD, names) if key == SOURCE_FIELD else key
        pieces = [s.fields.get(key) for s in shards]
        fields[out_name] = _join_field(out_name, key, pieces, labels, starts, n)
    return fields


def _free_name(wanted: str, taken: list[str]) -> str:
    name, i = wanted, 1
    while name in taken:
        i += 1
        name = f"{wanted}_{i}"
    return name


def _missing_mask(pieces: list[Field | None], starts: np.ndarray, n: int) -> np.ndarray | None:
    if all(p is not None for p in pieces):
        return None
    mask = np.zeros(n, dtype=bool)
    for i, p in enumerate(pieces):
        if p is None:
            mask[starts[i] : starts[i + 1]] = True
    return mask


def _join_field(
    name: str,
    key: str,
    pieces: list[Field | None],
    labels: list[str],
    starts: np.ndarray,
    n: int,
) -> Field:
    kinds: set[str] = {p.kind for p in pieces if p is not None}
    missing = _missing_mask(pieces, starts, n)
    if kinds <= set(_WIDEN):
        return _numeric(name, pieces, kinds, starts, n, missing)
    if kinds <= {"category", "string"}:
        return _text(name, pieces, starts, n, missing)
    if kinds == {"array"}:
        return _array(name, pieces, starts, n, missing)
    found = [f"{p.kind} in {lab}" for p, lab in zip(pieces, labels, strict=True) if p is not None]
    raise InvalidDataset(
        f"metadata/{key} has different kinds across shards: {_listing(found, 4)}",
        code="field_kind_mismatch",
    )


def _numeric(
    name: str,
    pieces: list[Field | None],
    kinds: set[str],
    starts: np.ndarray,
    n: int,
    missing: np.ndarray | None,
) -> Field:
    kind = max(kinds, key=_WIDEN.__getitem__)
    nan = kind == "float" or (kind == "int" and missing is not None)
    dtype = np.float64 if nan else {"bool": np.bool_, "int": np.int64}[kind]
    values: np.ndarray = np.full(n, np.nan if nan else 0, dtype=dtype)
    for i, p in enumerate(pieces):
        if p is not None:
            values[starts[i] : starts[i + 1]] = p.values
    return Field(name, kind, values, missing=missing)  # type: ignore[arg-type]


def _text(
    name: str, pieces: list[Field | None], starts: np.ndarray, n: int, missing: np.ndarray | None
) -> Field:
    """Categories and free text joined: a category while there are at most 1,000 values."""
    uniques: set[str] = set()
    for p in pieces:
        if p is not None:
            uniques.update(p.categories if p.kind == "category" else set(p.values.tolist()))
    if missing is not None:
        uniques.add(MISSING_LABEL)
    if len(uniques) <= MAX_CATEGORIES:
        categories = sorted(uniques)
        index = {c: i for i, c in enumerate(categories)}
        codes = np.full(n, index.get(MISSING_LABEL, 0), dtype=np.int32)
        for i, p in enumerate(pieces):
            if p is None:
                continue
            if p.kind == "category":
                remap = np.array([index[c] for c in p.categories], dtype=np.int32)
                codes[starts[i] : starts[i + 1]] = remap[p.values]
            else:
                codes[starts[i] : starts[i + 1]] = [index[v] for v in p.values.tolist()]
        return Field(name, "category", codes, tuple(categories), missing=missing)
    text = np.full(n, "", dtype=object)
    for i, p in enumerate(pieces):
        if p is not None:
            own = np.asarray(p.categories, dtype=object)
            text[starts[i] : starts[i + 1]] = own[p.values] if p.kind == "category" else p.values
    return Field(name, "string", text, missing=missing)


def _array(
    name: str, pieces: list[Field | None], starts: np.ndarray, n: int, missing: np.ndarray | None
) -> Field:
    present = [p.values for p in pieces if p is not None]
    shapes = {v.shape[1:] for v in present}
    if len(shapes) == 1 and all(v.dtype != object for v in present):
        dtype = np.result_type(*present)
        values = np.zeros((n, *shapes.pop()), dtype=dtype)
    else:
        values = np.empty(n, dtype=object)  # per-row arrays of differing shapes
    for i, p in enumerate(pieces):
        if p is None:
            continue
        if values.dtype != object:
            values[starts[i] : starts[i + 1]] = p.values
            continue
        for j, row in enumerate(p.values):
            values[starts[i] + j] = row
    return Field(name, "array", values, missing=missing)
