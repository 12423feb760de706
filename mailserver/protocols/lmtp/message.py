"""LMTP wire pieces that are not the state machine: reverse/forward paths (RFC 5321 4.1.2),
the DATA reader and the trace headers added at delivery."""

from __future__ import annotations

import email.utils
import functools
import re
import time

MAX_PATH_LENGTH = 256           # RFC 5321 4.5.3.1.3

_END = re.compile(rb"\n\.\r?\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")


class PathError(ValueError):
    """A path or parameter that does not parse; the text is for the reply."""


def parse_path(text: str, allow_null: bool) -> tuple[str, dict]:
    """``<address> [KEY=VALUE ...]`` into (address, {KEY: VALUE}); ``""`` is the null path.

    Spaces before the ``<`` are tolerated (as Dovecot's whitespace-before-path workaround); a
    source route (``<@a,@b:user@c>``) is dropped.  Keys are upper-cased; a bare key maps to ""."""
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
    rest = text[end + 1:]
    if rest and not rest.startswith(" "):
        raise PathError("junk after the path")
    params = {}
    for item in rest.split():
        key, _, value = item.partition("=")
        if not key or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", key):
            raise PathError(f"bad parameter {item[:40]!r}")
        params[key.upper()] = value
    return address, params


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
        m = _END.search(self._data, self._scan)
        if m is None:
            self._scan = max(0, len(self._data) - 3)
            # Dot-stuffing only adds bytes, so raw length past max_size + margin is surely too big.
            if len(self._data) > self.max_size + self.max_size // 8 + 1024:
                self.too_big = True
                del self._data[:-3]
                self._scan = 0
            return None
        rest = bytes(self._data[m.end():])
        del self._data[m.start() + 1:]
        return rest

    def message(self) -> bytes:
        """The message after the end was found: dot-stuffing undone, every line ending CRLF (as
        Dovecot with mail_save_crlf=yes; bare CR is kept).  Sets ``too_big`` past max_size."""
        if self.too_big:
            return b""
        data = bytes(self._data).replace(b"\n.", b"\n")[1:]
        self._data = bytearray()
        if data.count(b"\n") != data.count(b"\r\n"):
            data = _BARE_LF.sub(b"\r\n", data)
        if len(data) > self.max_size:
            self.too_big = True
            return b""
        return data


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    """RFC 5322 date in local time (cached: formatting costs more than the rest of the headers)."""
    return email.utils.formatdate(second, localtime=True)


def trace_headers(sender: str, recipients: list[str], lhlo: str, peer_ip: str, hostname: str,
                  session: str, now: float | None = None) -> bytes:
    """Return-Path, Delivered-To and Received, as Dovecot's LMTP adds them: Delivered-To and the
    ``for`` clause only when the transaction has a single recipient (then every recipient's copy
    is the same bytes)."""
    lines = [f"Return-Path: <{sender}>"]
    single = recipients[0] if len(recipients) == 1 else None
    if single is not None:
        lines.append(f"Delivered-To: {single}")
    lines.append(f"Received: from {lhlo or 'unknown'}" + (f" ([{peer_ip}])" if peer_ip else ""))
    lines += [f"\tby {hostname} with LMTP", f"\tid {session}"]
    date = _date(int(time.time() if now is None else now))
    if single is not None:
        lines += [f"\t(envelope-from <{sender}>)", f"\tfor <{single}>; {date}"]
    else:
        lines.append(f"\t(envelope-from <{sender}>); {date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
