"""Header fields on bytes: finding fields, unfolding, and the structured MIME fields
(Content-Type / Content-Disposition parameters with RFC 2231, Content-Transfer-Encoding,
Content-Language).

Structured values are parsed as latin-1 text so every byte maps to one character and 8-bit
bytes survive; ``as_text`` turns such a string into proper Unicode (UTF-8 if valid, else latin-1).
"""

from __future__ import annotations

import functools
import re
import urllib.parse

from ._charsets import to_text

# A field: name (printable ASCII except colon), optional WSP, colon, value with its folded
# continuation lines.  The value group keeps the CR of each CRLF; ``unfold`` removes them.
FIELD_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)\n?", re.M)
# Only the Content-* fields, for MIME part headers (avoids touching the other lines in Python).
# Anchored on the preceding LF (a literal prefix is much faster in ``re`` than ^ with re.I);
# CONTENT_FIELD_AT_START catches a field on the very first line of the data.
_CONTENT = rb"[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)"
CONTENT_FIELD_RE = re.compile(rb"\n" + _CONTENT)
CONTENT_FIELD_AT_START = re.compile(_CONTENT)

_WSP = b" \t"


def content_fields(data: bytes, start: int, end: int) -> list[tuple[bytes, bytes]]:
    """(name after "content-", raw value) of the Content-* fields in ``data[start:end]``,
    ``start`` being a line start."""
    if start == 0:
        m = CONTENT_FIELD_AT_START.match(data, 0, end)
        found = CONTENT_FIELD_RE.findall(data, 0, end)
        return [m.groups()] + found if m else found
    return CONTENT_FIELD_RE.findall(data, start - 1, end)


def fields(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[str, bytes, int, int]]:
    """Every header field in ``data[start:end]`` as ``(lowercased name, raw value, start, end)``;
    ``end`` is just after the field's last line ending.  Lines that are not fields are skipped."""
    if end is None:
        end = len(data)
    return [(m.group(1).lower().decode("ascii"), m.group(2), m.start(), m.end())
            for m in FIELD_RE.finditer(data, start, end)]


def unfold(value: bytes) -> bytes:
    """RFC 5322 unfolding: drop the line breaks inside a field value (the WSP after them stays)."""
    if b"\n" in value:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    if value.endswith(b"\r"):
        value = value.rstrip(b"\r")
    return value


def field_value(value: bytes) -> bytes:
    """The value as ENVELOPE and BODYSTRUCTURE report it: unfolded, leading whitespace removed."""
    return unfold(value).lstrip(_WSP)


def as_text(s: str) -> str:
    """A latin-1-decoded header string as Unicode: 8-bit bytes read as UTF-8 when they are."""
    if s.isascii():
        return s
    raw = s.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return s


# --- RFC 2045 / RFC 822 lexical pieces -------------------------------------------------

_SKIP_WS = re.compile(r"[ \t\r\n]*")
# token: anything but CTLs, SPACE and tspecials (8-bit characters are tolerated).
_TOKEN = re.compile(r'[^\x00-\x20()<>@,;:\\"/\[\]?=\x7f]+')
# Unquoted parameter values in the wild carry tspecials ("boundary=----=_Part_1"): take the run.
_LOOSE_VALUE = re.compile(r'[^\x00-\x20;()"\x7f]+')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)("?)', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)


def skip_comment(s: str, i: int) -> int:
    """``s[i]`` is "(": the index after the matching ")" (nested comments, quoted pairs)."""
    depth = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def skip_cfws(s: str, i: int) -> int:
    """Skip whitespace and comments from ``s[i]``."""
    n = len(s)
    while True:
        i = _SKIP_WS.match(s, i).end()
        if i < n and s[i] == "(":
            i = skip_comment(s, i)
        else:
            return i


def unquote(inner: str) -> str:
    return _QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner


def first_token(value: bytes) -> str | None:
    """The first token of a value (Content-Transfer-Encoding), comments skipped; None if none."""
    s = value.decode("latin-1")
    i = skip_cfws(s, 0)
    m = _TOKEN.match(s, i)
    return m.group() if m else None


def parse_language(value: bytes) -> list[str] | None:
    """Content-Language: comma-separated tags, comments and whitespace dropped; None if empty."""
    s = value.decode("latin-1")
    out = []
    i, n = 0, len(s)
    while i < n:
        i = skip_cfws(s, i)
        m = _TOKEN.match(s, i)
        if m:
            out.append(as_text(m.group()))
            i = m.end()
        elif i < n:
            i += 1
    return out or None


def parse_params(s: str, i: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]] | None]:
    """Parse ``*(";" attribute "=" value)`` from ``s[i:]``.

    Returns ``(params, raw)``: ``params`` with RFC 2231 continuations joined and charsets
    decoded (names as sent); ``raw`` is None unless some parameter used RFC 2231, and then is the
    list BODYSTRUCTURE shows (as Dovecot does: plain parameters first, then each RFC 2231
    parameter once, named ``name*`` when encoded, its sections joined and still encoded)."""
    plain: list[tuple[str, str]] = []
    ext: dict[str, list] = {}  # lowercased base name -> [name, {section: (value, encoded)}]
    n = len(s)
    while i < n:
        i = skip_cfws(s, i)
        if i >= n:
            break
        if s[i] != ";":
            # junk between parameters: resynchronise at the next ";"
            j = s.find(";", i)
            if j < 0:
                break
            i = j
        i = skip_cfws(s, i + 1)
        m = _TOKEN.match(s, i)
        if not m:
            continue
        name = m.group()
        i = skip_cfws(s, m.end())
        if i >= n or s[i] != "=":
            continue  # attribute without a value: ignored
        i = skip_cfws(s, i + 1)
        if i < n and s[i] == '"':
            q = _QUOTED.match(s, i)
            value = unquote(q.group(1))
            i = q.end()
        else:
            v = _LOOSE_VALUE.match(s, i)
            value = v.group() if v else ""
            i = v.end() if v else i
        star = name.find("*")
        if star < 0:
            plain.append((name, value))
            continue
        base, rest = name[:star], name[star + 1:]
        encoded = rest.endswith("*") or rest == ""
        digits = rest.rstrip("*")
        section = int(digits) if digits.isdigit() and len(digits) < 6 else 0
        entry = ext.setdefault(base.lower(), [base, {}])
        entry[1].setdefault(section, (value, encoded))
    params = [(k, as_text(v)) for k, v in plain]
    if not ext:
        return params, None
    raw = list(params)
    for base, sections in ext.values():
        pieces = [sections[k] for k in sorted(sections)]
        first_value, first_encoded = pieces[0]
        charset = ""
        if first_encoded:
            parts = first_value.split("'", 2)
            if len(parts) == 3:
                charset, _lang, first_value = parts
                pieces[0] = (first_value, True)
        data = b"".join(
            urllib.parse.unquote_to_bytes(v) if enc else v.encode("latin-1") for v, enc in pieces)
        params.append((base, to_text(data, charset or None)))
        joined = "".join(sections[k][0] for k in sorted(sections))
        raw.append((base + "*" if first_encoded else base, joined))
    return params, raw


# The common shape, parsed by one regex: type/subtype and plain parameters (no comments, no
# RFC 2231, no quoted pairs).  Anything else goes through the general parser.
_T = r'[^\x00-\x20()<>@,;:\\"/\[\]?=\x7f]+'
_PLAIN_NAME = r'[^\x00-\x20()<>@,;:\\"/\[\]?=\x7f*]+'
_SIMPLE_PARAM = r'[ \t]*;[ \t]*(' + _PLAIN_NAME + r')[ \t]*=[ \t]*(?:"([^"\\]*)"|([^\x00-\x20;()"\\\x7f]*))'
_SIMPLE_PARAM_RE = re.compile(_SIMPLE_PARAM)
_SIMPLE_CONTENT_TYPE = re.compile(
    r'[ \t]*(' + _T + r')[ \t]*/[ \t]*(' + _T + r')((?:' + _SIMPLE_PARAM + r')*)[ \t]*;?[ \t]*\Z')
_SIMPLE_DISPOSITION = re.compile(r'[ \t]*(' + _T + r')((?:' + _SIMPLE_PARAM + r')*)[ \t]*;?[ \t]*\Z')


def _simple_params(s: str) -> list[tuple[str, str]]:
    if not s:
        return []
    if s.isascii():
        return [(k, q or u) for k, q, u in _SIMPLE_PARAM_RE.findall(s)]
    return [(k, as_text(q or u)) for k, q, u in _SIMPLE_PARAM_RE.findall(s)]


def parse_content_type(value: bytes):
    """``(type, subtype, params, raw_params)`` with type/subtype as sent, or None when the value
    is not ``type "/" subtype`` (RFC 2045 then says to assume the default)."""
    s = value.decode("latin-1")
    simple = _SIMPLE_CONTENT_TYPE.match(s)
    if simple:
        return simple.group(1), simple.group(2), _simple_params(simple.group(3)), None
    i = skip_cfws(s, 0)
    m = _TOKEN.match(s, i)
    if not m:
        return None
    i = skip_cfws(s, m.end())
    if i >= len(s) or s[i] != "/":
        return None
    i = skip_cfws(s, i + 1)
    m2 = _TOKEN.match(s, i)
    if not m2:
        return None
    params, raw = parse_params(s, m2.end())
    return m.group(), m2.group(), params, raw


def parse_disposition(value: bytes):
    """``(type as sent, params, raw_params)`` of Content-Disposition, or None if it has no type."""
    s = value.decode("latin-1")
    simple = _SIMPLE_DISPOSITION.match(s)
    if simple:
        return simple.group(1), _simple_params(simple.group(2)), None
    i = skip_cfws(s, 0)
    m = _TOKEN.match(s, i)
    if not m:
        return None
    params, raw = parse_params(s, m.end())
    return m.group(), params, raw


# Most messages repeat the same few values ("text/plain; charset=utf-8", "base64", "inline"):
# short values are parsed once per process.  Results are tuples (shared, so immutable).
_MEMO_MAX_VALUE = 256


def _frozen_params(params):
    return None if params is None else tuple(params)


@functools.lru_cache(maxsize=1024)
def _memo_content_type(value: bytes):
    parsed = parse_content_type(value)
    if parsed is None:
        return None
    t, st, params, raw = parsed
    return t, st, tuple(params), _frozen_params(raw)


@functools.lru_cache(maxsize=512)
def _memo_disposition(value: bytes):
    parsed = parse_disposition(value)
    if parsed is None:
        return None
    d, params, raw = parsed
    return d, tuple(params), _frozen_params(raw)


@functools.lru_cache(maxsize=256)
def _memo_first_token(value: bytes):
    return first_token(value)


def content_type(value: bytes):
    """``parse_content_type`` of the unfolded value, parameters as tuples, memoised."""
    value = unfold(value)
    if len(value) <= _MEMO_MAX_VALUE:
        return _memo_content_type(value)
    return _memo_content_type.__wrapped__(value)


def disposition(value: bytes):
    """``parse_disposition`` of the unfolded value, parameters as tuples, memoised."""
    value = unfold(value)
    if len(value) <= _MEMO_MAX_VALUE:
        return _memo_disposition(value)
    return _memo_disposition.__wrapped__(value)


def transfer_encoding(value: bytes) -> str | None:
    """The Content-Transfer-Encoding token (as sent), memoised."""
    value = unfold(value)
    if len(value) <= _MEMO_MAX_VALUE:
        return _memo_first_token(value)
    return first_token(value)
