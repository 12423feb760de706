"""ESEARCH results (RFC 4731, RFC 5267 ESORT/PARTIAL, RFC 5182 SAVE) and searches kept up to date
(RFC 5267 CONTEXT=SEARCH / CONTEXT=SORT with UPDATE: ADDTO / REMOVEFROM notifications).

A result is a list of UIDs (ascending for SEARCH, in sort order for SORT); ``numbers`` turns it
into what the client asked for (UIDs, or sequence numbers in the session's view).
"""

from __future__ import annotations

import dataclasses

from .errors import bad
from .parser import Args
from .response import string
from .seqset import format_uids

MAX_UPDATE_CONTEXTS = 10
_RESULT_OPTIONS = ("MIN", "MAX", "ALL", "COUNT")


@dataclasses.dataclass
class ReturnOptions:
    """``RETURN (...)`` of SEARCH or SORT.  ``partial``: (first, last) positions, 1-based,
    negative counting from the end (RFC 9394 allows that too)."""

    given: set = dataclasses.field(default_factory=set)
    partial: tuple | None = None

    def __contains__(self, name: str) -> bool:
        return name in self.given

    @property
    def result_wanted(self) -> bool:
        return bool(self.given & set(_RESULT_OPTIONS)) or self.partial is not None


def parse_return(args: Args) -> ReturnOptions | None:
    """``RETURN (options)`` if present (None when absent).  ``RETURN ()`` means ALL."""
    if args.peek_atom() != "RETURN":
        return None
    args.next("RETURN")
    items = args.list("return options")
    opts = ReturnOptions()
    while items.more():
        name = items.keyword("return option")
        if name == "PARTIAL":
            opts.partial = _partial_range(items.atom("partial range"))
        elif name in _RESULT_OPTIONS or name in ("SAVE", "UPDATE", "CONTEXT"):
            opts.given.add(name)
        else:
            raise bad(f"Unknown return option {name[:30]}")
    if opts.partial is not None and "ALL" in opts.given:
        raise bad("PARTIAL and ALL cannot be used together")
    if not opts.result_wanted and "SAVE" not in opts.given:
        opts.given.add("ALL")
    return opts


def _partial_range(text: str) -> tuple:
    try:
        a, b = text.split(":")
        first, last = int(a), int(b)
    except ValueError:
        raise bad("Invalid partial range") from None
    if first == 0 or last == 0 or (first < 0) != (last < 0) or abs(first) > 2 ** 32 or abs(last) > 2 ** 32:
        raise bad("Invalid partial range")
    return (first, last) if abs(first) <= abs(last) else (last, first)


def partial_slice(result: list, partial: tuple) -> list:
    first, last = partial
    if first > 0:
        return result[first - 1:last]
    n = len(result)
    # -1 is the last element; -1:-3 are the last three (in result order).
    lo, hi = n + last, n + first + 1
    return result[max(0, lo):max(0, hi)]


def ordered_set(numbers) -> str:
    """A sequence set keeping the given order (ESORT ALL): ascending runs become ranges."""
    parts = []
    run_start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if run_start is not None:
            parts.append(str(run_start) if run_start == prev else f"{run_start}:{prev}")
        run_start = prev = n
    if run_start is not None:
        parts.append(str(run_start) if run_start == prev else f"{run_start}:{prev}")
    return ",".join(parts)


def esearch_line(tag: str, uid: bool, items: list) -> bytes:
    head = b"* ESEARCH (TAG " + string(tag) + b")" + (b" UID" if uid else b"")
    return head + b"".join(b" " + i for i in items) + b"\r\n"


def result_items(opts: ReturnOptions, numbers: list, sorted_result: bool, modseq: int | None) -> list:
    """The ESEARCH data items for a result (``numbers`` in result order)."""
    items = []
    if numbers:
        if "MIN" in opts:
            items.append(b"MIN %d" % (numbers[0] if sorted_result else min(numbers)))
        if "MAX" in opts:
            items.append(b"MAX %d" % (numbers[-1] if sorted_result else max(numbers)))
        if "ALL" in opts:
            text = ordered_set(numbers) if sorted_result else format_uids(numbers)
            items.append(b"ALL " + text.encode())
    if "COUNT" in opts:
        items.append(b"COUNT %d" % len(numbers))
    if opts.partial is not None:
        part = partial_slice(numbers, opts.partial)
        rng = "%d:%d" % opts.partial
        body = (ordered_set(part) if sorted_result else format_uids(part)) if part else "NIL"
        items.append(f"PARTIAL ({rng} {body})".encode())
    if modseq is not None and numbers:
        items.append(b"MODSEQ %d" % modseq)
    return items


def saved_result(opts: ReturnOptions, uids: list) -> list:
    """What SAVE keeps (RFC 5182 2.4): MIN and/or MAX alone keep just those; else everything."""
    if not uids:
        return []
    if opts.given & {"MIN", "MAX"} and not opts.given & {"ALL", "COUNT"} and opts.partial is None:
        keep = set()
        if "MIN" in opts:
            keep.add(min(uids))
        if "MAX" in opts:
            keep.add(max(uids))
        return sorted(keep)
    return sorted(uids)


def numbers_of(selected, uids, uid: bool) -> list:
    if uid:
        return list(uids)
    return [n for n in (selected.msn(u) for u in uids) if n]


class UpdateContext:
    """A SEARCH or SORT kept up to date (RETURN (UPDATE)).  ``result``: UIDs in result order."""

    def __init__(self, tag: str, program, uid: bool, result: list, criteria=None):
        self.tag, self.program, self.uid, self.result, self.criteria = tag, program, uid, result, criteria

    async def update(self, selected, changes, own_flags, writer) -> None:
        mailbox = selected.mailbox
        old = self.result
        if changes.expunged:
            # The client removes expunged messages itself (RFC 5267 4.3): no REMOVEFROM.
            gone = set(changes.expunged)
            old = [u for u in old if u not in gone]
        touched = {i.uid for i in changes.appended} | {i.uid for i in changes.flags} | {i.uid for i in own_flags}
        candidates = sorted(u for u in touched if selected.msn(u))
        if not candidates:
            self.result = old
            return
        matched = set(await mailbox.search(self.program, uids=candidates))
        current = set(old)
        added = [u for u in candidates if u in matched and u not in current]
        removed = [u for u in candidates if u not in matched and u in current]
        if not added and not removed:
            self.result = old
            return
        out = []
        if removed:
            if self.criteria is None:
                out.append(esearch_line(self.tag, self.uid, [
                    b"REMOVEFROM (0 " + format_uids(numbers_of(selected, removed, self.uid)).encode() + b")"]))
            else:
                pos = {u: i for i, u in enumerate(old, 1)}
                pairs = b" ".join(b"%d %d" % (pos[u], self._number(selected, u)) for u in removed)
                out.append(esearch_line(self.tag, self.uid, [b"REMOVEFROM (" + pairs + b")"]))
        gone = set(removed)
        kept = [u for u in old if u not in gone]
        if self.criteria is None:
            new = sorted(kept + added)
            if added:
                out.append(esearch_line(self.tag, self.uid, [
                    b"ADDTO (0 " + format_uids(numbers_of(selected, added, self.uid)).encode() + b")"]))
        else:
            from mailserver.storage import sort as storage_sort
            new = await storage_sort.sort(mailbox, kept + added, self.criteria)
            if added:
                pos = {u: i for i, u in enumerate(new, 1)}
                pairs = b" ".join(b"%d %d" % (pos[u], self._number(selected, u))
                                  for u in sorted(added, key=pos.get))
                out.append(esearch_line(self.tag, self.uid, [b"ADDTO (" + pairs + b")"]))
        self.result = new
        writer.write(b"".join(out))

    def _number(self, selected, uid: int) -> int:
        return uid if self.uid else selected.msn(uid)
