"""Selected-state commands: STORE, COPY, MOVE, EXPUNGE, CLOSE, UNSELECT (FETCH is in
``fetch.py``, SEARCH, SORT and THREAD in ``searching.py``, APPEND and REPLACE in ``append.py``);
flag and date-time parsing they share."""

from __future__ import annotations

import calendar
import datetime
import re

from mailserver.storage.api import SYSTEM_FLAGS, Changes, StoreMode
from mailserver.storage.errors import StorageError

from .. import names
from ..condstore import parse_store_modifiers
from ..errors import bad, no, storage_answer
from ..extensions import qresync
from ..parser import Args, Atom
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
        return seqset.resolve(session.selected.uids(), uid, session.selected.saved)
    except (InvalidSequenceSet, OutOfRange) as e:
        raise bad(str(e)) from None


def _writable(session) -> None:
    if session.selected.readonly:
        raise no("Mailbox is read-only", "READ-ONLY")


# --- STORE ------------------------------------------------------------------------------------

@command("STORE", SELECTED, sync=Sync.NO_EXPUNGE, uid=True)
async def store(session, tag: str, args: Args, uid: bool = False):
    uids = resolve(session, args, uid)
    unchanged_since = parse_store_modifiers(session, args)
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
    result = await selected.mailbox.store(uids, mode, flags, unchanged_since=unchanged_since)
    condstore = selected.condstore
    # RFC 7162 3.1.3: with CONDSTORE on, changed messages are reported with their new MODSEQ
    # even after .SILENT.
    infos = result.changed if silent else list(result.changed) + list(result.unchanged)
    if infos and (condstore or not silent):
        out = []
        for info in sorted(infos, key=lambda i: i.uid):
            msn = selected.msn(info.uid)
            if msn:
                items = [b"UID %d" % info.uid] if uid else []
                if not silent:
                    items.append(b"FLAGS " + selected.flags(info))
                if condstore:
                    items.append(b"MODSEQ (%d)" % info.modseq)
                out.append(b"* %d FETCH (%s)\r\n" % (msn, b" ".join(items)))
        session.writer.write(b"".join(out))
    if result.changed and selected.contexts:
        await selected.update_contexts(Changes(), session.writer, own_flags=result.changed)
    if result.failed:
        failed = result.failed if uid else sorted(n for n in map(selected.msn, result.failed) if n)
        return Done("Conditional STORE failed", "MODIFIED " + format_uids(sorted(failed)))
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
    if qresync(session):
        # RFC 7162 3.2.10 (Dovecot too): the client can store the new HIGHESTMODSEQ at once.
        return Done("EXPUNGE completed", f"HIGHESTMODSEQ {selected.highestmodseq}")
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
