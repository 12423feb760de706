"""CONDSTORE and QRESYNC (RFC 7162): the command parameters and the resynchronisation answers.

Per-message mod-sequences come from the index (``MessageInfo.modseq``), the expunge history from
``Mailbox.vanished_since``.  When that history does not reach back far enough, VANISHED (EARLIER)
reports every UID of the asked range that is not in the mailbox (RFC 7162 3.2.5.1 allows it);
the known-sequence-set / known-uid-set hint is then not needed and is only checked for syntax.
"""

from __future__ import annotations

import bisect
import dataclasses

from .errors import bad
from .extensions import enable_condstore, qresync
from .parser import Args, Atom
from .seqset import InvalidSequenceSet, SequenceSet, format_uids

MAX_MODSEQ = 2 ** 63 - 1


def mod_sequence(args: Args, what: str, allow_zero: bool = True) -> int:
    """A mod-sequence value (RFC 7162: 1*DIGIT up to 2^63-1)."""
    value = args.number(what, maximum=MAX_MODSEQ)
    if value == 0 and not allow_zero:
        raise bad(f"Invalid {what}")
    return value


# --- SELECT / EXAMINE parameters ----------------------------------------------------------------

@dataclasses.dataclass
class QresyncParams:
    uidvalidity: int
    modseq: int
    known: tuple | None = None        # known-uids as inclusive UID ranges


@dataclasses.dataclass
class SelectParams:
    condstore: bool = False
    qresync: QresyncParams | None = None


def parse_select_params(session, args: Args) -> SelectParams:
    """``(CONDSTORE)`` / ``(QRESYNC (uidvalidity modseq [known-uids [(seqs uids)]]))``."""
    params = SelectParams()
    if not args.more():
        return params
    items = args.list("select parameters")
    while items.more():
        name = items.keyword("select parameter")
        if name == "CONDSTORE":
            params.condstore = True
        elif name == "QRESYNC":
            if not qresync(session):
                raise bad("QRESYNC must be enabled first (ENABLE QRESYNC)")
            q = items.list("QRESYNC parameters")
            uidvalidity = q.number("UIDVALIDITY", nonzero=True)
            modseq = mod_sequence(q, "mod-sequence")
            known = None
            if q.more() and not isinstance(q.peek(), list):
                known = uid_set_ranges(q.atom("known UIDs"))
            if q.more():
                match = q.list("sequence match data")
                seqs = match.atom("known sequence set")
                uids = match.atom("known UID set")
                match.end()
                for text in (seqs, uids):
                    try:
                        if SequenceSet.parse(text).saved:
                            raise InvalidSequenceSet("$ not allowed here")
                    except InvalidSequenceSet as e:
                        raise bad(str(e)) from None
            q.end()
            params.qresync = QresyncParams(uidvalidity, modseq, known)
        else:
            raise bad(f"Unknown select parameter {name[:30]}")
    args.end()
    return params


def uid_set_ranges(text: str) -> tuple:
    """A UID set without ``*`` or ``$`` (QRESYNC known-uids) as sorted inclusive ranges."""
    try:
        seqset = SequenceSet.parse(text)
    except InvalidSequenceSet as e:
        raise bad(str(e)) from None
    if seqset.saved or any(0 in r for r in seqset.ranges):
        raise bad("Known UIDs must not use * or $")
    return merge_ranges(tuple(sorted(r)) for r in seqset.ranges)


def uid_set_ranges_of(text, top: int) -> tuple:
    """The inclusive UID ranges a UID set names, ``*`` standing for ``top`` (for VANISHED, the
    highest UID ever given, so ``1:*`` covers messages above the last one left)."""
    try:
        seqset = SequenceSet.parse(text)
    except InvalidSequenceSet as e:
        raise bad(str(e)) from None
    if seqset.saved:
        return ()
    return merge_ranges(tuple(sorted((first or top, last or top))) for first, last in seqset.ranges)


def merge_ranges(ranges) -> tuple:
    out: list = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def format_ranges(ranges) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in ranges)


def in_ranges(uid: int, ranges) -> bool:
    return any(lo <= uid <= hi for lo, hi in ranges)


def missing_ranges(ranges, present) -> tuple:
    """Parts of the inclusive UID ``ranges`` holding no UID of ascending ``present``."""
    out = []
    for lo, hi in ranges:
        i = bisect.bisect_left(present, lo)
        cur = lo
        while i < len(present) and present[i] <= hi:
            if present[i] > cur:
                out.append((cur, present[i] - 1))
            cur = present[i] + 1
            i += 1
        if cur <= hi:
            out.append((cur, hi))
    return tuple(out)


def vanished_text(mailbox, modseq: int, ranges) -> str:
    """UIDs within ``ranges`` expunged after ``modseq``, as a UID set text ("" if none)."""
    if not ranges:
        return ""
    gone = mailbox.vanished_since(modseq)
    if gone is None:
        # The history is shorter than asked for: every UID not in the mailbox has vanished.
        top = mailbox.uidnext - 1
        clipped = tuple((lo, min(hi, top)) for lo, hi in ranges if lo <= top)
        return format_ranges(missing_ranges(clipped, mailbox.uids()))
    return format_uids(u for u in gone if in_ranges(u, ranges))


async def resync_select(session, selected, q: QresyncParams) -> None:
    """After SELECT (QRESYNC ...): VANISHED (EARLIER) for what went away since the client's
    modseq, then FETCH (UID FLAGS MODSEQ) for what changed (RFC 7162 3.2.5)."""
    mailbox = selected.mailbox
    if q.uidvalidity != mailbox.uidvalidity:
        return
    w = session.writer
    ranges = q.known if q.known is not None else ((1, max(1, mailbox.uidnext - 1)),)
    text = vanished_text(mailbox, q.modseq, ranges)
    if text:
        w.write(b"* VANISHED (EARLIER) " + text.encode() + b"\r\n")
    out = []
    for msn, info in enumerate(mailbox.all_info(), 1):
        if info is None or info.modseq <= q.modseq:
            continue
        if q.known is not None and not in_ranges(info.uid, q.known):
            continue
        out.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
                   % (msn, info.uid, selected.flags(info), info.modseq))
        if len(out) >= 256:
            w.write(b"".join(out))
            out = []
            if w.paused:
                await w.drain()
    if out:
        w.write(b"".join(out))


# --- FETCH and STORE modifiers ------------------------------------------------------------------

@dataclasses.dataclass
class FetchModifiers:
    changedsince: int | None = None
    vanished: bool = False


def parse_fetch_modifiers(session, args: Args, uid: bool) -> FetchModifiers:
    """``(CHANGEDSINCE n [VANISHED])`` after the fetch attributes."""
    mods = FetchModifiers()
    if not args.more():
        return mods
    items = args.list("fetch modifiers")
    while items.more():
        name = items.keyword("fetch modifier")
        if name == "CHANGEDSINCE":
            mods.changedsince = mod_sequence(items, "CHANGEDSINCE mod-sequence")
        elif name == "VANISHED":
            if not uid:
                raise bad("VANISHED is only allowed with UID FETCH")
            if not qresync(session):
                raise bad("VANISHED needs QRESYNC to be enabled")
            mods.vanished = True
        else:
            raise bad(f"Unknown fetch modifier {name[:30]}")
    args.end()
    if mods.vanished and mods.changedsince is None:
        raise bad("VANISHED needs CHANGEDSINCE")
    if mods.changedsince is not None:
        enable_condstore(session)
    return mods


def parse_store_modifiers(session, args: Args) -> int | None:
    """``(UNCHANGEDSINCE n)`` before the store data item: the modseq, or None."""
    if not isinstance(args.peek(), list):
        return None
    items = args.list("store modifiers")
    unchanged_since = None
    while items.more():
        name = items.keyword("store modifier")
        if name != "UNCHANGEDSINCE" or unchanged_since is not None:
            raise bad(f"Unknown store modifier {name[:30]}")
        unchanged_since = mod_sequence(items, "UNCHANGEDSINCE mod-sequence")
    if unchanged_since is None:
        raise bad("Empty store modifier list")
    enable_condstore(session)
    return unchanged_since


def is_atom(item, word: str) -> bool:
    return isinstance(item, Atom) and item.upper() == word
