"""Mailbox names at the storage API: Unicode, ``/``-separated, INBOX case-insensitive."""

from __future__ import annotations

from mailserver.storage.api import SEPARATOR
from mailserver.storage.errors import ErrorKind, StorageError


def normalize(name: str) -> str:
    """``inbox`` and ``Inbox/x`` become ``INBOX`` and ``INBOX/x``; nothing else changes."""
    first, sep, rest = name.partition(SEPARATOR)
    if first.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def validate(name: str, max_length: int, max_depth: int) -> str:
    """The normalised name, or StorageError INVALID/LIMIT saying what is wrong."""
    if not name:
        raise StorageError(ErrorKind.INVALID, "empty mailbox name")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise StorageError(ErrorKind.INVALID, "control character in mailbox name")
    parts = name.split(SEPARATOR)
    if any(p == "" for p in parts):
        raise StorageError(ErrorKind.INVALID, f"empty hierarchy level in mailbox name {name!r}")
    if any(p in (".", "..") for p in parts):
        raise StorageError(ErrorKind.INVALID, f"mailbox name {name!r} has a '.' or '..' level")
    if len(name.encode("utf-8")) > max_length:
        raise StorageError(ErrorKind.LIMIT, f"mailbox name longer than {max_length} bytes")
    if len(parts) > max_depth:
        raise StorageError(ErrorKind.LIMIT, f"mailbox name deeper than {max_depth} levels")
    return normalize(name)


def parents(name: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


def is_child(name: str, parent: str) -> bool:
    return name.startswith(parent + SEPARATOR)
