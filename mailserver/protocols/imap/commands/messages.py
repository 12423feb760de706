"""Selected-state commands: STORE, COPY, MOVE, EXPUNGE, CLOSE, UNSELECT, SEARCH (FETCH is in
``fetch.py``, APPEND and REPLACE in ``append.py``); flag and date-time parsing they share."""

from __future__ import annotations

import calendar
import datetime
import re

from mailserver.storage.api import SYSTEM_FLAGS, StoreMode
from mailserver.storage.errors import StorageError

from .. import names
from ..errors import bad, no, storage_answer
from ..parser import Args, Atom
from ..search import parse_search
from ..seqset import InvalidSequenceSet, OutOfRange, SequenceSet, format_uids
from . import SELECTED, Done, Sync, command

_KEYWORD_SPECIALS = set('(){%*"\\]')
_STORE_MODES = {"FLAGS": StoreMode.REPLACE, "+FLAGS": StoreMode.ADD, "-FLAGS": StoreMode.REMOVE}
_MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
_DATE_TIME = re.compile(rb" ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})\Z")
MAX_FLAGS = 100


def parse_flags(items: list) -> list[str]:
    """Flags from a flag list: system flags in their canonical case, keywords as written.
    ``\\Recent`` and unknown system flags are refused (BAD)."""
    if len(items) > MAX_FLAGS:
        raise bad("Too many flags")
    flags = []
    for item in items:
        if not isinstance(item, Atom):
            raise bad("Invalid flag")
        if item.startswith("\\"):
            for system in SYSTEM_FLAGS:
                if item.lower() == system.lower():
                    flags.append(system)
                    break
            else:
                raise bad(f"Invalid system flag {item[:30]}")
        elif _KEYWORD_SPECIALS & set(item):
            raise bad("Invalid keyword")
        else:
            flags.append(str(item))
    return flags


def resolve(session, args: Args, uid: bool) -> list[int]:
    """The UIDs a sequence-set argument names in the selected mailbox."""
    try:
        seqset = SequenceSet.parse(args.atom("sequence set"))
        if seqset.saved:
            raise InvalidSequenceSet("$ needs SEARCHRES, which is not supported")
        return seqset.resolve(session.selected.uids(), uid)
    except (InvalidSequenceSet, OutOfRange) as e:
        raise bad(str(e)) from None


def _writable(session) -> None:
    if session.selected.readonly:
        raise no("Mailbox is read-only", "READ-ONLY")


# --- STORE ------------------------------------------------------------------------------------

@command("STORE", SELECTED, sync=Sync.NO_EXPUNGE, uid=True)
async def store(session, tag: str, args: Args, uid: bool = False):
    uids = resolve(session, args, uid)
    if isinstance(args.peek(), list):
        raise bad("STORE modifiers are not supported")
    item = args.keyword("store data item")
    silent = item.endswith(".SILENT")
    mode = _STORE_MODES.get(item[:-7] if silent else item)
    if mode is None:
        raise bad("Expected FLAGS, +FLAGS or -FLAGS")
    if isinstance(args.peek(), list):
        flags = parse_flags(args.list("flag list").items)
        args.end()
    else:
        flags = parse_flags(args.items[args.pos:])
        if not flags:
            raise bad("Missing flag list")
    _writable(session)
    if not uids:
        return None
    selected = session.selected
    result = await selected.mailbox.store(uids, mode, flags)
    if not silent:
        infos = sorted(list(result.changed) + list(result.unchanged), key=lambda i: i.uid)
        out = []
        for info in infos:
            msn = selected.msn(info.uid)
            if msn:
                uid_part = b"UID %d " % info.uid if uid else b""
                out.append(b"* %d FETCH (%sFLAGS %s)\r\n" % (msn, uid_part, selected.flags(info)))
        session.writer.write(b"".join(out))
    return None


# --- COPY / MOVE ------------------------------------------------------------------------------

@command("COPY", SELECTED, sync=Sync.NO_EXPUNGE, uid=True)
async def copy(session, tag: str, args: Args, uid: bool = False):
    uids = resolve(session, args, uid)
    dest = names.mailbox(args.astring("destination mailbox"), session.utf8)
    args.end()
    if not uids:
        return "No messages copied"
    try:
        result = await session.selected.mailbox.copy(uids, dest)
    except StorageError as e:
        raise storage_answer(e, trycreate=True) from e
    return Done("COPY completed", _copyuid(result))


@command("MOVE", SELECTED, sync=Sync.CHANGES, uid=True)
async def move(session, tag: str, args: Args, uid: bool = False):
    """RFC 6851: untagged OK [COPYUID], then the EXPUNGEs of the moved messages."""
    uids = resolve(session, args, uid)
    dest = names.mailbox(args.astring("destination mailbox"), session.utf8)
    args.end()
    _writable(session)
    if not uids:
        return "No messages moved"
    selected = session.selected
    try:
        result = await selected.mailbox.move(uids, dest)
    except StorageError as e:
        raise storage_answer(e, trycreate=True) from e
    code = _copyuid(result)
    if code:
        session.writer.untagged(f"OK [{code}] Moved")
    await selected.sync(session.writer, expunges=True, force=True)
    return "MOVE completed"


def _copyuid(result) -> str | None:
    if not result.pairs:
        return None
    src = format_uids(p[0] for p in result.pairs)
    dst = format_uids(p[1] for p in result.pairs)
    return f"COPYUID {result.uidvalidity} {src} {dst}"


# --- EXPUNGE / CLOSE / UNSELECT ---------------------------------------------------------------

@command("EXPUNGE", SELECTED, sync=Sync.CHANGES, uid=True)
async def expunge(session, tag: str, args: Args, uid: bool = False):
    """EXPUNGE, and UID EXPUNGE (RFC 4315) limited to a UID set."""
    uids = resolve(session, args, True) if uid else None
    args.end()
    _writable(session)
    selected = session.selected
    if uids is None or uids:
        await selected.mailbox.expunge(uids)
    await selected.sync(session.writer, expunges=True, force=True)
    return "EXPUNGE completed"


@command("CLOSE", SELECTED, sync=Sync.NONE)
async def close(session, tag: str, args: Args):
    """Expunge silently (unless read-only), then leave the selected state."""
    args.end()
    selected = session.selected
    if not selected.readonly:
        await selected.mailbox.expunge()
    await session.unselect()
    return "CLOSE completed"


@command("UNSELECT", SELECTED, sync=Sync.NONE)
async def unselect(session, tag: str, args: Args):
    args.end()
    await session.unselect()
    return "UNSELECT completed"


# --- SEARCH -----------------------------------------------------------------------------------

@command("SEARCH", SELECTED, sync=Sync.NO_EXPUNGE, uid=True)
async def search(session, tag: str, args: Args, uid: bool = False):
    if args.peek_atom() == "RETURN":
        raise bad("SEARCH RETURN is not supported")
    if session.utf8 and args.peek_atom() == "CHARSET":
        raise bad("No CHARSET after ENABLE UTF8=ACCEPT: search strings are UTF-8")  # RFC 6855 section 3
    selected = session.selected
    program = parse_search(args, selected.uids(), max_keys=session.config.max_search_keys)
    found = await selected.mailbox.search(program)
    if uid:
        numbers = found
    else:
        numbers = [n for n in (selected.msn(u) for u in found) if n]
    session.writer.write(b"* SEARCH" + b"".join(b" %d" % n for n in numbers) + b"\r\n")
    return "SEARCH completed"


# APPEND (and REPLACE) live in ``append.py``; they share ``parse_flags`` and ``_date_time``.


def _date_time(raw: bytes) -> int:
    """RFC 3501 date-time ``"17-Jul-1996 02:44:25 -0700"`` as UNIX seconds."""
    m = _DATE_TIME.match(raw)
    month = _MONTHS.get(m.group(2).decode().upper()) if m else None
    if not m or not month:
        raise bad("Invalid date-time (expected e.g. \"17-Jul-1996 02:44:25 -0700\")")
    day, year, hh, mm, ss = (int(m.group(i)) for i in (1, 3, 4, 5, 6))
    try:
        datetime.datetime(year, month, day, hh, mm, ss)
    except ValueError:
        raise bad("Invalid date-time") from None
    offset = (int(m.group(8)) * 60 + int(m.group(9))) * 60
    if m.group(7) == b"-":
        offset = -offset
    return calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0)) - offset
