"""APPEND and REPLACE.

APPEND (RFC 3501) with MULTIAPPEND (RFC 3502: every message saved, or none), the message given
as a literal, a literal8 (RFC 3516 BINARY), ``UTF8 (~{n})`` (RFC 6855, after ENABLE
UTF8=ACCEPT) or ``CATENATE (TEXT literal / URL "url" ...)`` (RFC 4469: pieces of the user's
own messages named by IMAP URLs, a bad one answered ``NO [BADURL url]``).  The saved UIDs come
back as ``[APPENDUID]`` (RFC 4315).

REPLACE (RFC 8508): save a new message (to any mailbox), then expunge one message of the
selected mailbox; ``* OK [APPENDUID]`` comes before the EXPUNGE.  The save happens first, so a
failed save leaves the original alone; a failure after it (rare: storage down between the two
steps) leaves both, never neither.
"""

from __future__ import annotations

import dataclasses

from mailserver.storage.api import DELETED, StoreMode
from mailserver.storage.errors import StorageError

from .. import names, urls
from ..errors import CommandError, bad, no, storage_answer
from ..parser import Args, Atom, Literal, Literal8, String
from ..seqset import InvalidSequenceSet, OutOfRange, SequenceSet, format_uids
from . import AUTH, SELECTED, Done, Sync, command
from .messages import _date_time, _writable, parse_flags
from .urlauth import authorized_content, message_part

MAX_CATENATE_PARTS = 256


@dataclasses.dataclass
class NewMessage:
    data: bytes
    flags: list
    internaldate: int | None


async def read_message(session, args: Args) -> NewMessage:
    """One ``append-message``: ``[flags] [date-time] (literal / literal8 / UTF8 (literal8) /
    CATENATE (...))``; URLs of CATENATE are read here."""
    flags: list = []
    internaldate = None
    if isinstance(args.peek(), list):
        flags = parse_flags(args.list("flag list").items)
    date = args.peek()
    if isinstance(date, String) and not isinstance(date, Literal):
        internaldate = _date_time(args.string("date-time"))
    item = args.next("message literal")
    if isinstance(item, Atom) and item.upper() == "CATENATE":
        data = await catenate(session, args.list("CATENATE parts"))
    elif isinstance(item, Atom) and item.upper() == "UTF8":
        data = _utf8_literal(session, args.list("UTF8 literal"))
    elif isinstance(item, (Literal, Literal8)):
        data = bytes(item)
    else:
        raise bad("Expected a message literal")
    if not data:
        raise no("Cannot save an empty message", "CLIENTBUG")
    return NewMessage(data, flags, internaldate)


def _utf8_literal(session, inner: Args) -> bytes:
    """RFC 6855 ``UTF8 (~{n})``: a message with UTF-8 header fields."""
    if not session.utf8:
        raise bad("UTF8 message data needs ENABLE UTF8=ACCEPT first")
    item = inner.next("literal8")
    inner.end()
    if not isinstance(item, (Literal8, Literal)):
        raise bad("Expected a literal8 inside UTF8 ( )")
    return bytes(item)


async def catenate(session, parts: Args) -> bytes:
    """The message a CATENATE list builds (RFC 4469), bounded by APPENDLIMIT."""
    limit = session.config.max_literal_size
    pieces = []
    total = 0
    while parts.more():
        if len(pieces) >= MAX_CATENATE_PARTS:
            raise bad(f"At most {MAX_CATENATE_PARTS} CATENATE parts", "LIMIT")
        kind = parts.keyword("CATENATE part")
        if kind == "TEXT":
            item = parts.next("TEXT literal")
            if not isinstance(item, (Literal, Literal8)):
                raise bad("TEXT needs a literal")
            piece = bytes(item)
        elif kind == "URL":
            piece = await _url_piece(session, parts.astring("URL"))
        elif kind == "UTF8":
            piece = _utf8_literal(session, parts.list("UTF8 literal"))
        else:
            raise bad("Expected TEXT, URL or UTF8 in CATENATE")
        total += len(piece)
        if total > limit:
            raise no(f"Message larger than the APPENDLIMIT of {limit} bytes", "TOOBIG")
        pieces.append(piece)
    if not pieces:
        raise bad("Empty CATENATE list")
    return b"".join(pieces)


async def _url_piece(session, raw: bytes) -> bytes:
    """What a CATENATE URL names, from one of the session user's own mailboxes."""
    text = raw.decode("utf-8", "replace")
    reason: list = []
    data = None
    try:
        url = urls.parse(raw.decode("utf-8"))
    except (UnicodeDecodeError, urls.BadUrl) as e:
        reason.append(str(e) or "not UTF-8")
    else:
        data = await _own_url_content(session, url, reason)
    if data is None:
        session.info("CATENATE: bad URL {url}: {reason}", url=text[:200], reason="; ".join(reason))
        raise no("CATENATE failed: a URL names nothing this user can read",
                 "BADURL " + urls.for_response_code(text))
    return data


async def _own_url_content(session, url: urls.ImapUrl, reason: list) -> bytes | None:
    if url.absolute and session.ctx.auth.normalize(url.user or "") != session.username:
        reason.append("URL of another user")
        return None
    if url.token is not None:
        # A URLAUTH URL must also verify, even for its owner (RFC 4469 section 5).
        return await authorized_content(session, url, reason)
    if url.access is not None:
        reason.append("URLAUTH rump URL without a token")
        return None
    selected = session.selected
    if url.mailbox is None:
        if selected is None:
            reason.append("relative URL with no mailbox selected")
            return None
        name = selected.mailbox.name
    else:
        try:
            name = names.check(url.mailbox)
        except CommandError as e:
            reason.append(e.text)
            return None
    data = await message_part(session.user, name, url, selected)
    if data is None:
        reason.append("no such mailbox, message or part")
    return data


async def save(session, name: str, messages: list):
    """Save ``messages`` into mailbox ``name`` in one transaction; the ``SaveResult``."""
    tx = session.user.begin_save(name)
    try:
        for m in messages:
            await tx.add(m.data, m.flags, m.internaldate)
        return await tx.commit()
    except StorageError as e:
        await _rollback(session, tx)
        raise storage_answer(e, trycreate=True) from e
    except BaseException:
        await _rollback(session, tx)
        raise


async def _rollback(session, tx) -> None:
    try:
        await tx.rollback()
    except Exception as e:  # the original error is what the client must hear about
        session.warn("APPEND rollback failed: {error!r}", error=e)


@command("APPEND", AUTH)
async def append(session, tag: str, args: Args):
    """APPEND with MULTIAPPEND, CATENATE, literal8 and UTF8; APPENDUID answers."""
    name = names.mailbox(args.astring("mailbox name"), session.utf8)
    messages = [await read_message(session, args)]
    while args.more():
        messages.append(await read_message(session, args))
    result = await save(session, name, messages)
    selected = session.selected
    if selected is not None and selected.mailbox.name == name:
        await selected.sync(session.writer, expunges=True, force=True)
    return Done("APPEND completed", f"APPENDUID {result.uidvalidity} {format_uids(result.uids)}")


@command("REPLACE", SELECTED, sync=Sync.CHANGES, uid=True)
async def replace(session, tag: str, args: Args, uid: bool = False):
    """RFC 8508 ``[UID] REPLACE <message> <mailbox> [flags] [date-time] <message data>``."""
    selected = session.selected
    text = args.atom("message number")
    try:
        seqset = SequenceSet.parse(text)
        if seqset.saved or len(seqset.ranges) != 1 or seqset.ranges[0][0] != seqset.ranges[0][1]:
            raise InvalidSequenceSet("REPLACE takes one message number")
        found = seqset.resolve(selected.uids(), uid)
    except (InvalidSequenceSet, OutOfRange) as e:
        raise bad(str(e)) from None
    name = names.mailbox(args.astring("mailbox name"), session.utf8)
    message = await read_message(session, args)
    args.end()
    _writable(session)
    if not found:
        raise no("The message to replace does not exist", "NONEXISTENT")
    old = found[0]
    result = await save(session, name, [message])
    session.writer.untagged(f"OK [APPENDUID {result.uidvalidity} {format_uids(result.uids)}] "
                            "Replacement Message ID")
    mailbox = selected.mailbox
    await mailbox.store([old], StoreMode.ADD, (DELETED,))
    await mailbox.expunge([old])
    await selected.sync(session.writer, expunges=True, force=True)
    return "REPLACE completed"
