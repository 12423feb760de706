"""A lean IMAP client for benchmarks: one blocking socket, commands sent as written, responses
skimmed (lines and literals are delimited, nothing is parsed further).

imaplib spends tens of microseconds of Python per response line (regular expressions, a list of
untagged responses per command); with this client a benchmark measures the server, not the client.
"""

from __future__ import annotations

import socket

_CHUNK = 1 << 20


class RawIMAPError(Exception):
    pass


class RawIMAP:
    def __init__(self, host: str, port: int, timeout: float = 300.0):
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.pos = 0
        self.n = 0
        self._line()                       # greeting

    def _fill(self) -> int:
        """Read more; drop what is consumed (before ``pos``).  Returns how far offsets moved."""
        data = self.sock.recv(_CHUNK)
        if not data:
            raise RawIMAPError("connection closed")
        shift = self.pos
        self.buf = self.buf[shift:] + data if shift else self.buf + data
        self.pos = 0
        return shift

    def _line(self) -> bytes:
        """The start of the next response (up to its first CRLF or 80 bytes); the rest of it,
        literals included, is skipped."""
        head = None
        scan = self.pos
        while True:
            end = self.buf.find(b"\r\n", scan)
            if end < 0:
                scan = max(self.pos, len(self.buf) - 1)
                scan -= self._fill()
                continue
            if head is None:
                head = self.buf[self.pos:min(end, self.pos + 80)]
            if self.buf[end - 1:end] == b"}":
                brace = self.buf.rfind(b"{", self.pos, end)
                digits = self.buf[brace + 1:end - 1].rstrip(b"+") if brace >= 0 else b""
                if digits.isdigit():
                    after = end + 2 + int(digits)
                    self.pos = end + 2
                    while len(self.buf) < after:
                        after -= self._fill()
                    self.pos = scan = after
                    continue
            self.pos = end + 2
            return head

    def command(self, text: str) -> int:
        """Send one command; return the number of untagged responses before its OK.
        Raises RawIMAPError on NO/BAD."""
        self.n += 1
        tag = b"r%d" % self.n
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        count = 0
        while True:
            line = self._line()
            if line.startswith(tag + b" "):
                if line[len(tag) + 1:len(tag) + 3] != b"OK":
                    raise RawIMAPError(line.decode("utf-8", "replace"))
                return count
            if line.startswith(b"* "):
                count += 1

    def close(self) -> None:
        try:
            self.command("LOGOUT")
        except (RawIMAPError, OSError):
            pass
        self.sock.close()
