"""METADATA (RFC 5464): GETMETADATA and SETMETADATA for mailbox entries and server entries
(mailbox ``""``).  The entry rules, limits and key layout are in
``mailserver.storage.metadata``; this module reads the wire and writes the answers.

Answers: ``* METADATA <mailbox> (<entry> <value> ...)`` with only the entries that exist;
values as quoted strings, literals ``{n}``, or ``~{n}`` (literal8) when they hold a NUL.
GETMETADATA's MAXSIZE leaves out longer values and says ``OK [METADATA LONGENTRIES n]`` with
the largest one left out.  SETMETADATA answers ``NO [METADATA MAXSIZE n]``, ``NO [METADATA
TOOMANY]``, ``NO [METADATA NOPRIVATE]``, ``NO [CANNOT]`` for a read-only entry; bad entry names
get BAD.
"""

from __future__ import annotations

from mailserver.storage import metadata
from mailserver.storage.errors import ErrorKind, StorageError

from .. import names
from ..errors import CommandError, bad, no
from ..parser import Args, Atom, Literal8, String
from ..response import CRLF, astring, literal, string
from . import AUTH, Done, command

MAX_ENTRIES_PER_COMMAND = 1000     # entry names in one GETMETADATA, pairs in one SETMETADATA


def _dict(session):
    """The dictionary, or NO [UNAVAILABLE] when none is configured."""
    if session.ctx.dict is None:
        raise no("METADATA is not available (no dictionary configured)", "UNAVAILABLE")
    return session.ctx.dict


def _limits(session) -> metadata.Limits:
    """The configured METADATA limits."""
    return metadata.Limits.from_config(session.config)


def _answer(error: metadata.MetadataError) -> CommandError:
    """The tagged answer for a refused request."""
    if isinstance(error, metadata.InvalidEntry):
        return bad(error.text)
    if isinstance(error, metadata.ValueTooLarge):
        return no(error.text, f"METADATA MAXSIZE {error.limit}")
    if isinstance(error, metadata.TooMany):
        return no(error.text, "METADATA TOOMANY")
    if isinstance(error, metadata.NoPrivate):
        return no(error.text, "METADATA NOPRIVATE")
    return no(error.text, "CANNOT")


def _entry(raw: bytes, root_ok: bool) -> str:
    """A checked, lower-cased entry name; BAD when it breaks the rules."""
    try:
        return metadata.check_entry(raw, root_ok=root_ok)
    except metadata.InvalidEntry as e:
        raise _answer(e) from None


async def mailbox_info(session, name: str):
    """The ``MailboxInfo`` (GUID, special use) of one of the user's mailboxes; NO [NONEXISTENT]."""
    for info in await session.user.list_mailboxes():
        if info.name == name:
            return info
    raise no("Mailbox does not exist", "NONEXISTENT")


async def _scope(session, raw: bytes):
    """(mailbox name or None for the server, GUID or None, special use) of a command's mailbox."""
    if raw == b"":
        return None, None, ()
    name = names.mailbox(raw, session.utf8)
    info = await mailbox_info(session, name)
    return name, info.guid, info.special_use


def _value(value: bytes) -> bytes:
    """A value on the wire: quoted when it can be, a literal, or literal8 when it holds a NUL."""
    if b"\0" in value:
        return b"~" + literal(value)
    return string(value)


# --- GETMETADATA ------------------------------------------------------------------------------

def _options(args: Args) -> tuple[int | None, str]:
    """``(MAXSIZE n DEPTH d)`` before the mailbox name: (maxsize or None, depth)."""
    maxsize, depth = None, "0"
    if not isinstance(args.peek(), list):
        return maxsize, depth
    opts = args.list("GETMETADATA options")
    seen = set()
    if not opts.more():
        raise bad("Empty GETMETADATA option list")
    while opts.more():
        name = opts.keyword("GETMETADATA option")
        if name in seen:
            raise bad(f"{name} given twice")
        seen.add(name)
        if name == "MAXSIZE":
            maxsize = opts.number("MAXSIZE")
        elif name == "DEPTH":
            depth = opts.atom("DEPTH").lower()
            if depth not in metadata.DEPTHS:
                raise bad("DEPTH must be 0, 1 or infinity")
        else:
            raise bad(f"Unknown GETMETADATA option {name[:30]}")
    return maxsize, depth


@command("GETMETADATA", AUTH)
async def getmetadata(session, tag: str, args: Args):
    """``GETMETADATA [(MAXSIZE n DEPTH d)] mailbox entry`` or ``... (entry ...)``."""
    d = _dict(session)
    maxsize, depth = _options(args)
    raw_mailbox = args.astring("mailbox name")
    wanted = args.list_or_one("entry names")
    args.end()
    entries, spelled = [], {}
    while wanted.more():
        raw = wanted.astring("entry name")
        entry = _entry(raw, root_ok=True)
        spelled.setdefault(entry, raw)
        if entry not in entries:
            entries.append(entry)
    if not entries:
        raise bad("Missing entry name")
    if len(entries) > MAX_ENTRIES_PER_COMMAND:
        raise bad(f"At most {MAX_ENTRIES_PER_COMMAND} entries at once", "LIMIT")
    name, guid, special_use = await _scope(session, raw_mailbox)
    found = await metadata.get_entries(d, session.username, guid, entries, depth, _limits(session),
                                       special_use)
    longest = 0
    pieces: list[bytes] = []
    for entry in sorted(found):
        value = found[entry]
        if maxsize is not None and len(value) > maxsize:
            longest = max(longest, len(value))
            continue
        pieces += [b" " if pieces else b"", astring(spelled.get(entry, entry)), b" ", _value(value)]
    if pieces:
        mailbox = b'""' if name is None else names.encode(name, session.utf8)
        session.writer.write_pieces([b"* METADATA ", mailbox, b" ("] + pieces + [b")" + CRLF])
        if session.writer.paused:
            await session.writer.drain()
    if longest:
        return Done("GETMETADATA completed", f"METADATA LONGENTRIES {longest}")
    return "GETMETADATA completed"


# --- SETMETADATA ------------------------------------------------------------------------------

def _set_value(args: Args) -> bytes | None:
    """A SETMETADATA value: a string, a literal, a literal8 ``~{n}``, or NIL (remove)."""
    item = args.next("entry value")
    if isinstance(item, Literal8):
        return bytes(item)
    if isinstance(item, Atom) and item.upper() == "NIL":
        return None
    if isinstance(item, String):
        return bytes(item)
    raise CommandError("BAD", "Expected a string, a literal or NIL for an entry value")


@command("SETMETADATA", AUTH)
async def setmetadata(session, tag: str, args: Args):
    """``SETMETADATA mailbox (entry value ...)``: every pair in one dictionary transaction."""
    d = _dict(session)
    raw_mailbox = args.astring("mailbox name")
    listed = args.list("entry-value list")
    args.end()
    pairs = []
    while listed.more():
        entry = _entry(listed.astring("entry name"), root_ok=False)
        pairs.append((entry, _set_value(listed)))
        if len(pairs) > MAX_ENTRIES_PER_COMMAND:
            raise bad(f"At most {MAX_ENTRIES_PER_COMMAND} entries at once", "LIMIT")
    if not pairs:
        raise bad("Empty entry-value list")
    limits = _limits(session)
    try:
        metadata.check_set(pairs, limits)
        _name, guid, _uses = await _scope(session, raw_mailbox)
        await metadata.set_entries(d, session.username, guid, pairs, limits)
    except metadata.MetadataError as e:
        raise _answer(e) from None
    except StorageError as e:
        if e.kind is ErrorKind.LIMIT:
            raise no("Value too large for the dictionary", f"METADATA MAXSIZE {limits.max_value_size}") from e
        raise
    return "SETMETADATA completed"


# --- DELETE -----------------------------------------------------------------------------------

async def guid_before_delete(session, name: str) -> str | None:
    """The GUID of a mailbox about to be deleted, if there is a dictionary (else None)."""
    if session.ctx.dict is None:
        return None
    try:
        return (await mailbox_info(session, name)).guid
    except CommandError:
        return None


async def mailbox_deleted(session, guid: str | None) -> None:
    """After a successful DELETE: drop the mailbox's entries.  A failure is logged, not
    answered (the mailbox is gone; its entries are unreachable since GUIDs are not reused)."""
    if guid is None or session.ctx.dict is None:
        return
    try:
        n = await metadata.remove_mailbox(session.ctx.dict, session.username, guid)
    except StorageError as e:
        session.warn("DELETE: metadata of mailbox {guid} left in the dictionary: {detail}",
                     guid=guid, detail=e.detail)
        return
    if n:
        session.debug("DELETE: {n} metadata entries removed", n=n)
