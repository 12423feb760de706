"""The dictionary's rules shared by every driver, so all of them accept and refuse the same
transactions: key, prefix and value checks, the split of a transaction into its ``priv/`` and
``shared/`` halves, and how a transaction's sets and increments combine into new values.

Drivers validate a whole transaction with ``split`` before reading or writing anything, then
compute each half's new values with ``apply`` from the current values they read.
"""

from __future__ import annotations

import re

from mailserver.storage.drivers import (DICT_MAX_VALUE, DICT_PRIVATE, DICT_SHARED, check_dict_key)
from mailserver.storage.errors import ErrorKind, StorageError

SPACES = (DICT_PRIVATE, DICT_SHARED)       # the fixed order halves are locked and written in
_COUNTER = re.compile(r"-?[0-9]+")         # int() would also take " 5", "+5", "5_0", "٥"


def space(key: str) -> str:
    """``priv/`` or ``shared/``: which half a (valid) key belongs to."""
    return DICT_PRIVATE if key.startswith(DICT_PRIVATE) else DICT_SHARED


def check_prefix(prefix: str) -> str:
    """``prefix`` if it can be iterated (``priv/``, ``shared/`` or a key path ending in ``/``),
    else StorageError(INVALID)."""
    if isinstance(prefix, str) and prefix in SPACES:
        return prefix
    if not isinstance(prefix, str) or not prefix.endswith("/"):
        raise StorageError(ErrorKind.INVALID, f"dict prefix {prefix!r} must end with /")
    check_dict_key(prefix[:-1])
    return prefix


def check_value(key: str, value) -> None:
    """INVALID unless ``value`` is None (unset) or a string without NUL; LIMIT when it is
    larger than DICT_MAX_VALUE bytes of UTF-8."""
    if value is None:
        return
    if not isinstance(value, str) or "\0" in value:
        raise StorageError(ErrorKind.INVALID, f"dict value of {key!r} must be a string without NUL")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:          # a lone surrogate cannot be stored as UTF-8
        raise StorageError(ErrorKind.INVALID, f"dict value of {key!r} is not valid Unicode") from None
    if size > DICT_MAX_VALUE:
        raise StorageError(ErrorKind.LIMIT, f"dict value of {key!r} is larger than {DICT_MAX_VALUE} bytes")


def split(sets, increments) -> dict[str, tuple[dict, dict]]:
    """Validate a whole transaction (keys, values, increment amounts) and split it into
    ``{space: (sets, increments)}``, only the spaces it touches, in SPACES order."""
    sets, increments = dict(sets), dict(increments)
    halves: dict[str, tuple[dict, dict]] = {}
    for key, value in sets.items():
        check_value(check_dict_key(key), value)
        halves.setdefault(space(key), ({}, {}))[0][key] = value
    for key, amount in increments.items():
        check_dict_key(key)
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise StorageError(ErrorKind.INVALID, f"dict increment of {key!r} must be an integer")
        halves.setdefault(space(key), ({}, {}))[1][key] = amount
    return {s: halves[s] for s in SPACES if s in halves}


def is_counter(value: str) -> bool:
    """Is ``value`` a decimal integer ("" -- a missing key's stand-in -- counts as one)?"""
    return value == "" or _COUNTER.fullmatch(value) is not None


def counter(key: str, value: str | None) -> int:
    """A counter's current value (missing: 0); INVALID if it is not a decimal integer."""
    if value is None:
        return 0
    if not _COUNTER.fullmatch(value):
        raise StorageError(ErrorKind.INVALID, f"dict key {key!r} is not a counter: {value[:40]!r}")
    return int(value)


def apply(current: dict, sets: dict, increments: dict) -> dict[str, str | None]:
    """New value (None: removed) of every key the transaction touches.  ``current``: the
    present values of (at least) the incremented keys, a missing key absent.  Sets come first,
    then increments, as the Dict interface says."""
    out: dict[str, str | None] = dict(sets)
    for key, amount in increments.items():
        base = out[key] if key in out else current.get(key)
        out[key] = str(counter(key, base) + amount)
    return out


def apply_batch(current: dict, batch: list[tuple[dict, dict]]) -> tuple[dict, list]:
    """Several transactions on one space applied in order, as if one after the other: the new
    value (None: removed) of every key they touch, and each one's outcome (None, or the
    StorageError that refused it -- a refused transaction contributes nothing).  ``current`` as
    for ``apply``, covering the incremented keys of every transaction."""
    view = dict(current)
    values: dict[str, str | None] = {}
    outcomes: list = []
    for sets, increments in batch:
        try:
            changes = apply(view, sets, increments)
        except StorageError as e:
            outcomes.append(e)
            continue
        outcomes.append(None)
        values.update(changes)
        for key, value in changes.items():
            if value is None:
                view.pop(key, None)
            else:
                view[key] = value
    return values, outcomes
