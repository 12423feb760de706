"""IMAP METADATA (RFC 5464) entries in the dictionary: the entry-name rules, the key layout and
the value encoding.  The IMAP commands call this module; it knows nothing of the wire.

Every entry lives in the authenticated user's private dictionary space (``priv/`` keys, which
the Dict keeps per user), so ``/private`` and ``/shared`` entries are both per user: this server
has no shared mailboxes and no ACL, as with Dovecot's per-user attribute dictionary.

Key layout (entry names lower-cased, without their leading ``/``)::

    priv/metadata/server/<entry>                    server entries (GETMETADATA "")
    priv/metadata/mailbox/<mailbox GUID>/<entry>    mailbox entries

e.g. ``/private/comment`` of a mailbox is ``priv/metadata/mailbox/<guid>/private/comment``.
Keyed by GUID, entries follow a mailbox through RENAME; ``remove_mailbox`` drops them after a
DELETE, and a new mailbox of the same name has a new GUID, so it starts empty.

Values are bytes on the wire but strings in the dictionary: ``t<text>`` when the value is UTF-8
without NUL, else ``b<base64>``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re

from twisted.internet import defer

from .errors import ErrorKind, StorageError

PREFIX = "priv/metadata/"
SERVER = PREFIX + "server/"
MAILBOX = PREFIX + "mailbox/"
MAX_ENTRY_NAME = 255            # bytes of an entry name
MAX_VALUE_LIMIT = 512 * 1024    # highest configurable value size (its base64 fits a dict value)
ROOTS = ("/private", "/shared")
DEPTHS = ("0", "1", "infinity")

SPECIALUSE = "/private/specialuse"   # RFC 6154 section 4: read-only, from the mailbox's special use
ADMIN = "/shared/admin"              # RFC 5464 section 3.2.1.2: read-only, from the configuration
READ_ONLY = (SPECIALUSE, ADMIN)

_GUID = re.compile(r"[A-Za-z0-9_-]{1,128}")   # a mailbox GUID as one key component
_locks: dict = {}                    # username -> DeferredLock (one SETMETADATA at a time)


# --- errors (the IMAP layer maps each to its response) ---------------------------------------

class MetadataError(Exception):
    """A refused METADATA request; ``text`` is safe to show a client."""

    def __init__(self, text: str):
        """``text``: what the client is told."""
        super().__init__(text)
        self.text = text


class InvalidEntry(MetadataError):
    """The entry name breaks the rules (IMAP: BAD)."""


class ValueTooLarge(MetadataError):
    """A value is over the configured limit ``limit`` (IMAP: NO [METADATA MAXSIZE limit])."""

    def __init__(self, limit: int):
        """``limit``: the configured largest value, in bytes."""
        super().__init__(f"Value larger than {limit} bytes")
        self.limit = limit


class TooMany(MetadataError):
    """The mailbox or the server would hold more entries than allowed (NO [METADATA TOOMANY])."""


class NoPrivate(MetadataError):
    """Private entries are disabled by configuration (NO [METADATA NOPRIVATE])."""


class ReadOnly(MetadataError):
    """The entry is computed by the server and cannot be set (NO [CANNOT])."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the configuration allows."""

    max_value_size: int = 64 * 1024
    max_entries: int = 256
    private: bool = True
    admin: str = ""

    @classmethod
    def from_config(cls, imap) -> "Limits":
        """From the validated ``[imap]`` section."""
        return cls(imap.metadata_max_value_size, imap.metadata_max_entries, imap.metadata_private,
                   imap.metadata_admin)


# --- entry names ------------------------------------------------------------------------------

def check_entry(name: bytes | str, *, root_ok: bool = False) -> str:
    """An entry name, checked and lower-cased (entry names are case-insensitive).

    It is visible ASCII (no space or control), at most MAX_ENTRY_NAME bytes, starts with
    ``/private/`` or ``/shared/`` (``root_ok``: may also be ``/private`` or ``/shared`` itself,
    for GETMETADATA with DEPTH), has no ``//``, no trailing ``/``, no ``*`` or ``%``.
    Raises InvalidEntry."""
    if isinstance(name, bytes):
        try:
            name = name.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidEntry("Entry name must be ASCII") from None
    if not name:
        raise InvalidEntry("Empty entry name")
    if len(name) > MAX_ENTRY_NAME:
        raise InvalidEntry(f"Entry name longer than {MAX_ENTRY_NAME} bytes")
    if any(not ("\x21" <= c <= "\x7e") for c in name):
        raise InvalidEntry("Entry name must be visible ASCII")
    if "*" in name or "%" in name:
        raise InvalidEntry("Entry name must not contain * or %")
    if "//" in name or name.endswith("/"):
        raise InvalidEntry("Entry name has an empty component")
    lowered = name.lower()
    if lowered in ROOTS:
        if not root_ok:
            raise InvalidEntry("Entry name must name an entry below /private or /shared")
        return lowered
    if not lowered.startswith(("/private/", "/shared/")):
        raise InvalidEntry("Entry name must start with /private/ or /shared/")
    return lowered


def is_private(entry: str) -> bool:
    """Is a checked entry name in the /private tree?"""
    return entry == "/private" or entry.startswith("/private/")


# --- key layout -------------------------------------------------------------------------------

def scope_prefix(guid: str | None) -> str:
    """The key prefix of the server entries (``guid`` None) or of one mailbox's entries."""
    if guid is None:
        return SERVER
    if not _GUID.fullmatch(guid):
        raise StorageError(ErrorKind.INVALID, f"mailbox GUID {guid!r} is not a key component")
    return MAILBOX + guid + "/"


def entry_key(guid: str | None, entry: str) -> str:
    """The dictionary key of a checked entry name."""
    return scope_prefix(guid) + entry[1:]


def key_entry(prefix: str, key: str) -> str:
    """The entry name of a key under ``prefix`` (``scope_prefix``)."""
    return "/" + key[len(prefix):]


# --- values -----------------------------------------------------------------------------------

def encode_value(value: bytes) -> str:
    """The dictionary string of a value (see the module docstring)."""
    if b"\0" not in value:
        try:
            return "t" + value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return "b" + base64.b64encode(value).decode("ascii")


def decode_value(stored: str) -> bytes:
    """The value of a dictionary string; StorageError(CORRUPTED) for one this module did not write."""
    if stored.startswith("t"):
        return stored[1:].encode("utf-8")
    if stored.startswith("b"):
        try:
            return base64.b64decode(stored[1:], validate=True)
        except (binascii.Error, ValueError):
            pass
    raise StorageError(ErrorKind.CORRUPTED, "metadata value in the dictionary is not t<text> or b<base64>")


# --- reading ----------------------------------------------------------------------------------

def computed(guid: str | None, special_use, limits: Limits) -> dict[str, bytes]:
    """The read-only entries the server derives: ``/private/specialuse`` of a mailbox with a
    special use, ``/shared/admin`` of the server when configured."""
    if guid is None:
        return {ADMIN: limits.admin.encode("utf-8")} if limits.admin else {}
    if special_use:
        return {SPECIALUSE: " ".join(sorted(special_use)).encode("ascii")}
    return {}


def _in_depth(entry: str, base: str, depth: str) -> bool:
    """Is ``entry`` ``base`` itself or, within ``depth``, below it?"""
    if entry == base:
        return True
    if depth == "0" or not entry.startswith(base + "/"):
        return False
    return depth == "infinity" or "/" not in entry[len(base) + 1:]


async def get_entries(d, username: str, guid: str | None, entries: list[str], depth: str,
                      limits: Limits, special_use=()) -> dict[str, bytes]:
    """Every existing entry named by ``entries`` (checked names) or below them within
    ``depth`` (``"0"``, ``"1"``, ``"infinity"``), with its value: stored entries of the user's
    server (``guid`` None) or mailbox, and the computed ones.  Private entries are left out
    when they are disabled.  One dictionary read: a scope holds at most ``max_entries``."""
    if depth not in DEPTHS:
        raise ValueError(f"depth {depth!r}")
    prefix = scope_prefix(guid)
    stored = await d.iterate(username, prefix)
    every = {key_entry(prefix, key): value for key, value in stored.items()}
    every.update(computed(guid, special_use, limits))
    bases = [base for base in entries if limits.private or not is_private(base)]
    found: dict[str, bytes] = {}
    for entry, value in every.items():
        if any(_in_depth(entry, base, depth) for base in bases):
            found[entry] = value if isinstance(value, bytes) else decode_value(value)
    return found


# --- writing ----------------------------------------------------------------------------------

def _lock(username: str) -> defer.DeferredLock:
    """The per-user lock that serialises the count-then-write of ``set_entries`` in this process."""
    lock = _locks.get(username)
    if lock is None:
        lock = _locks[username] = defer.DeferredLock()
    return lock


def check_set(pairs: list[tuple[str, bytes | None]], limits: Limits) -> None:
    """The rules a SETMETADATA's (checked entry, value or None) pairs must follow before any
    storage is touched: private allowed, not read-only, values within the size limit."""
    for entry, value in pairs:
        if is_private(entry) and not limits.private:
            raise NoPrivate("Private metadata entries are disabled on this server")
        if entry in READ_ONLY:
            raise ReadOnly(f"{entry} is read-only")
        if value is not None and len(value) > limits.max_value_size:
            raise ValueTooLarge(limits.max_value_size)


async def set_entries(d, username: str, guid: str | None, pairs: list[tuple[str, bytes | None]],
                      limits: Limits) -> None:
    """Set (value) or remove (None) entries of the user's server (``guid`` None) or mailbox in
    one dictionary transaction, all or nothing.  Raises NoPrivate, ReadOnly, ValueTooLarge, or
    TooMany when the scope would hold more than ``limits.max_entries`` entries.  The entry
    count is checked under a per-user lock; two processes setting new entries at the same
    moment may pass the limit by a few (the dictionary has no compare-and-set)."""
    check_set(pairs, limits)
    sets = {entry_key(guid, entry): None if value is None else encode_value(value)
            for entry, value in pairs}
    lock = _lock(username)
    await lock.acquire()
    try:
        adding = [k for k, v in sets.items() if v is not None]
        if adding:
            existing = await d.iterate(username, scope_prefix(guid))
            after = set(existing) | set(adding)
            after -= {k for k, v in sets.items() if v is None}
            if len(after) > limits.max_entries and len(after) > len(existing):
                raise TooMany(f"At most {limits.max_entries} metadata entries per mailbox and for the server")
        await d.transaction(username, sets=sets)
    finally:
        lock.release()
        if not lock.locked and not lock.waiting:
            _locks.pop(username, None)


async def remove_mailbox(d, username: str, guid: str) -> int:
    """Remove every entry of a deleted mailbox; returns how many there were."""
    existing = await d.iterate(username, scope_prefix(guid))
    if existing:
        await d.transaction(username, sets={k: None for k in existing})
    return len(existing)
