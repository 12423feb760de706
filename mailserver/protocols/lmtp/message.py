"""LMTP wire pieces that are not the state machine: reverse/forward paths (RFC 5321 4.1.2),
XCLIENT attributes, the DATA and BDAT readers, body checks and the trace headers added at
delivery."""

from __future__ import annotations

import email.utils
import functools
import re
import time

MAX_PATH_LENGTH = 256           # RFC 5321 4.5.3.1.3

_BARE_LF = re.compile(rb"(?<!\r)\n")
# <local@domain> in the usual characters (atext, non-ASCII for SMTPUTF8; domain names and address
# literals): taken without the character-by-character walk, which handles everything else.
_SIMPLE_PATH = re.compile(r"[ \t]*<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-\u0080-\U0010ffff]+"
                          r"@[A-Za-z0-9.\-\[\]:_\u0080-\U0010ffff]+)?)>(.*)", re.S)
_PARAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


class PathError(ValueError):
    """A path or parameter that does not parse; the text is for the reply."""


def parse_path(text: str, allow_null: bool) -> tuple[str, dict]:
    """``<address> [KEY=VALUE ...]`` into (address, {KEY: VALUE}); ``""`` is the null path.

    Spaces before the ``<`` are tolerated (as Dovecot's whitespace-before-path workaround); a
    source route (``<@a,@b:user@c>``) is dropped.  Keys are upper-cased; a bare key maps to ""."""
    simple = _SIMPLE_PATH.fullmatch(text)
    if simple is not None:
        address, rest = simple.group(1), simple.group(2)
        if len(address) > MAX_PATH_LENGTH:
            raise PathError("path too long")
        if not address and not allow_null:
            raise PathError("null path not allowed here")
        return address, _parameters(rest)
    text = text.lstrip(" \t")
    if not text.startswith("<"):
        raise PathError("path must be enclosed in <>")
    quoted = escaped = False
    end = -1
    for i in range(1, len(text)):
        c = text[i]
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            end = i
            break
    if end < 0:
        raise PathError("missing > at the end of the path")
    address = text[1:end]
    if address.startswith("@"):
        route, colon, address = address.partition(":")
        if not colon:
            raise PathError("source route without ':'")
    if len(address) > MAX_PATH_LENGTH:
        raise PathError("path too long")
    if address:
        _check_address(address)
    elif not allow_null:
        raise PathError("null path not allowed here")
    return address, _parameters(text[end + 1:])


def _parameters(rest: str) -> dict:
    if rest and not rest.startswith(" "):
        raise PathError("junk after the path")
    params = {}
    for item in rest.split():
        key, _, value = item.partition("=")
        if not key or not _PARAM_KEY.fullmatch(key):
            raise PathError(f"bad parameter {item[:40]!r}")
        params[key.upper()] = value
    return params


def _check_address(address: str) -> None:
    local, domain = split_address(address)
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in domain) or (domain == "" and address.endswith("@")):
        raise PathError("invalid domain")
    if not local:
        raise PathError("empty local part")
    if local.startswith('"'):
        if len(local) < 2 or not local.endswith('"') or any(ord(c) < 0x20 or ord(c) == 0x7F for c in local):
            raise PathError("invalid quoted local part")
    elif any(ord(c) < 0x21 or ord(c) == 0x7F or c in '<>()[],;:"\\' for c in local):
        raise PathError("invalid local part")


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext (``+XX`` hex escapes), as XCLIENT values are sent.  ValueError if malformed."""
    if "+" not in value:
        return value
    out = bytearray()
    i = 0
    raw = value.encode("utf-8")
    while i < len(raw):
        if raw[i] == 0x2B:
            hexa = raw[i + 1:i + 3]
            if len(hexa) != 2 or not all(c in b"0123456789ABCDEFabcdef" for c in hexa):
                raise ValueError("bad xtext escape")
            out.append(int(hexa, 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def split_address(address: str) -> tuple[str, str]:
    """(local part as written, domain): the domain follows the last ``@`` outside quotes."""
    quoted = escaped = False
    at = -1
    for i, c in enumerate(address):
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == "@" and not quoted:
            at = i
    return (address, "") if at < 0 else (address[:at], address[at + 1:])


def unquote_local(local: str) -> str:
    """A quoted local part's content (``"a\\"b"`` -> ``a"b``)."""
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        return re.sub(r"\\(.)", r"\1", local[1:-1])
    return local


def recipient_username(address: str, delimiters: str) -> tuple[str, str]:
    """(username, detail) for an RCPT address: ``user+detail@domain`` -> (``user@domain``, ``detail``).
    The username is not normalised yet (the Authenticator does that)."""
    local, domain = split_address(address)
    local = unquote_local(local)
    detail = ""
    if delimiters:
        cut = min((i for i in (local.find(d) for d in delimiters) if i > 0), default=-1)
        if cut > 0:
            local, detail = local[:cut], local[cut + 1:]
    return (f"{local}@{domain}" if domain else local), detail


class ChunkReader:
    """Collects BDAT chunks (RFC 3030): exactly the announced bytes, no dot-stuffing; keeps at
    most ``max_size`` bytes and then only counts (the rest of a chunk must still be read)."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self.data = bytearray()
        self.remaining = 0          # bytes of the current chunk still to read
        self.chunk_size = 0
        self.last = False
        self.too_big = False
        self.failed = False         # a chunk was refused: the transaction needs RSET

    def start(self, size: int, last: bool) -> None:
        self.remaining = self.chunk_size = size
        self.last = last
        if len(self.data) + size > self.max_size:
            self.too_big = True
            self.data = bytearray()

    def feed(self, buffer: bytearray) -> bool:
        """Take what belongs to the current chunk from ``buffer``; True when the chunk is complete."""
        take = min(self.remaining, len(buffer))
        if not self.too_big:
            self.data += memoryview(buffer)[:take]
        del buffer[:take]
        self.remaining -= take
        return self.remaining == 0


class DataReader:
    """Collects DATA until ``CRLF.CRLF`` (bare ``LF.LF`` too), scanning the buffer rather than
    splitting lines; keeps at most ``max_size`` plus a margin, then only looks for the end."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self._data = bytearray(b"\n")       # a virtual line end: ".\r\n" first ends an empty message
        self._scan = 0
        self._received = 0
        self.too_big = False

    def feed(self, buffer: bytearray) -> bytes | None:
        """Consume ``buffer``.  At the end marker: return what followed it (pipelined commands)
        and leave ``buffer`` empty; before: None."""
        self._received += len(buffer)
        self._data += buffer
        buffer.clear()
        data = self._data
        # The end is "\n.\r\n" (or "\n.\n", bare LF tolerated): two substring searches, not a regex.
        crlf, lf = data.find(b"\n.\r\n", self._scan), data.find(b"\n.\n", self._scan)
        if crlf < 0 and lf < 0:
            self._scan = max(0, len(data) - 3)
            # Dot-stuffing only adds bytes, so raw length past max_size + margin is surely too big.
            if len(data) > self.max_size + self.max_size // 8 + 1024:
                self.too_big = True
                del data[:-3]
                self._scan = 0
            return None
        start = lf if crlf < 0 or 0 <= lf < crlf else crlf
        end = start + (3 if start == lf else 4)
        rest = bytes(data[end:])
        del data[start + 1:]
        return rest

    def message(self) -> bytes:
        """The message after the end was found: dot-stuffing undone, every line ending CRLF (as
        Dovecot with mail_save_crlf=yes; bare CR is kept).  Sets ``too_big`` past max_size."""
        if self.too_big:
            return b""
        buf, self._data = self._data, bytearray()
        if b"\n." in buf:
            buf = buf.replace(b"\n.", b"\n")
        data = normalize_crlf(bytes(memoryview(buf)[1:]))      # one copy when nothing changes
        if len(data) > self.max_size:
            self.too_big = True
            return b""
        return data


def normalize_crlf(data: bytes) -> bytes:
    """Every line ending CRLF (bare LF becomes CRLF; bare CR is kept).  Checked with two C-speed
    scans (bytes.count of one byte is a slow plain loop in CPython; deleting it is not)."""
    if len(data) - len(data.replace(b"\n", b"")) != data.count(b"\r\n"):
        data = _BARE_LF.sub(b"\r\n", data)
    return data


def body_problem(data: bytes, max_line_length: int) -> str | None:
    """Why a text (not BINARYMIME) message is refused, or None: NUL bytes (IMAP cannot carry them
    outside BINARY), or a line longer than ``max_line_length`` octets with its CRLF (RFC 5321
    4.5.3.1.6; 0 means no limit).  Scans at C speed: no Python loop over lines."""
    if b"\0" in data:
        return "Message contains NUL characters"
    if max_line_length and len(data) >= max_line_length and \
            max(map(len, data.split(b"\n"))) >= max_line_length:
        return f"Message contains a line longer than {max_line_length} octets"
    return None


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    """RFC 5322 date in local time (cached: formatting costs more than the rest of the headers)."""
    return email.utils.formatdate(second, localtime=True)


def trace_headers(sender: str, recipients: list[str], lhlo: str, peer_ip: str, hostname: str,
                  session: str, now: float | None = None, received: bool = True, utf8: bool = False) -> bytes:
    """Return-Path, Delivered-To and Received, as Dovecot's LMTP adds them: Delivered-To and the
    ``for`` clause only when the transaction has a single recipient (then every recipient's copy
    is the same bytes).  ``received=False`` leaves Received out; ``utf8`` (SMTPUTF8 was given)
    makes the protocol ``UTF8LMTP`` (RFC 6531 3.7.3)."""
    lines = [f"Return-Path: <{sender}>"]
    single = recipients[0] if len(recipients) == 1 else None
    if single is not None:
        lines.append(f"Delivered-To: {single}")
    if not received:
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")
    lines.append(f"Received: from {lhlo or 'unknown'}" + (f" ([{peer_ip}])" if peer_ip else ""))
    lines += [f"\tby {hostname} with {'UTF8LMTP' if utf8 else 'LMTP'}", f"\tid {session}"]
    date = _date(int(time.time() if now is None else now))
    if single is not None:
        lines += [f"\t(envelope-from <{sender}>)", f"\tfor <{single}>; {date}"]
    else:
        lines.append(f"\t(envelope-from <{sender}>); {date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
