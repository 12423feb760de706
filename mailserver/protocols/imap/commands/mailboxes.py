"""Mailbox commands: SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, STATUS
(LIST and LSUB are in ``listing.py``)."""

from __future__ import annotations

from mailserver.storage.api import SPECIAL_USES, SYSTEM_FLAGS
from mailserver.storage.errors import ErrorKind, StorageError

from .. import names
from ..errors import bad, no, storage_answer
from ..parser import Args
from ..response import CRLF, flag_list
from ..condstore import parse_select_params, resync_select
from ..extensions import enable_condstore
from ..selected import Selected
from . import AUTH, Done, State, Sync, command, metadata
from .quota import kib

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "DELETED", "HIGHESTMODSEQ")
STATUS_ITEMS += ("MAILBOXID", "APPENDLIMIT")     # RFC 8474, RFC 7889
STATUS_ITEMS += ("DELETED-STORAGE",)             # RFC 9208, with QUOTA=RES-STORAGE only


def status_item(session, item: str) -> str:
    """``item`` if this session may ask STATUS for it, else BAD."""
    if item not in STATUS_ITEMS or (item == "DELETED-STORAGE" and not session.ctx.config.quota.enabled):
        raise bad(f"Unknown STATUS item {item[:30]}")
    return item


def mailbox_arg(session, args: Args, what: str = "mailbox name", **kw) -> str:
    return names.mailbox(args.astring(what), session.utf8, **kw)


# --- SELECT / EXAMINE -------------------------------------------------------------------------

@command("SELECT", AUTH, sync=Sync.NONE)
async def select(session, tag: str, args: Args):
    return await _select(session, args, readonly=False)


@command("EXAMINE", AUTH, sync=Sync.NONE)
async def examine(session, tag: str, args: Args):
    return await _select(session, args, readonly=True)


async def _select(session, args: Args, readonly: bool):
    raw_name = args.astring("mailbox name")
    name = names.mailbox(raw_name, session.utf8)
    params = parse_select_params(session, args)
    # A failed SELECT leaves no mailbox selected (RFC 3501 6.3.1); leaving one is said with
    # [CLOSED] (RFC 7162 3.2.11, RFC 9051 7.1).
    if session.selected is not None:
        await session.unselect()
        session.writer.write(b"* OK [CLOSED] Previous mailbox closed\r\n")
    try:
        mailbox = await session.user.open_mailbox(name, readonly=readonly)
    except StorageError as e:
        raise storage_answer(e, texts={ErrorKind.NOT_FOUND: "Mailbox does not exist"}) from e
    if params.condstore or params.qresync:
        enable_condstore(session)
    selected = Selected(mailbox, readonly or bool(getattr(mailbox, "readonly", False)), session.wake,
                        session.enabled)
    session.selected = selected
    session.state = State.SELECTED
    keywords, first_unseen = selected.scan()
    flags = flag_list(set(SYSTEM_FLAGS) | keywords)
    uids = selected.uids()
    w = session.writer
    w.write(b"* FLAGS " + flags + CRLF)
    if selected.readonly:
        w.write(b"* OK [PERMANENTFLAGS ()] Read-only mailbox" + CRLF)
    else:
        w.write(b"* OK [PERMANENTFLAGS " + flags[:-1] + b" \\*)] Flags permitted" + CRLF)
    if selected.rev2:
        # IMAP4rev2: no RECENT and no UNSEEN; the mailbox's name as the server spells it.
        w.write(b"* %d EXISTS\r\n" % len(uids))
        w.write(b'* LIST () "/" ' + names.encode(mailbox.name, session.utf8) + CRLF)
    else:
        w.write(b"* %d EXISTS\r\n* %d RECENT\r\n" % (len(uids), selected.recent))
        if first_unseen:
            w.write(b"* OK [UNSEEN %d] First unseen message\r\n" % first_unseen)
    w.write(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % mailbox.uidvalidity)
    w.write(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % mailbox.uidnext)
    w.write(b"* OK [MAILBOXID (%s)] Ok\r\n" % mailbox.guid.encode("ascii"))
    if selected.condstore:
        w.write(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % selected.highestmodseq)
    if params.qresync is not None:
        await resync_select(session, selected, params.qresync)
    session.debug("selected {mailbox}", mailbox=name)
    if selected.readonly:
        return Done("Examine completed", "READ-ONLY")
    return Done("Select completed", "READ-WRITE")


# --- the mailbox list -------------------------------------------------------------------------

@command("CREATE", AUTH)
async def create(session, tag: str, args: Args):
    """CREATE, with CREATE-SPECIAL-USE (RFC 6154 3): ``CREATE name (USE (\\Archive))``."""
    from .listing import use_list
    name = mailbox_arg(session, args, trailing_separator=True)
    uses = use_list(args)
    args.end()
    if name == names.INBOX:
        raise storage_answer(StorageError(ErrorKind.EXISTS), texts={ErrorKind.EXISTS: "INBOX always exists"})
    canonical = []
    for use in uses:
        match = [u for u in SPECIAL_USES if u.lower() == use.lower()]
        if not match:
            raise no("Unsupported special-use attribute", "USEATTR")
        canonical.append(match[0])
    info = await session.user.create_mailbox(name, canonical)
    return Done("CREATE completed", f"MAILBOXID ({info.guid})")


@command("DELETE", AUTH)
async def delete(session, tag: str, args: Args):
    name = mailbox_arg(session, args)
    args.end()
    if name == names.INBOX:
        raise storage_answer(StorageError(ErrorKind.CANNOT), texts={ErrorKind.CANNOT: "INBOX cannot be deleted"})
    if session.selected is not None and session.selected.mailbox.name == name:
        # Deleting the selected mailbox: leave it first (as Dovecot does).
        await session.unselect()
    guid = await metadata.guid_before_delete(session, name)
    await session.user.delete_mailbox(name)
    await metadata.mailbox_deleted(session, guid)
    return "DELETE completed"


@command("RENAME", AUTH)
async def rename(session, tag: str, args: Args):
    old = mailbox_arg(session, args, "existing mailbox name")
    new = mailbox_arg(session, args, "new mailbox name", trailing_separator=True)
    args.end()
    if new == names.INBOX:
        raise storage_answer(StorageError(ErrorKind.EXISTS), texts={ErrorKind.EXISTS: "INBOX always exists"})
    await session.user.rename_mailbox(old, new)
    return "RENAME completed"


@command("SUBSCRIBE", AUTH)
async def subscribe(session, tag: str, args: Args):
    name = mailbox_arg(session, args)
    args.end()
    await session.user.set_subscribed(name, True)
    return "SUBSCRIBE completed"


@command("UNSUBSCRIBE", AUTH)
async def unsubscribe(session, tag: str, args: Args):
    name = mailbox_arg(session, args)
    args.end()
    await session.user.set_subscribed(name, False)
    return "UNSUBSCRIBE completed"


# --- STATUS -----------------------------------------------------------------------------------

def status_values(st, session) -> dict:
    """STATUS item name -> value of a ``MailboxStatus``."""
    return {"MESSAGES": st.messages, "RECENT": st.recent, "UIDNEXT": st.uidnext,
            "UIDVALIDITY": st.uidvalidity, "UNSEEN": st.unseen, "SIZE": st.size, "DELETED": st.deleted,
            "HIGHESTMODSEQ": st.highestmodseq, "MAILBOXID": f"({st.guid})",
            "APPENDLIMIT": session.config.max_literal_size,
            "DELETED-STORAGE": kib(st.deleted_size)}      # KiB, as QUOTA's STORAGE


@command("STATUS", AUTH)
async def status(session, tag: str, args: Args):
    name = mailbox_arg(session, args)
    items = args.list("status data item names")
    args.end()
    wanted = []
    while items.more():
        wanted.append(status_item(session, items.keyword("status data item")))
    if not wanted:
        raise bad("Empty STATUS item list")
    if "HIGHESTMODSEQ" in wanted:
        enable_condstore(session)
    st = await session.user.status(name)
    values = status_values(st, session)
    body = " ".join(f"{item} {values[item]}" for item in wanted)
    session.writer.write(b"* STATUS " + names.encode(name, session.utf8) + b" (" + body.encode() + b")" + CRLF)
    return "STATUS completed"
