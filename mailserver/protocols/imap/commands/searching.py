"""SEARCH (RFC 3501/9051 with ESEARCH, SEARCHRES, CONTEXT=SEARCH), SORT (RFC 5256, ESORT,
CONTEXT=SORT), THREAD (RFC 5256) and CANCELUPDATE (RFC 5267).

IMAP4rev1 sessions get ``* SEARCH`` unless they say RETURN; once IMAP4rev2 is enabled SEARCH
always answers ``* ESEARCH`` (RFC 9051 6.4.4).  Sorting and threading are storage's
(``mailserver.storage.sort`` / ``thread``); this module parses and writes.
"""

from __future__ import annotations

from mailserver.storage import sort as storage_sort
from mailserver.storage import thread as storage_thread

from ..errors import bad
from ..esearch import (MAX_UPDATE_CONTEXTS, UpdateContext, esearch_line, numbers_of, parse_return,
                       result_items, saved_result)
from ..extensions import enable_condstore
from ..parser import Args
from ..response import string
from ..search import parse_search, uses_modseq
from . import SELECTED, Sync, command


async def _run_search(session, args: Args, charset=None):
    selected = session.selected
    if "UTF8=ACCEPT" in session.enabled and charset is None and args.peek_atom() == "CHARSET":
        raise bad("No CHARSET after ENABLE UTF8=ACCEPT: search strings are UTF-8")  # RFC 6855 section 3
    program = parse_search(args, selected.uids(), selected.saved, charset=charset,
                           max_keys=session.config.max_search_keys)
    modseq_wanted = uses_modseq(program)
    if modseq_wanted:
        enable_condstore(session)
    found = await selected.mailbox.search(program)
    return program, found, modseq_wanted


def _highest_modseq(selected, uids) -> int | None:
    best = None
    for u in uids:
        info = selected.mailbox.info(u)
        if info is not None and (best is None or info.modseq > best):
            best = info.modseq
    return best


def _register_update(session, tag: str, context: UpdateContext) -> None:
    contexts = session.selected.contexts
    if tag not in contexts and len(contexts) >= MAX_UPDATE_CONTEXTS:
        session.writer.write(b"* NO [NOUPDATE " + string(tag) + b"] Too many searches kept up to date\r\n")
        return
    contexts[tag] = context


@command("SEARCH", SELECTED, sync=Sync.NO_EXPUNGE, uid=True)
async def search(session, tag: str, args: Args, uid: bool = False):
    selected = session.selected
    opts = parse_return(args)
    try:
        program, found, modseq_wanted = await _run_search(session, args)
    except Exception:
        if opts is not None and "SAVE" in opts:
            selected.saved = []        # RFC 5182 2.1: a failed SAVE search empties $
        raise
    numbers = numbers_of(selected, found, uid)
    modseq = _highest_modseq(selected, found) if modseq_wanted else None
    w = session.writer
    if opts is None and not selected.rev2:
        tail = b" (MODSEQ %d)" % modseq if modseq is not None and numbers else b""
        w.write(b"* SEARCH" + b"".join(b" %d" % n for n in numbers) + tail + b"\r\n")
        return "SEARCH completed"
    if opts is None:
        from ..esearch import ReturnOptions
        opts = ReturnOptions({"ALL"})
    if opts.result_wanted:
        w.write(esearch_line(tag, uid, result_items(opts, numbers, False, modseq)))
    if "SAVE" in opts:
        selected.saved = saved_result(opts, found)
    if "UPDATE" in opts:
        _register_update(session, tag, UpdateContext(tag, program, uid, list(found)))
    return "SEARCH completed"


# --- SORT -------------------------------------------------------------------------------------

def _sort_criteria(args: Args) -> list:
    items = args.list("sort criteria")
    criteria = []
    reverse = False
    while items.more():
        key = items.keyword("sort key")
        if key == "REVERSE":
            if reverse:
                raise bad("REVERSE twice")
            reverse = True
            continue
        if key not in storage_sort.KEYS:
            raise bad(f"Unknown sort key {key[:30]}")
        criteria.append(storage_sort.Criterion(key, reverse))
        reverse = False
    if reverse or not criteria:
        raise bad("Missing sort key")
    return criteria


def _charset(args: Args) -> str:
    return args.astring("charset").decode("ascii", "replace")


@command("SORT", SELECTED, sync=Sync.NO_EXPUNGE, uid=True)
async def sort(session, tag: str, args: Args, uid: bool = False):
    selected = session.selected
    opts = parse_return(args)
    criteria = _sort_criteria(args)
    charset = _charset(args)
    try:
        program, found, modseq_wanted = await _run_search(session, args, charset)
    except Exception:
        if opts is not None and "SAVE" in opts:
            selected.saved = []
        raise
    ordered = await storage_sort.sort(selected.mailbox, found, criteria)
    numbers = numbers_of(selected, ordered, uid)
    modseq = _highest_modseq(selected, found) if modseq_wanted else None
    w = session.writer
    if opts is None:
        tail = b" (MODSEQ %d)" % modseq if modseq is not None and numbers else b""
        w.write(b"* SORT" + b"".join(b" %d" % n for n in numbers) + tail + b"\r\n")
        return "SORT completed"
    if opts.result_wanted:
        w.write(esearch_line(tag, uid, result_items(opts, numbers, True, modseq)))
    if "SAVE" in opts:
        selected.saved = saved_result(opts, found)
    if "UPDATE" in opts:
        _register_update(session, tag, UpdateContext(tag, program, uid, list(ordered), criteria))
    return "SORT completed"


# --- THREAD -----------------------------------------------------------------------------------

def format_threads(roots, number) -> bytes:
    """RFC 5256 thread-list: ``(2)(3 6 (4 23)(44 7 96))``; a dummy is a list without a number."""
    out: list = []
    # Work items: a node to open as "(" chain ")", or a literal string.
    stack: list = [("node", r) for r in reversed(roots)]
    while stack:
        kind, item = stack.pop()
        if kind == "text":
            out.append(item)
            continue
        out.append("(")
        node = item
        nums = []
        while node.uid is not None and len(node.children) == 1:
            nums.append(str(number(node.uid)))
            node = node.children[0]
        if node.uid is not None:
            nums.append(str(number(node.uid)))
        out.append(" ".join(nums))
        if node.children:
            if nums:
                out.append(" ")
            stack.append(("text", ")"))
            stack.extend(("node", c) for c in reversed(node.children))
        else:
            out.append(")")
    return "".join(out).encode()


@command("THREAD", SELECTED, sync=Sync.NO_EXPUNGE, uid=True)
async def thread(session, tag: str, args: Args, uid: bool = False):
    selected = session.selected
    algorithm = args.keyword("threading algorithm")
    if algorithm not in storage_thread.ALGORITHMS:
        raise bad(f"Unknown threading algorithm {algorithm[:30]}")
    charset = _charset(args)
    _, found, _ = await _run_search(session, args, charset)
    roots = await storage_thread.thread(selected.mailbox, found, algorithm)
    number = (lambda u: u) if uid else selected.msn
    session.writer.write(b"* THREAD " + format_threads(roots, number) + b"\r\n" if roots else b"* THREAD\r\n")
    return "THREAD completed"


@command("CANCELUPDATE", SELECTED, sync=Sync.NO_EXPUNGE)
async def cancelupdate(session, tag: str, args: Args):
    """RFC 5267 4.4: stop updates for the searches started by the given tags."""
    if not args.more():
        raise bad("Missing tag")
    tags = []
    while args.more():
        tags.append(args.string("tag").decode("ascii", "replace"))
    for t in tags:
        session.selected.contexts.pop(t, None)
    return "CANCELUPDATE completed"
