"""The one rule for text that names things: dataset names, selection names and episode ids.

Such text is shown on the page, written into exports line by line and stored in the catalog,
so no character of it may be invisible, reorder the text around it, or end a line:

* no control characters (Unicode ``Cc``: NUL, tab, CR, LF, the C1 controls);
* no format characters (``Cf``: bidi overrides such as U+202E, zero-width characters);
* no line or paragraph separators (``Zl``, ``Zp``: U+2028, U+2029) and no lone surrogates.

Spaces, accents and any script are fine. Names (datasets, selections) are also non-blank and
bounded; episode ids are checked in :mod:`tessera_gpu.io.dataset` and
:func:`tessera_gpu.io.writer.write_dataset` with the same rule.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

from tessera_gpu.errors import InvalidRequest

__all__ = [
    "MAX_DATASET_NAME",
    "REFUSED_CATEGORIES",
    "check_dataset_name",
    "check_name",
    "describe",
    "first_unprintable",
    "unprintable_char",
    "unprintable_id",
    "without_unprintable",
]

REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
MAX_DATASET_NAME = 200


def check_dataset_name(name: Any) -> str:
    """A dataset's display name (``--join NAME``, ``{"paths", "name"}``): the rule, 1 to 200
    characters."""
    return check_name(name, "dataset", max_length=MAX_DATASET_NAME)


def without_unprintable(text: str) -> str:
    """``text`` with the characters the rule refuses taken out (a name made from a client's
    file name, which the client did not choose for Tessera)."""
    if text.isprintable():
        return text
    return "".join(ch for ch in text if unicodedata.category(ch) not in REFUSED_CATEGORIES)


def unprintable_char(text: str) -> str | None:
    """The first character of ``text`` the rule refuses, or None."""
    if text.isprintable():  # C speed; false for every refused category (and a few allowed)
        return None
    for ch in text:
        if unicodedata.category(ch) in REFUSED_CATEGORIES:
            return ch
    return None


def first_unprintable(texts: Sequence[str]) -> tuple[int, str] | None:
    """The first row of ``texts`` holding a refused character, with that character."""
    if "".join(texts).isprintable():  # every row printable: one C pass over all of them
        return None
    for row, text in enumerate(texts):
        if not text.isprintable():
            ch = unprintable_char(text)
            if ch is not None:
                return row, ch
    return None


def unprintable_id(ids: Sequence[str]) -> str | None:
    """What is wrong with the first episode id the rule refuses (the message a file's
    validation and ``write_dataset`` give), or None when every id is fine."""
    found = first_unprintable(ids)
    if found is None:
        return None
    row, ch = found
    return (
        f"episode_ids must be printable text: row {row} ({ids[row]!r}) holds {describe(ch)}, "
        "a control, format or line-break character"
    )


def describe(ch: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE)``, or ``U+000A`` for a control without a name."""
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" ({name})" if name else "")


def check_name(name: Any, what: str, *, max_length: int, forbidden: str = "") -> str:
    """``name`` when it is 1 to ``max_length`` characters of non-blank text that the rule
    allows (and holds none of ``forbidden``); else a 400 saying which character is wrong."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest(f"a {what} needs a name: a non-empty string")
    if len(name) > max_length:
        raise InvalidRequest(f"{what} names are at most {max_length} characters: got {len(name)}")
    ch = unprintable_char(name) or next((c for c in name if c in forbidden), None)
    if ch is not None:
        extra = f", {' '.join(map(repr, forbidden))}" if forbidden else ""
        raise InvalidRequest(
            f"{what} names cannot hold control, format or line-break characters{extra}: "
            f"{name!r} holds {describe(ch)}",
        )
    return name
