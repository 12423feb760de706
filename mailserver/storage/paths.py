"""Path-safe names derived from usernames (for directories and namespaces)."""

from __future__ import annotations

_SAFE = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@+-.")


def safe_component(name: str) -> str:
    """``name`` as one path component: bytes outside [A-Za-z0-9_@+-.] percent-encoded, and a
    leading dot encoded, so no name can be ``.``, ``..``, hidden, or contain ``/``."""
    raw = name.encode("utf-8")
    out = []
    for i, b in enumerate(raw):
        if b in _SAFE and not (i == 0 and b == 0x2E):
            out.append(chr(b))
        else:
            out.append("%%%02X" % b)
    return "".join(out) or "%00"


def check_relative(path: str) -> str:
    """A driver-relative path, refused if it is absolute or climbs out with ``..``."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad index path {path!r}")
    return path


def unsafe_component(component: str) -> str:
    """The name ``safe_component`` encoded."""
    from urllib.parse import unquote_to_bytes
    return unquote_to_bytes(component).decode("utf-8", "replace")
