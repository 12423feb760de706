"""IMAP syntax for MIME data: strings, ENVELOPE and BODY/BODYSTRUCTURE (RFC 3501 7.4.2).

Every function here returns IMAP syntax as ``str``; send it encoded as UTF-8 (the length of a
literal ``{n}`` counts the UTF-8 bytes).  8-bit header bytes become literals: UTF-8 as it was,
other bytes read as latin-1.
"""

from __future__ import annotations

import re

from . import _headers as H
from .parser import Part

# A quoted string may hold any CHAR but CR and LF (RFC 3501 TEXT-CHAR); like Dovecot we also
# send '"' and '\\' in literals, which some clients handle better than escapes.
_NEEDS_LITERAL = re.compile(r'[^\x01-\x09\x0b\x0c\x0e-\x21\x23-\x5b\x5d-\x7f]')


_COMMON: dict[str, str] = {}  # short strings seen before -> their IMAP form
_COMMON_MAX = 4096


def imap_string(s: str | bytes) -> str:
    """``s`` as an IMAP string: ``"quoted"`` when it can be, else a literal ``{n}\\r\\n...``.

    Bytes are read as UTF-8, or latin-1 when they are not valid UTF-8.  NUL cannot appear in
    an IMAP string and is dropped."""
    if type(s) is str:
        out = _COMMON.get(s)
        if out is not None:
            return out
        out = _imap_string(s)
        if len(s) <= 32 and len(_COMMON) < _COMMON_MAX:
            _COMMON[s] = out  # type names, charsets, encodings, common names: the same everywhere
        return out
    return _imap_string(s)


def _imap_string(s: str | bytes) -> str:
    if isinstance(s, (bytes, bytearray)):
        s = bytes(s)
        if s.isascii():
            s = s.decode("ascii")
        else:
            try:
                s = s.decode("utf-8")
            except UnicodeDecodeError:
                s = s.decode("latin-1")
    if _NEEDS_LITERAL.search(s) is None:
        return '"' + s + '"'
    if "\x00" in s:
        s = s.replace("\x00", "")
        if _NEEDS_LITERAL.search(s) is None:
            return '"' + s + '"'
    return "{%d}\r\n%s" % (len(s.encode("utf-8")), s)


def nstring(s) -> str:
    """``imap_string(s)``, or NIL for None."""
    return "NIL" if s is None else imap_string(s)


def _latin1_string(s: str) -> str:
    """An IMAP string from a latin-1-decoded header string (8-bit bytes kept as they were)."""
    return imap_string(s) if s.isascii() else imap_string(s.encode("latin-1"))


# --- addresses (RFC 5322 3.4, with the obsolete forms and Dovecot's fill-ins) ----------------

MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"

_ADDR_TOKEN = re.compile(
    r'(?P<ws>[ \t\r\n]+)'
    r'|(?P<atom>[^\x00-\x20()<>\[\]:;@\\,."]+)'
    r'|"(?P<qs>(?:[^"\\]|\\.)*)"?'
    r'|(?P<dl>\[(?:[^\]\\]|\\.)*\]?)'
    r'|(?P<cm>\()'
    r'|(?P<sp>.)', re.S)


def _tokens(s: str) -> list[tuple[str, str, bool]]:
    """Lexical tokens of an address list: (kind, text, whitespace before).  Kinds: "a" atom,
    "q" quoted string (unquoted), "d" domain literal, "c" comment (its text), or the special
    character itself."""
    out = []
    i, n = 0, len(s)
    ws = False
    match = _ADDR_TOKEN.match
    while i < n:
        m = match(s, i)
        kind = m.lastgroup
        if kind == "ws":
            ws = True
            i = m.end()
            continue
        if kind == "cm":
            j = H.skip_comment(s, i)
            out.append(("c", H.unquote(s[i + 1:j - 1] if s[j - 1:j] == ")" else s[i + 1:j]), ws))
            ws = True  # a comment separates words like whitespace does
            i = j
            continue
        if kind == "atom":
            out.append(("a", m.group(), ws))
        elif kind == "qs":
            out.append(("q", H.unquote(m.group("qs")), ws))
        elif kind == "dl":
            out.append(("d", m.group(), ws))
        else:
            out.append((m.group(), m.group(), ws))
        ws = False
        i = m.end()
    return out


def _phrase(tokens) -> str | None:
    """Display name from phrase tokens: words joined by one space where the sender separated
    them, comments dropped, quoting removed; None if empty."""
    words = []
    for kind, text, ws in tokens:
        if kind == "c":
            continue
        if kind not in ("a", "q", "d", "."):
            continue
        if words and ws:
            words.append(" ")
        words.append(text)
    name = "".join(words).strip()
    return name or None


def _addr_spec(tokens) -> tuple[str | None, str, str]:
    """(route, mailbox, host) from the tokens of ``[route ":"] local "@" domain``."""
    route = None
    colon = next((k for k, t in enumerate(tokens) if t[0] == ":"), -1)
    if colon >= 0:
        hops = []
        hop = ""
        for kind, text, _ in tokens[:colon]:
            if kind == ",":
                if hop:
                    hops.append(hop)
                hop = ""
            elif kind != "c":
                hop += text
        if hop:
            hops.append(hop)
        route = ",".join(hops) or None
        tokens = tokens[colon + 1:]
    at = next((k for k, t in enumerate(tokens) if t[0] == "@"), -1)
    local = tokens if at < 0 else tokens[:at]
    domain = [] if at < 0 else tokens[at + 1:]
    mailbox = "".join(t for k, t, _ in local if k in ("a", "q", "."))
    host = "".join(t for k, t, _ in domain if k in ("a", "d", "."))
    return route, mailbox or MISSING_MAILBOX, host or MISSING_DOMAIN


def _mailbox(tokens) -> tuple | None:
    """One mailbox element -> (name, adl, mailbox, host), or None if it holds nothing."""
    if all(t[0] == "c" for t in tokens):
        return None
    lt = next((k for k, t in enumerate(tokens) if t[0] == "<"), -1)
    if lt >= 0:
        gt = next((k for k in range(lt + 1, len(tokens)) if tokens[k][0] == ">"), len(tokens))
        route, mailbox, host = _addr_spec(tokens[lt + 1:gt])
        return _phrase(tokens[:lt]), route, mailbox, host
    if not any(t[0] == "@" for t in tokens):
        words = [t for t in tokens if t[0] != "c"]
        if (len(words) > 1 and any(t[2] for t in words[1:])) or (len(words) == 1 and words[0][0] == "q"):
            # a bare phrase: Dovecot's reading of 'To: Some Name' and 'To: "Name"'
            return _phrase(tokens), None, MISSING_MAILBOX, MISSING_DOMAIN
    route, mailbox, host = _addr_spec(tokens)
    comment = next((t for k, t, _ in tokens if k == "c" and t.strip()), None)
    return (comment.strip() if comment else None), route, mailbox, host


# The common shapes, read by one regex: "local@domain", "<local@domain>", "Name <local@domain>",
# '"Quoted Name" <local@domain>', separated by commas.  Anything else takes the tokenizer.
_ATEXT = r"[^\x00-\x20()<>\[\]:;@\\,\"\x7f]"
_SIMPLE_MAILBOX = re.compile(
    r'[ \t]*(?:(?:(' + _ATEXT + r'+(?:[ \t]+' + _ATEXT + r'+)*)|"([^"\\]*)")?[ \t]*'
    r'<(' + _ATEXT + r'+)@(' + _ATEXT + r'+)>|(' + _ATEXT + r'+)@(' + _ATEXT + r'+))[ \t]*(?:,|\Z)')
_WS_RUN = re.compile(r"[ \t]+")
_SIMPLE_GROUP = re.compile(
    r'[ \t]*(' + _ATEXT + r'+(?:[ \t]+' + _ATEXT + r'+)*)[ \t]*:([^:;"]*);[ \t]*\Z')


def _simple_addresses(s: str) -> list[tuple] | None:
    if ":" in s:
        g = _SIMPLE_GROUP.match(s)
        if g is None:
            return None
        members = _simple_addresses(g.group(2)) if g.group(2).strip(" \t") else []
        if members is None:
            return None
        name = g.group(1)
        if "  " in name or "\t" in name:
            name = _WS_RUN.sub(" ", name)
        return [(None, None, name, None)] + members + [(None, None, None, None)]
    out = []
    pos, n = 0, len(s)
    match = _SIMPLE_MAILBOX.match
    while pos < n:
        m = match(s, pos)
        if m is None:
            return None
        name, qname, local, domain, local2, domain2 = m.groups()
        if local2 is not None:
            out.append((None, None, local2, domain2))
        else:
            if name is not None:
                name = _WS_RUN.sub(" ", name) if ("  " in name or "\t" in name) else name
            else:
                name = qname.strip() or None if qname is not None else None
            out.append((name, None, local, domain))
        pos = m.end()
        if s[pos - 1:pos] == "," and pos == n:
            break
    return out


def parse_addresses(value: bytes) -> list[tuple]:
    """An address-list field value -> list of (name, adl, mailbox, host), with RFC 3501 group
    markers (None, None, name, None) ... (None, None, None, None).  Strings are latin-1 text."""
    text = H.unfold(value).decode("latin-1")
    simple = _simple_addresses(text)
    if simple is not None:
        return simple
    return parse_address_tokens(text)


def parse_address_tokens(text: str) -> list[tuple]:
    """The general address-list parser (``parse_addresses`` without its fast path)."""
    tokens = _tokens(text)
    out = []
    current = []
    in_group = False
    angle = False
    for tok in tokens:
        kind = tok[0]
        if angle:
            if kind == ">":
                angle = False
        elif kind == ",":
            box = _mailbox(current)
            if box:
                out.append(box)
            current = []
            continue
        elif kind == ":" and not in_group and not any(t[0] == "@" for t in current):
            out.append((None, None, _phrase(current) or "", None))
            in_group = True
            current = []
            continue
        elif kind == ";" and in_group:
            box = _mailbox(current)
            if box:
                out.append(box)
            out.append((None, None, None, None))
            in_group = False
            current = []
            continue
        elif kind == "<":
            angle = True
        current.append(tok)
    box = _mailbox(current)
    if box:
        out.append(box)
    if in_group:
        out.append((None, None, None, None))
    return out


def _address_list(addrs: list[tuple]) -> str:
    if not addrs:
        return "NIL"
    parts = ["("]
    for name, adl, mailbox, host in addrs:
        parts.append("(%s %s %s %s)" % (
            "NIL" if name is None else _latin1_string(name),
            "NIL" if adl is None else _latin1_string(adl),
            "NIL" if mailbox is None else _latin1_string(mailbox),
            "NIL" if host is None else _latin1_string(host)))
    parts.append(")")
    return "".join(parts)


_ENVELOPE_SINGLE = ("date", "subject", "in-reply-to", "message-id")
_ENVELOPE_ADDRESS = ("from", "sender", "reply-to", "to", "cc", "bcc")


def envelope_from_fields(fields) -> str:
    """ENVELOPE from ``_headers.fields`` output."""
    single: dict[str, bytes] = {}
    addresses: dict[str, list] = {}
    for name, value, _, _ in fields:
        if name in _ENVELOPE_ADDRESS:
            addresses.setdefault(name, []).extend(parse_addresses(value))
        elif name in _ENVELOPE_SINGLE and name not in single:
            single[name] = value  # the first one counts

    def text(name):
        v = single.get(name)
        return "NIL" if v is None else imap_string(H.field_value(v))

    frm = _address_list(addresses.get("from"))
    sender = addresses.get("sender")
    reply_to = addresses.get("reply-to")
    return "(%s %s %s %s %s %s %s %s %s %s)" % (
        text("date"), text("subject"), frm, _address_list(sender) if sender else frm,
        _address_list(reply_to) if reply_to else frm, _address_list(addresses.get("to")),
        _address_list(addresses.get("cc")), _address_list(addresses.get("bcc")),
        text("in-reply-to"), text("message-id"))


def envelope(header: bytes) -> str:
    """IMAP ENVELOPE of a message header: (date subject from sender reply-to to cc bcc
    in-reply-to message-id).  Strings are the raw field values (RFC 2047 words not decoded),
    unfolded, leading whitespace removed; sender and reply-to default to from; repeated
    address fields are concatenated, other repeated fields use the first."""
    return envelope_from_fields(H.fields(header))


# --- BODY / BODYSTRUCTURE ------------------------------------------------------------------

def _params(params) -> str:
    if not params:
        return "NIL"
    return "(" + " ".join(imap_string(k) + " " + imap_string(v) for k, v in params) + ")"


def _ext_tail(part: Part) -> str:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc."""
    raw = part.raw or {}
    disp = part.disposition
    if disp is None:
        dsp = "NIL"
    else:
        dsp = "(%s %s)" % (imap_string(raw.get("dtype", disp[0])), _params(raw.get("dparams", disp[1])))
    lang = "NIL" if not part.language else "(" + " ".join(imap_string(x) for x in part.language) + ")"
    return "%s %s %s" % (dsp, lang, nstring(part.location))


def _structure(part: Part, data: bytes, ext: list, basic: list) -> None:
    """Append the BODYSTRUCTURE pieces of ``part`` to ``ext`` and the BODY pieces to ``basic``."""
    raw = part.raw or {}
    if part.ctype == "multipart":
        ext.append("(")
        basic.append("(")
        if part.children:
            for child in part.children:
                _structure(child, data, ext, basic)
        else:
            # a multipart needs at least one body: Dovecot shows an empty text/plain
            empty = '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0'
            ext.append(empty + " NIL NIL NIL NIL)")
            basic.append(empty + ")")
        subtype = " " + imap_string(raw.get("subtype", part.subtype))
        basic.append(subtype + ")")
        ext.append("%s %s %s)" % (subtype, _params(raw.get("params", part.params)), _ext_tail(part)))
        return
    params = raw.get("params", part.params)
    if part.ctype == "text" and not any(k.lower() == "charset" for k, _ in params):
        params = list(params) + [("charset", "us-ascii")]
    fields = "(%s %s %s %s %s %s %d" % (
        imap_string(raw.get("type", part.ctype)), imap_string(raw.get("subtype", part.subtype)),
        _params(params), nstring(part.id), nstring(part.description),
        imap_string(raw.get("encoding", part.encoding)), part.octets)
    ext.append(fields)
    basic.append(fields)
    if part.ctype == "text":
        lines = " %d" % part.lines
        ext.append(lines)
        basic.append(lines)
    elif part.message is not None and part.subtype == "rfc822":
        # message/global stays a basic body: IMAP4rev1's grammar has envelope and lines only
        # for MESSAGE/RFC822 (Dovecot 2.3 does the same)
        inner = part.message
        env = envelope(data[inner.header_start:inner.header_end])
        ext.append(" " + env + " ")
        basic.append(" " + env + " ")
        _structure(inner, data, ext, basic)
        lines = " %d" % part.lines
        ext.append(lines)
        basic.append(lines)
    basic.append(")")
    ext.append(" %s %s)" % (nstring(part.md5), _ext_tail(part)))


def bodystructure(root: Part, data: bytes, extended: bool = True) -> str:
    """IMAP BODYSTRUCTURE (``extended``) or BODY of the message parsed into ``root``.

    Spellings are as sent (types, parameters, encodings), like Dovecot; text parts without a
    charset get ("charset" "us-ascii"); sizes count line ends as CRLF; lines count LFs."""
    ext: list[str] = []
    basic: list[str] = []
    _structure(root, data, ext, basic)
    return "".join(ext if extended else basic)


def body_and_bodystructure(root: Part, data: bytes) -> tuple[str, str]:
    """(BODY, BODYSTRUCTURE) in one walk."""
    ext: list[str] = []
    basic: list[str] = []
    _structure(root, data, ext, basic)
    return "".join(basic), "".join(ext)
