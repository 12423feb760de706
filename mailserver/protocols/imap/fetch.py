"""FETCH (RFC 3501 6.4.5): attribute parsing and response building.

Only what the client asked for is requested from storage: FLAGS, UID, INTERNALDATE and
RFC822.SIZE come from the index; ENVELOPE, BODYSTRUCTURE and BODY from the cache; only body
sections read message data (header-only sections of the message read just the header).
Responses are built as bytes, written through the connection's buffered writer, and the loop
waits while the client is slow to read, so memory stays bounded on huge FETCHes.
"""

from __future__ import annotations

import dataclasses
import re

from mailserver.storage import mime
from mailserver.storage.api import SEEN, FetchedMail, FetchItem, StoreMode

from . import binary
from .commands import SELECTED, Sync, command
from .commands.messages import resolve
from .condstore import parse_fetch_modifiers, uid_set_ranges_of, vanished_text
from .extensions import enable_condstore
from .errors import bad, no
from .parser import Args, Atom, String, parse_tokens
from .response import CRLF, astring, date_time, flag_list, literal, nstring
from .selected import RECENT

_HEADER_TEXTS = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT")
_SECTION_ATT = re.compile(r"(BODY|BODY\.PEEK)\[(.*)\](?:<([0-9]+)\.([0-9]+)>)?\Z", re.DOTALL | re.IGNORECASE)
_PART = re.compile(r"[1-9][0-9]{0,8}\Z")
_FIELD_NAME = re.compile(rb"[!-9;-~]+\Z")
_SIMPLE = {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY", "MODSEQ"}
MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
MAX_PART_DEPTH = 64
BIG_LITERAL = 16 * 1024     # literals at least this long are written without copying them
# OBJECTID (RFC 8474), SAVEDATE (RFC 8514), PREVIEW (RFC 8970)
_EXTENSION_ATTS = {"EMAILID", "THREADID", "SAVEDATE", "PREVIEW"}


@dataclasses.dataclass(frozen=True)
class SectionSpec:
    """A body section: ``part`` numbers, ``text`` ("", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT,
    TEXT or MIME) and header ``fields`` (upper-cased names)."""

    part: tuple = ()
    text: str = ""
    fields: tuple = ()

    @property
    def header_only(self) -> bool:
        """Served from the message header alone (no body read)."""
        return not self.part and self.text in _HEADER_TEXTS

    def to_mime(self):
        return mime.Section(self.part, self.text, self.fields)


@dataclasses.dataclass(frozen=True)
class FetchAtt:
    """One requested attribute.  ``kind`` is a simple attribute name or ``SECTION``;
    ``label`` is the name written in the response (``BODY[1.TEXT]``); ``partial`` is
    (offset, length); ``peek``: does not set \\Seen."""

    kind: str
    label: bytes = b""
    section: SectionSpec | None = None
    partial: tuple | None = None
    peek: bool = True


def parse_atts(args: Args) -> list:
    """The attributes of a FETCH command (a macro, one attribute, or a list)."""
    item = args.next("fetch attributes")
    if isinstance(item, Atom) and item.upper() in MACROS:
        return [FetchAtt(name) for name in MACROS[item.upper()]]
    items = item if isinstance(item, list) else [item]
    if not items:
        raise bad("Empty fetch attribute list")
    atts = []
    for x in items:
        if isinstance(x, list) and atts and atts[-1].kind == "PREVIEW":
            _preview_modifiers(x)
            continue
        atts.append(_att(x))
    if not isinstance(item, list) and atts[0].kind == "PREVIEW" and _is_preview_modifiers(args.peek()):
        _preview_modifiers(args.next("PREVIEW modifiers"))
    return atts


def _is_preview_modifiers(item) -> bool:
    return isinstance(item, list) and bool(item) and all(
        isinstance(m, Atom) and m.upper() == "LAZY" for m in item)


def _preview_modifiers(items: list) -> None:
    """RFC 8970 ``PREVIEW (LAZY)``: previews are computed at delivery, so LAZY changes nothing."""
    if not _is_preview_modifiers(items):
        raise bad("Unknown PREVIEW modifier")


def _att(item) -> FetchAtt:
    if not isinstance(item, Atom):
        raise bad("Invalid fetch attribute")
    name = item.upper()
    if name in _SIMPLE or name in _EXTENSION_ATTS:
        return FetchAtt(name)
    if name.startswith("BINARY"):
        kind, label, part, partial, peek = binary.parse(item)
        return FetchAtt(kind, label, SectionSpec(part), partial, peek)
    if name == "RFC822":
        return FetchAtt("SECTION", b"RFC822", SectionSpec(), None, peek=False)
    if name == "RFC822.HEADER":
        return FetchAtt("SECTION", b"RFC822.HEADER", SectionSpec(text="HEADER"), None, peek=True)
    if name == "RFC822.TEXT":
        return FetchAtt("SECTION", b"RFC822.TEXT", SectionSpec(text="TEXT"), None, peek=False)
    m = _SECTION_ATT.match(item)
    if not m:
        raise bad(f"Unknown fetch attribute {item[:40]}")
    section, label = _section(m.group(2))
    partial = None
    if m.group(3) is not None:
        offset, length = int(m.group(3)), int(m.group(4))
        if length == 0 or offset > 2 ** 32 or length > 2 ** 32:
            raise bad("Invalid partial range")
        partial = (offset, length)
        label += b"<%d>" % offset
    return FetchAtt("SECTION", label, section, partial, peek=m.group(1).upper() == "BODY.PEEK")


def _section(inner: str) -> tuple:
    """Parse the inside of ``[...]``: the SectionSpec and the response label ``BODY[...]``."""
    try:
        tokens = parse_tokens(inner.encode("ascii"))
    except ValueError as e:
        raise bad(f"Invalid section: {e}") from None
    if not tokens:
        return SectionSpec(), b"BODY[]"
    spec = tokens[0]
    if not isinstance(spec, Atom):
        raise bad("Invalid section")
    pieces = spec.upper().split(".")
    part = []
    while pieces and _PART.match(pieces[0]):
        part.append(int(pieces.pop(0)))
    if len(part) > MAX_PART_DEPTH:
        raise bad("Section part number too deep")
    text = ".".join(pieces)
    allowed = _HEADER_TEXTS + ("TEXT",) + (("MIME",) if part else ())
    if text and text not in allowed:
        raise bad(f"Invalid section text {text[:30]}")
    fields: tuple = ()
    if text.startswith("HEADER.FIELDS"):
        if len(tokens) != 2 or not isinstance(tokens[1], list) or not tokens[1]:
            raise bad("HEADER.FIELDS needs a list of header field names")
        raw = []
        for f in tokens[1]:
            if not isinstance(f, (Atom, String)):
                raise bad("Invalid header field name")
            value = f.encode("ascii") if isinstance(f, Atom) else bytes(f)
            if not _FIELD_NAME.match(value):
                raise bad("Invalid header field name")
            raw.append(value.decode("ascii"))
        fields = tuple(name.upper() for name in raw)
        # Field names are echoed as the client wrote them: clients look the response up by them.
        label = b"BODY[" + spec.upper().encode() + b" (" + b" ".join(astring(n) for n in raw) + b")]"
    else:
        if len(tokens) != 1:
            raise bad("Invalid section")
        label = b"BODY[" + spec.upper().encode() + b"]"
    return SectionSpec(tuple(part), text, fields), label


def storage_items(atts: list) -> set:
    """The ``FetchItem``s needed to answer ``atts``."""
    items = set()
    for att in atts:
        if att.kind == "ENVELOPE":
            items.add(FetchItem.ENVELOPE)
        elif att.kind == "BODYSTRUCTURE":
            items.add(FetchItem.BODYSTRUCTURE)
        elif att.kind == "BODY":
            items.add(FetchItem.BODY)
        elif att.kind == "PREVIEW":
            items.add(FetchItem.PREVIEW)
        elif att.kind in binary.KINDS:
            items.update((FetchItem.DATA, FetchItem.PARTS))
        elif att.kind == "SECTION":
            if att.section.header_only:
                items.add(FetchItem.HEADER)
            else:
                items.add(FetchItem.DATA)
                if att.section.part or att.section.text:
                    items.add(FetchItem.PARTS)
    if FetchItem.DATA in items and FetchItem.HEADER in items:
        # The whole message is read anyway: serve header sections from it (with the part tree).
        items.discard(FetchItem.HEADER)
        items.add(FetchItem.PARTS)
    return items


def section_data(att: FetchAtt, mail) -> bytes | None:
    """The bytes of a body section of one fetched message, CRLF line ends (None: no such part)."""
    spec = att.section
    if mail.data is None:
        header = mail.header or b""
        if spec.text == "HEADER":
            return mime.crlf(header)
        return mime.header_fields(header, spec.fields, exclude=spec.text.endswith(".NOT"))
    if not spec.part and not spec.text:
        info = mail.info
        # vsize counts every line end as CRLF: equal to the stored size, there is no bare LF.
        return mail.data if info.size == info.vsize == len(mail.data) else mime.crlf(mail.data)
    root = mail.parts if mail.parts is not None else mime.parse(mail.data)
    return mime.get_section(mail.data, root, spec.to_mime())


@command("FETCH", SELECTED, sync=Sync.NO_EXPUNGE, uid=True)
async def fetch(session, tag: str, args: Args, uid: bool = False):
    selected = session.selected
    set_text = args.peek()
    uids = resolve(session, args, uid)
    atts = parse_atts(args)
    mods = parse_fetch_modifiers(session, args, uid)
    if uid and not any(a.kind == "UID" for a in atts):
        atts.insert(0, FetchAtt("UID"))
    kinds = {a.kind for a in atts}
    if "MODSEQ" in kinds:
        enable_condstore(session)
    elif mods.changedsince is not None or ("FLAGS" in kinds and selected.condstore):
        # RFC 7162 3.1.4.1 / 3.1.3: CHANGEDSINCE, and FLAGS once CONDSTORE is on, carry MODSEQ.
        atts.append(FetchAtt("MODSEQ"))
    if mods.vanished:
        text = vanished_text(selected.mailbox, mods.changedsince,
                             uid_set_ranges_of(set_text, selected.mailbox.uidnext - 1))
        if text:
            session.writer.write(b"* VANISHED (EARLIER) " + text.encode() + CRLF)
    if mods.changedsince is not None:
        uids = [u for u in uids if (i := selected.mailbox.info(u)) is not None and i.modseq > mods.changedsince]
    if not uids:
        return None
    mailbox = selected.mailbox
    items = storage_items(atts)
    seen_set = set()
    if not selected.readonly and any(a.kind in ("SECTION", "BINARY") and not a.peek for a in atts):
        unseen = [u for u in uids if (info := mailbox.info(u)) is not None and SEEN not in info.flags]
        if unseen:
            await mailbox.store(unseen, StoreMode.ADD, (SEEN,))
            if not any(a.kind == "FLAGS" for a in atts):
                seen_set = set(unseen)
    writer = session.writer
    if not seen_set and all(a.kind in _COLUMN_OF for a in atts):
        sent, missing = await _fetch_columns(session, selected, uids, atts)
        if session.closed:
            return None
        return _fetch_done(session, uids, sent, missing)
    sent = missing = 0
    async for mail in _fetched(mailbox, uids, items):
        if mail.missing and items - {FetchItem.ENVELOPE, FetchItem.BODYSTRUCTURE, FetchItem.BODY}:
            missing += 1
            continue
        msn = selected.msn(mail.info.uid)
        if not msn:
            continue
        response = _response(selected, msn, mail, atts, mail.info.uid in seen_set)
        if type(response) is bytes:
            writer.write(response)
        else:
            writer.write_pieces(response)
        sent += 1
        if writer.paused:
            await writer.drain()
            if session.closed:
                return None
    return _fetch_done(session, uids, sent, missing)


def _fetch_done(session, uids, sent: int, missing: int) -> None:
    if missing:
        session.warn("FETCH: {n} message bodies could not be read", n=missing)
        raise no("Some messages could not be read, try again later", "UNAVAILABLE")
    if sent + missing < len(uids):
        raise no("Some of the requested messages no longer exist", "EXPUNGEISSUED")
    return None


# Attributes answered from ``Mailbox.columns`` (no body, no object per message), and the
# column each needs (None: none).
_COLUMN_OF = {"UID": None, "FLAGS": "flags", "MODSEQ": "modseq", "RFC822.SIZE": "vsize",
              "INTERNALDATE": "internaldate", "ENVELOPE": "envelope", "BODYSTRUCTURE": "bodystructure",
              "BODY": "body", "EMAILID": "guid", "THREADID": None, "SAVEDATE": "savedate",
              "PREVIEW": "preview"}
COLUMN_CHUNK = 1000      # messages per columns call: bounds memory, lets a slow client's writes drain


async def _fetch_columns(session, selected, uids, atts) -> tuple[int, int]:
    """FETCH of metadata only, a chunk of messages at a time, each attribute formatted column by
    column.  Returns (responses sent, messages skipped because their object is unreadable)."""
    mailbox = selected.mailbox
    names = {_COLUMN_OF[a.kind] for a in atts} - {None}
    writer = session.writer
    flag_texts: dict = {}
    recent_from = mailbox.first_recent_uid if not selected.rev2 else None
    sent = missing = 0
    for start in range(0, len(uids), COLUMN_CHUNK):
        cols = await mailbox.columns(uids[start:start + COLUMN_CHUNK], names)
        col_uids = cols["uid"]
        fields = [_format_column(a.kind, cols, col_uids, flag_texts, recent_from) for a in atts]
        skip = None
        if "PREVIEW" in {a.kind for a in atts}:
            skip = {k for k, v in enumerate(cols["preview"]) if v is None}
            missing += len(skip)
        out = []
        msn = selected.msn
        for k, (uid, row) in enumerate(zip(col_uids, zip(*fields))):
            n = msn(uid)
            if n and not (skip and k in skip):
                out.append(b"* %d FETCH (%s)\r\n" % (n, b" ".join(row)))
        sent += len(out)
        writer.write(b"".join(out))
        if writer.paused:
            await writer.drain()
            if session.closed:
                break
    return sent, missing


def _format_column(kind: str, cols: dict, uids: list, flag_texts: dict, recent_from) -> list:
    """One attribute of every message of a chunk, formatted (``flag_texts`` memoises FLAGS)."""
    if kind == "UID":
        return [b"UID %d" % u for u in uids]
    if kind == "FLAGS":
        out = []
        for uid, flags in zip(uids, cols["flags"]):
            recent = recent_from is not None and uid >= recent_from
            text = flag_texts.get((flags, recent))
            if text is None:
                text = flag_texts[(flags, recent)] = b"FLAGS " + flag_list(flags | {RECENT} if recent else flags)
            out.append(text)
        return out
    if kind == "MODSEQ":
        return [b"MODSEQ (%d)" % m for m in cols["modseq"]]
    if kind == "RFC822.SIZE":
        return [b"RFC822.SIZE %d" % v for v in cols["vsize"]]
    if kind == "INTERNALDATE":
        return [b"INTERNALDATE " + date_time(d) for d in cols["internaldate"]]
    if kind in ("ENVELOPE", "BODYSTRUCTURE", "BODY"):
        label = kind.encode("ascii") + b" "
        return [label + (v if v is not None else b"NIL") for v in cols[_COLUMN_OF[kind]]]
    if kind == "EMAILID":
        return [b"EMAILID (%s)" % g.encode("ascii") for g in cols["guid"]]
    if kind == "THREADID":
        return [b"THREADID NIL"] * len(uids)
    if kind == "SAVEDATE":
        return [b"SAVEDATE " + (date_time(d) if d else b"NIL") for d in cols["savedate"]]
    if kind == "PREVIEW":
        return [b"PREVIEW " + nstring(v.decode("utf-8")) if v is not None else b"" for v in cols["preview"]]
    raise ValueError(kind)


async def _fetched(mailbox, uids, items):
    """FetchedMail for each UID; metadata-only FETCH reads the view without asking storage."""
    if items:
        async for mail in mailbox.fetch(uids, items):
            yield mail
        return
    for u in uids:
        info = mailbox.info(u)
        if info is not None:
            yield FetchedMail(info)


def _response(selected, msn: int, mail, atts: list, add_flags: bool) -> bytes | list:
    """One ``* n FETCH (...)`` response: bytes, or a list of pieces when it holds big literals."""
    info = mail.info
    latest = None
    big = False
    out = []
    for att in atts:
        kind = att.kind
        if kind == "FLAGS":
            latest = latest or selected.mailbox.info(info.uid) or info
            out.append(b"FLAGS " + selected.flags(latest))
        elif kind == "UID":
            out.append(b"UID %d" % info.uid)
        elif kind == "MODSEQ":
            latest = latest or selected.mailbox.info(info.uid) or info
            out.append(b"MODSEQ (%d)" % latest.modseq)
        elif kind == "RFC822.SIZE":
            out.append(b"RFC822.SIZE %d" % info.vsize)
        elif kind == "INTERNALDATE":
            out.append(b"INTERNALDATE " + date_time(info.internaldate))
        elif kind == "ENVELOPE":
            out.append(b"ENVELOPE " + (mail.envelope or "NIL").encode("utf-8"))
        elif kind == "BODYSTRUCTURE":
            out.append(b"BODYSTRUCTURE " + (mail.bodystructure or "NIL").encode("utf-8"))
        elif kind == "BODY":
            out.append(b"BODY " + (mail.body or "NIL").encode("utf-8"))
        elif kind in binary.KINDS:
            out.append(binary.response(kind, att.label, att.section.part, att.partial, mail))
        elif kind == "EMAILID":
            out.append(b"EMAILID (%s)" % info.guid.encode("ascii"))
        elif kind == "THREADID":
            out.append(b"THREADID NIL")      # threads are not indexed (RFC 8474 allows NIL)
        elif kind == "SAVEDATE":
            out.append(b"SAVEDATE " + (date_time(info.savedate) if info.savedate else b"NIL"))
        elif kind == "PREVIEW":
            out.append(b"PREVIEW " + nstring(mail.preview))
        else:
            data = section_data(att, mail)
            if data is None:
                out.append(att.label + b" NIL")
                continue
            if att.partial is not None:
                offset, length = att.partial
                data = data[offset:offset + length]
            if len(data) >= BIG_LITERAL:
                out.append((att.label + b" {%d}\r\n" % len(data), data))
                big = True
            else:
                out.append(att.label + b" " + literal(data))
    if add_flags:
        latest = selected.mailbox.info(info.uid) or info
        out.append(b"FLAGS " + selected.flags(latest))
        if selected.condstore and not any(a.kind == "MODSEQ" for a in atts):
            out.append(b"MODSEQ (%d)" % latest.modseq)
    if not big:
        return b"* %d FETCH (%s)\r\n" % (msn, b" ".join(out))
    # Big literals stay pieces of their own: the bytes are not copied into the response.
    pieces = []
    text = [b"* %d FETCH (" % msn]
    for n, item in enumerate(out):
        if n:
            text.append(b" ")
        if type(item) is tuple:
            text.append(item[0])
            pieces.append(b"".join(text))
            pieces.append(item[1])
            text = []
        else:
            text.append(item)
    text.append(b")\r\n")
    pieces.append(b"".join(text))
    return pieces
