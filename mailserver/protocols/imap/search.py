"""IMAP SEARCH keys (RFC 3501 6.4.4) to ``mailserver.storage.search`` nodes.

``parse_search(args, view, uid_mode, saved)`` reads ``[CHARSET x] key...`` from a command's
arguments and returns the program (a tree of nodes) for ``Mailbox.search``.  Sequence sets are
turned into UID ranges against the session's view here, so storage only ever sees UIDs.
"""

from __future__ import annotations

import datetime
import re
from typing import Sequence

from mailserver.storage import api
from mailserver.storage import search as s

from .errors import CommandError, no
from .parser import Args, Atom, BadSyntax, MAX_DEPTH, String
from .seqset import InvalidSequenceSet, SequenceSet, uid_ranges

CHARSETS = ("UTF-8", "US-ASCII")

_FLAG_KEYS = {
    "ANSWERED": api.ANSWERED, "DELETED": api.DELETED, "DRAFT": api.DRAFT,
    "FLAGGED": api.FLAGGED, "SEEN": api.SEEN,
}
_HEADER_KEYS = {"SUBJECT": "Subject", "FROM": "From", "TO": "To", "CC": "Cc", "BCC": "Bcc"}
_DATE_KEYS = {
    "BEFORE": ("internal", "before"), "ON": ("internal", "on"), "SINCE": ("internal", "since"),
    "SENTBEFORE": ("sent", "before"), "SENTON": ("sent", "on"), "SENTSINCE": ("sent", "since"),
    "SAVEDBEFORE": ("save", "before"), "SAVEDON": ("save", "on"), "SAVEDSINCE": ("save", "since"),
}
_MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})\Z")


class _Context:
    __slots__ = ("view", "uid_mode", "saved", "charset", "keys_left")

    def __init__(self, view, uid_mode, saved, charset, max_keys=None):
        self.view, self.uid_mode, self.saved, self.charset = view, uid_mode, saved, charset
        self.keys_left = max_keys


def parse_search(args: Args, view: Sequence[int], saved: Sequence[int] | None = None,
                 charset: str | None = None, max_keys: int | None = None) -> s.Node:
    """The search program for the rest of ``args`` (``[CHARSET name] key *(SP key)``).

    ``view``: the selected mailbox's UIDs, ascending, to resolve sequence numbers.
    ``saved``: the SEARCHRES result (``$``).  ``charset``: given apart (SORT, THREAD) instead
    of by a CHARSET key.  ``max_keys``: most search keys allowed (each key, NOT, OR and
    parenthesised list counts one).  Raises BadSyntax or CommandError (``NO [BADCHARSET]`` for
    an unknown charset, ``BAD [LIMIT]`` past ``max_keys``).
    """
    if charset is None and args.peek_atom() == "CHARSET":
        args.next("CHARSET")
        charset = args.astring("charset").decode("ascii", "replace")
    charset = (charset or "UTF-8").upper()
    if charset not in CHARSETS:
        raise no("Unsupported charset", "BADCHARSET (" + " ".join(CHARSETS) + ")")
    ctx = _Context(view, False, saved, charset, max_keys)
    keys = []
    while args.more():
        keys.append(_key(args, ctx, 0))
    if not keys:
        raise BadSyntax("Missing search key")
    return keys[0] if len(keys) == 1 else s.And(tuple(keys))


def uses_modseq(program: s.Node) -> bool:
    """Does the program have a MODSEQ key (then the result reports the highest mod-sequence)?"""
    stack = [program]
    while stack:
        node = stack.pop()
        if isinstance(node, s.ModSeq):
            return True
        if isinstance(node, s.And):
            stack.extend(node.items)
        elif isinstance(node, s.Or):
            stack.extend((node.left, node.right))
        elif isinstance(node, s.Not):
            stack.append(node.item)
    return False


def _key(args: Args, ctx: _Context, depth: int) -> s.Node:
    if depth > MAX_DEPTH:
        raise BadSyntax("Search program too deeply nested")
    if ctx.keys_left is not None:
        ctx.keys_left -= 1
        if ctx.keys_left < 0:
            raise CommandError("BAD", "Search program has too many keys", "LIMIT")
    item = args.next("search key")
    if isinstance(item, list):
        inner = Args(item)
        keys = []
        while inner.more():
            keys.append(_key(inner, ctx, depth + 1))
        if not keys:
            raise BadSyntax("Empty search key list")
        return keys[0] if len(keys) == 1 else s.And(tuple(keys))
    if not isinstance(item, Atom):
        raise BadSyntax("Expected a search key")
    key = item.upper()
    if key == "ALL":
        return s.All()
    if key in _FLAG_KEYS:
        return s.Flag(_FLAG_KEYS[key])
    if key.startswith("UN") and key[2:] in _FLAG_KEYS:
        return s.Not(s.Flag(_FLAG_KEYS[key[2:]]))
    if key == "KEYWORD":
        return s.Flag(_keyword(args))
    if key == "UNKEYWORD":
        return s.Not(s.Flag(_keyword(args)))
    if key == "NEW":
        return s.And((s.Recent(), s.Not(s.Flag(api.SEEN))))
    if key == "OLD":
        return s.Not(s.Recent())
    if key == "RECENT":
        return s.Recent()
    if key == "LARGER":
        return s.Size(True, args.number("size", maximum=2 ** 63 - 1))
    if key == "SMALLER":
        return s.Size(False, args.number("size", maximum=2 ** 63 - 1))
    if key in _DATE_KEYS:
        field, op = _DATE_KEYS[key]
        return s.Date(field, op, _date(args))
    if key in _HEADER_KEYS:
        return s.Header(_HEADER_KEYS[key], _text(args, ctx, "search string"))
    if key == "HEADER":
        name = _text(args, ctx, "header field name")
        if not name or any(c <= " " or c == ":" or c > "~" for c in name):
            raise BadSyntax("Invalid header field name")
        return s.Header(name, _text(args, ctx, "search string"))
    if key == "BODY":
        return s.Body(_text(args, ctx, "search string"))
    if key == "TEXT":
        return s.Text(_text(args, ctx, "search string"))
    if key == "NOT":
        return s.Not(_key(args, ctx, depth + 1))
    if key == "OR":
        left = _key(args, ctx, depth + 1)
        return s.Or(left, _key(args, ctx, depth + 1))
    if key == "UID":
        return s.UidIn(_set(args.atom("UID set"), ctx, uid=True))
    if key in ("OLDER", "YOUNGER"):
        # WITHIN (RFC 5032): INTERNALDATE more / at most that many seconds ago.
        return s.Age(key == "OLDER", args.number("interval", nonzero=True))
    if key == "MODSEQ":
        # CONDSTORE (RFC 7162 3.1.5).  Per-flag mod-sequences are not kept, so an entry name
        # and type are checked and the message's own mod-sequence is compared (as Dovecot does).
        if isinstance(args.peek(), String):
            entry = args.string("entry name")
            if not entry.lower().startswith(b"/flags/"):
                raise BadSyntax("Invalid MODSEQ entry name")
            if args.keyword("entry type") not in ("PRIV", "SHARED", "ALL"):
                raise BadSyntax("Invalid MODSEQ entry type")
        return s.ModSeq(args.number("mod-sequence", maximum=2 ** 63 - 1))
    if key == "SAVEDATESUPPORTED":      # RFC 8514: every mailbox here keeps save dates
        return s.All()
    if key == "EMAILID":                # RFC 8474
        return s.EmailId(args.atom("email id"))
    if key == "THREADID":               # threads are not indexed: THREADID is NIL everywhere
        args.atom("thread id")
        return s.Not(s.All())
    if key[:1].isdigit() or key[:1] in "*$":
        return s.UidIn(_set(item, ctx, uid=False))
    raise BadSyntax(f"Unknown search key {key[:40]}")


def _set(text: str, ctx: _Context, uid: bool) -> tuple:
    try:
        seqset = SequenceSet.parse(text)
    except InvalidSequenceSet as e:
        raise BadSyntax(str(e)) from None
    if seqset.saved and ctx.saved is None:
        ctx.saved = ()
    if uid or seqset.saved:
        return seqset.uid_ranges(ctx.view, uid=True, saved=ctx.saved)
    # Sequence numbers beyond the mailbox simply match nothing in a search.
    count = len(ctx.view)
    spans = []
    for first, last in seqset.ranges:
        lo, hi = sorted((first or count, last or count))
        hi = min(hi, count)
        if lo <= hi:
            spans.append((lo, hi))
    uids: list[int] = []
    for lo, hi in sorted(spans):
        uids.extend(ctx.view[lo - 1:hi])
    return uid_ranges(sorted(set(uids)))


def _keyword(args: Args) -> str:
    word = args.atom("keyword")
    if word.startswith("\\"):
        # KEYWORD \Seen is not a keyword, but clients send it: treat it as the flag.
        for flag in api.SYSTEM_FLAGS:
            if word.lower() == flag.lower():
                return flag
        raise BadSyntax("Invalid keyword")
    if any(c in '(){%*"\\]' for c in word):
        raise BadSyntax("Invalid keyword")
    return word


def _text(args: Args, ctx: _Context, what: str) -> str:
    raw = args.astring(what)
    try:
        return raw.decode("ascii" if ctx.charset == "US-ASCII" else "utf-8")
    except UnicodeDecodeError:
        raise CommandError("NO", f"{what.capitalize()} is not valid {ctx.charset}",
                           "BADCHARSET (" + " ".join(CHARSETS) + ")") from None


def _date(args: Args) -> datetime.date:
    raw = args.astring("date")
    m = _DATE.match(raw.decode("ascii", "replace"))
    month = _MONTHS.get(m.group(2).upper()) if m else None
    if not m or not month:
        raise BadSyntax("Invalid date (expected e.g. 1-Feb-2024)")
    try:
        return datetime.date(int(m.group(3)), month, int(m.group(1)))
    except ValueError:
        raise BadSyntax("Invalid date") from None

