"""LIST with LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), CHILDREN (RFC 3348) and
SPECIAL-USE (RFC 6154); LSUB.

Attributes always carry \\HasChildren / \\HasNoChildren and the special uses.  A name that does not
exist but has children (a subscription's parent, say) is ``\\Noselect`` in a plain IMAP4rev1 LIST
and ``\\NonExistent`` in an extended one or under IMAP4rev2 (RFC 9051 7.3.1).
"""

from __future__ import annotations

import dataclasses

from mailserver.storage.errors import StorageError

from .. import names
from ..errors import bad
from ..parser import Args, String
from ..extensions import rev2
from ..response import CRLF
from . import AUTH, command
from .mailboxes import status_item, status_values

_SELECTION = ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE")
_RETURN = ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS")
MAX_PATTERNS = 100


@dataclasses.dataclass
class ListRequest:
    selection: set
    reference: str
    patterns: list
    returns: set
    status_items: list
    extended: bool


def _parse(session, args: Args) -> ListRequest:
    selection: set = set()
    extended = False
    if isinstance(args.peek(), list):
        extended = True
        items = args.list("selection options")
        while items.more():
            opt = items.keyword("selection option")
            if opt not in _SELECTION:
                raise bad(f"Unknown LIST selection option {opt[:30]}")
            selection.add(opt)
        if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
            raise bad("RECURSIVEMATCH needs another selection option")
    reference = names.decode(args.astring("reference name"), session.utf8)
    if isinstance(args.peek(), list):
        extended = True
        plist = args.list("mailbox patterns")
        raw_patterns = []
        while plist.more():
            raw_patterns.append(plist.astring("mailbox pattern"))
        if not raw_patterns or len(raw_patterns) > MAX_PATTERNS:
            raise bad("Expected 1 to 100 mailbox patterns")
    else:
        raw_patterns = [args.astring("mailbox pattern")]
    patterns = [names.decode(p, session.utf8) for p in raw_patterns]
    returns: set = set()
    status_items: list = []
    if args.peek_atom() == "RETURN":
        extended = True
        args.next("RETURN")
        items = args.list("return options")
        while items.more():
            opt = items.keyword("return option")
            if opt not in _RETURN:
                raise bad(f"Unknown LIST return option {opt[:30]}")
            returns.add(opt)
            if opt == "STATUS":
                wanted = items.list("status items")
                while wanted.more():
                    status_items.append(status_item(session, wanted.keyword("status item")))
                if not status_items:
                    raise bad("Empty STATUS item list")
    args.end()
    return ListRequest(selection, reference, patterns, returns, status_items, extended)


def _ordered(mailbox_names) -> list:
    return sorted(mailbox_names, key=lambda n: (n != names.INBOX, n))


@command("LIST", AUTH)
async def list_(session, tag: str, args: Args):
    req = _parse(session, args)
    w = session.writer
    if req.patterns == [""] and not req.selection:
        # The hierarchy delimiter and the root of the reference (RFC 3501 6.3.8).
        root = req.reference.split("/", 1)[0] + "/" if "/" in req.reference else ""
        w.write(b'* LIST (\\Noselect) "/" ' + names.encode(root, session.utf8) + CRLF)
        return "LIST completed"
    infos = await session.user.list_mailboxes()
    by_name = {info.name: info for info in infos}
    subscribed = set(await session.user.subscriptions()) if (
        "SUBSCRIBED" in req.selection or "SUBSCRIBED" in req.returns) else set()
    existing = set(by_name)
    universe = existing | subscribed if "SUBSCRIBED" in req.selection else existing
    _, implied = names.with_parents(universe)
    parents = names.parents_with_children(universe)
    regexes = [names.pattern_regex(req.reference, p) for p in req.patterns if p != ""]
    nonexistent_word = "\\NonExistent" if (req.extended or rev2(session)) else "\\Noselect"

    def selected_by_criteria(name: str) -> bool:
        if "SUBSCRIBED" in req.selection and name not in subscribed:
            return False
        if "SPECIAL-USE" in req.selection:
            info = by_name.get(name)
            if info is None or not info.special_use:
                return False
        return True

    rows = []
    for name in _ordered(universe | implied):
        if not any(r.match(name) for r in regexes):
            continue
        extra = b""
        if not selected_by_criteria(name):
            # RECURSIVEMATCH (RFC 5258 3.5): a parent shown for a matching descendant.
            if "RECURSIVEMATCH" in req.selection and "SUBSCRIBED" in req.selection and any(
                    names_is_child(s, name) for s in subscribed):
                extra = b' ("CHILDINFO" ("SUBSCRIBED"))'
            else:
                continue
        attrs = []
        info = by_name.get(name)
        if info is None:
            attrs.append(nonexistent_word)
        attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
        if name in subscribed and ("SUBSCRIBED" in req.returns or "SUBSCRIBED" in req.selection):
            attrs.append("\\Subscribed")
        if info is not None:
            attrs.extend(sorted(info.special_use))
        rows.append((name, info, b"* LIST (" + " ".join(attrs).encode() + b') "/" '
                     + names.encode(name, session.utf8) + extra + CRLF))
    for name, info, line in rows:
        w.write(line)
        if req.status_items and info is not None:
            await _status(session, name, req.status_items)
        if w.paused:
            await w.drain()
    return "LIST completed"


def names_is_child(name: str, parent: str) -> bool:
    return name.startswith(parent + "/")


async def _status(session, name: str, items: list) -> None:
    """RFC 5819: a STATUS response right after the mailbox's LIST response."""
    try:
        st = await session.user.status(name)
    except StorageError as e:
        session.info("LIST-STATUS of {mailbox}: {kind}", mailbox=name, kind=e.kind.value)
        return
    values = status_values(st, session)
    body = " ".join(f"{item} {values[item]}" for item in items)
    session.writer.write(b"* STATUS " + names.encode(name, session.utf8) + b" (" + body.encode() + b")" + CRLF)


@command("LSUB", AUTH)
async def lsub(session, tag: str, args: Args):
    reference = names.decode(args.astring("reference name"), session.utf8)
    pattern = names.decode(args.astring("mailbox pattern"), session.utf8)
    args.end()
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


def use_list(args: Args) -> list:
    """CREATE's ``(USE (\\Archive ...))`` parameter (RFC 6154 3): the special uses, or []."""
    if not isinstance(args.peek(), list):
        return []
    params = args.list("CREATE parameters")
    uses: list = []
    while params.more():
        name = params.keyword("CREATE parameter")
        if name != "USE":
            raise bad(f"Unknown CREATE parameter {name[:30]}")
        items = params.list("special uses")
        while items.more():
            item = items.next("special use")
            if isinstance(item, String):
                raise bad("Expected a special-use attribute")
            uses.append(str(item))
    return uses

