"""Mailbox commands: SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST,
LSUB, STATUS."""

from __future__ import annotations

from mailserver.storage.api import SYSTEM_FLAGS
from mailserver.storage.errors import ErrorKind, StorageError

from .. import names
from ..errors import bad, storage_answer
from ..parser import Args
from ..response import CRLF, flag_list
from ..selected import Selected
from . import AUTH, Done, State, Sync, command

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "DELETED")
STATUS_ITEMS += ("MAILBOXID", "APPENDLIMIT")     # RFC 8474, RFC 7889


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
    name = mailbox_arg(session, args)
    args.end()
    # A failed SELECT leaves no mailbox selected (RFC 3501 6.3.1).
    await session.unselect()
    try:
        mailbox = await session.user.open_mailbox(name, readonly=readonly)
    except StorageError as e:
        raise storage_answer(e, texts={ErrorKind.NOT_FOUND: "Mailbox does not exist"}) from e
    selected = Selected(mailbox, readonly or bool(getattr(mailbox, "readonly", False)), session.wake)
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
    w.write(b"* %d EXISTS\r\n* %d RECENT\r\n" % (len(uids), selected.recent))
    if first_unseen:
        w.write(b"* OK [UNSEEN %d] First unseen message\r\n" % first_unseen)
    w.write(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % mailbox.uidvalidity)
    w.write(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % mailbox.uidnext)
    w.write(b"* OK [MAILBOXID (%s)] Ok\r\n" % mailbox.guid.encode("ascii"))
    session.debug("selected {mailbox}", mailbox=name)
    if selected.readonly:
        return Done("Examine completed", "READ-ONLY")
    return Done("Select completed", "READ-WRITE")


# --- the mailbox list -------------------------------------------------------------------------

@command("CREATE", AUTH)
async def create(session, tag: str, args: Args):
    name = mailbox_arg(session, args, trailing_separator=True)
    args.end()
    if name == names.INBOX:
        raise storage_answer(StorageError(ErrorKind.EXISTS), texts={ErrorKind.EXISTS: "INBOX always exists"})
    info = await session.user.create_mailbox(name)
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
    await session.user.delete_mailbox(name)
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


def _list_args(session, args: Args) -> tuple[str, str]:
    reference = names.decode(args.astring("reference name"), session.utf8)
    pattern = names.decode(args.astring("mailbox pattern"), session.utf8)
    args.end()
    return reference, pattern


@command("LIST", AUTH)
async def list_(session, tag: str, args: Args):
    """RFC 3501 LIST with CHILDREN (RFC 3348) and SPECIAL-USE (RFC 6154) attributes; a missing
    parent of listed mailboxes shows as ``\\Noselect``."""
    if isinstance(args.peek(), list):
        raise bad("LIST selection options are not supported")
    reference, pattern = _list_args(session, args)
    w = session.writer
    if pattern == "":
        # The hierarchy delimiter and the root of the reference (RFC 3501 6.3.8).
        root = reference.split("/", 1)[0] + "/" if "/" in reference else ""
        w.write(b'* LIST (\\Noselect) "/" ' + names.encode(root, session.utf8) + CRLF)
        return "LIST completed"
    infos = await session.user.list_mailboxes()
    by_name = {info.name: info for info in infos}
    existing, implied = names.with_parents(by_name)
    parents = names.parents_with_children(existing)
    regex = names.pattern_regex(reference, pattern)
    out = []
    for name in _ordered(existing | implied):
        if not regex.match(name):
            continue
        attrs = []
        if name in implied:
            attrs.append("\\Noselect")
        attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
        info = by_name.get(name)
        if info is not None:
            attrs.extend(sorted(info.special_use))
        out.append(b"* LIST (" + " ".join(attrs).encode() + b') "/" ' + names.encode(name, session.utf8) + CRLF)
    w.write(b"".join(out))
    return "LIST completed"


@command("LSUB", AUTH)
async def lsub(session, tag: str, args: Args):
    reference, pattern = _list_args(session, args)
    subscribed = set(await session.user.subscriptions())
    regex = names.pattern_regex(reference, pattern)
    _, implied = names.with_parents(subscribed)
    out = []
    for name in _ordered(subscribed | implied):
        if not regex.match(name):
            continue
        if name in implied:
            # RFC 3501 6.3.9: a parent shown only because a child is subscribed is \Noselect.
            if "%" not in pattern:
                continue
            attrs = b"(\\Noselect)"
        else:
            attrs = b"()"
        out.append(b"* LSUB " + attrs + b' "/" ' + names.encode(name, session.utf8) + CRLF)
    session.writer.write(b"".join(out))
    return "LSUB completed"


def _ordered(mailbox_names) -> list:
    return sorted(mailbox_names, key=lambda n: (n != names.INBOX, n))


# --- STATUS -----------------------------------------------------------------------------------

@command("STATUS", AUTH)
async def status(session, tag: str, args: Args):
    name = mailbox_arg(session, args)
    items = args.list("status data item names")
    args.end()
    wanted = []
    while items.more():
        item = items.keyword("status data item")
        if item not in STATUS_ITEMS:
            raise bad(f"Unknown STATUS item {item[:30]}")
        wanted.append(item)
    if not wanted:
        raise bad("Empty STATUS item list")
    st = await session.user.status(name)
    values = {"MESSAGES": st.messages, "RECENT": st.recent, "UIDNEXT": st.uidnext,
              "UIDVALIDITY": st.uidvalidity, "UNSEEN": st.unseen, "SIZE": st.size, "DELETED": st.deleted}
    values.update(MAILBOXID=f"({st.guid})", APPENDLIMIT=session.config.max_literal_size)
    body = " ".join(f"{item} {values[item]}" for item in wanted)
    session.writer.write(b"* STATUS " + names.encode(name, session.utf8) + b" (" + body.encode() + b")" + CRLF)
    return "STATUS completed"
