"""Mailbox names on the wire: modified UTF-7 (or UTF-8 once UTF8=ACCEPT is enabled) to the
storage's Unicode names with ``/`` as separator, and LIST/LSUB pattern matching."""

from __future__ import annotations

import re
import unicodedata

from mailserver.storage.api import SEPARATOR

from . import mutf7
from .errors import no
from .response import astring

INBOX = "INBOX"


def normalize(name: str) -> str:
    """``INBOX`` is case-insensitive, also as the first level of a hierarchy (``inbox/x``)."""
    if name[:5].upper() == INBOX and (len(name) == 5 or name[5] == SEPARATOR):
        return INBOX + name[5:]
    return name


def decode(raw: bytes, utf8: bool = False) -> str:
    """The Unicode name a client sent (not yet checked for validity as a mailbox name), in
    Unicode NFC, so a name means the same mailbox whether it came as modified UTF-7 or, after
    ENABLE UTF8=ACCEPT, as UTF-8, composed or not (RFC 6855 section 3, Net-Unicode).
    Raises CommandError (NO [CANNOT]) with the reason when it cannot be decoded."""
    if utf8:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise no("Invalid mailbox name: not valid UTF-8", "CANNOT") from None
    else:
        try:
            name = mutf7.decode(raw)
        except mutf7.InvalidMUTF7 as e:
            raise no(f"Invalid mailbox name: {e}", "CANNOT") from None
    return name if name.isascii() else unicodedata.normalize("NFC", name)


def mailbox(raw: bytes, utf8: bool = False, *, trailing_separator: bool = False) -> str:
    """A mailbox name argument, decoded, normalised and checked.

    ``trailing_separator``: CREATE may end a name with the separator (a declaration that the
    client means to create children under it); it is dropped.
    """
    return check(decode(raw, utf8), trailing_separator=trailing_separator)


def check(name: str, *, trailing_separator: bool = False) -> str:
    """A decoded mailbox name, checked and normalised (see ``mailbox``)."""
    if trailing_separator and name.endswith(SEPARATOR) and name.strip(SEPARATOR):
        name = name.rstrip(SEPARATOR)
    if not name:
        raise no("Invalid mailbox name: empty", "CANNOT")
    if name.startswith(SEPARATOR) or name.endswith(SEPARATOR) or SEPARATOR * 2 in name:
        raise no("Invalid mailbox name: empty hierarchy level", "CANNOT")
    if any(c in "*%" or c < " " or c == "\x7f" for c in name):
        raise no("Invalid mailbox name: wildcard or control character", "CANNOT")
    return normalize(name)


def encode(name: str, utf8: bool = False) -> bytes:
    """A storage name as an IMAP astring (modified UTF-7 unless UTF8=ACCEPT is enabled, then
    UTF-8, quoted where it can be: RFC 6855 allows UTF-8 in quoted strings)."""
    if utf8 and not name.isascii():
        data = name.encode("utf-8")
        if len(data) < 1024 and not any(c in name for c in '"\\\r\n\0'):
            return b'"' + data + b'"'
    return astring(name if utf8 else mutf7.encode(name))


def pattern_regex(reference: str, pattern: str) -> re.Pattern:
    """LIST: the reference and the pattern joined, ``*`` matching anything, ``%`` anything but
    the separator; the INBOX part matches case-insensitively."""
    full = normalize(reference + pattern) if reference or pattern else ""
    if full[:5].upper() == INBOX:
        full = INBOX + full[5:]
    out = []
    for ch in full:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append(f"[^{re.escape(SEPARATOR)}]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def with_parents(names) -> tuple[set, set]:
    """(names that exist, names of missing parents implied by them)."""
    existing = set(names)
    implied = set()
    for name in existing:
        parts = name.split(SEPARATOR)
        for i in range(1, len(parts)):
            parent = SEPARATOR.join(parts[:i])
            if parent not in existing:
                implied.add(parent)
    return existing, implied


def parents_with_children(names) -> set:
    """Every name that has at least one child among ``names`` (or implied by them)."""
    out = set()
    for name in names:
        parts = name.split(SEPARATOR)
        for i in range(1, len(parts)):
            out.add(SEPARATOR.join(parts[:i]))
    return out
