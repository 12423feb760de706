"""IMAP URLs (RFC 5092) naming one message or a part of it, with URLAUTH (RFC 4467).

Used by CATENATE (RFC 4469), GENURLAUTH and URLFETCH.  Only message URLs are understood
(``;UID=`` required; no search URLs, no mailbox-list URLs).  Forms accepted:

  ``imap://fred@example.org/INBOX;UIDVALIDITY=9/;UID=20/;SECTION=1.2/;PARTIAL=0.1024``
      absolute, optionally with ``;EXPIRE=<RFC 3339 date-time>;URLAUTH=<access>[:<mech>:<token>]``
  ``/Drafts;UIDVALIDITY=9/;UID=20/;SECTION=HEADER``     relative to this server and user
  ``;UID=20/;SECTION=1``                                relative to the selected mailbox

Keywords are case-insensitive; the mailbox name, the user and the section are %-decoded as
UTF-8 (RFC 5092 section 3).  ``parse`` raises ``BadUrl`` with a reason for the log.

URLAUTH tokens (mechanism INTERNAL): HMAC-SHA256 of the rump URL, exactly as the client sent it
(up to and including ``;URLAUTH=<access>``), under the mailbox access key, in hex.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import re
import secrets
import unicodedata
import urllib.parse

MECHANISM = "INTERNAL"
KEY_BYTES = 32
MAX_URL_LENGTH = 8192

_ABSOLUTE = re.compile(r"imap://(?:(?P<userinfo>[^@/?#]*)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/?#@\[\]]*)"
                       r"(?::(?P<port>[0-9]{1,5}))?(?P<path>/.*)?\Z", re.I | re.S)
_MESSAGE = re.compile(
    r"(?P<mailbox>[^;?#]*?)(?:;UIDVALIDITY=(?P<uidvalidity>[1-9][0-9]{0,9}))?/?;UID=(?P<uid>[1-9][0-9]{0,9})"
    r"(?:/;SECTION=(?P<section>[^;?#]*?))?"
    r"(?:/;PARTIAL=(?P<offset>[0-9]{1,10})(?:\.(?P<length>[1-9][0-9]{0,9}))?)?"
    r"(?:;EXPIRE=(?P<expire>[^;?#]+))?"
    r"(?:;URLAUTH=(?P<access>[^:;?#]+)(?::(?P<mechanism>[^:;?#]+):(?P<token>[^:;?#]*))?)?\Z",
    re.I | re.S)
_ACCESS = re.compile(r"(?P<app>submit|user)\+(?P<user>[^+]+)\Z|(?P<plain>authuser|anonymous)\Z", re.I)
_TOKEN = re.compile(r"[0-9A-Fa-f]{32,}\Z")


class BadUrl(ValueError):
    """Not a message URL this server can use; the text says why (for the log)."""


@dataclasses.dataclass(frozen=True)
class ImapUrl:
    """A parsed message URL.

    ``user``/``host``: None for relative URLs (the session's user, this server).  ``mailbox``:
    the Unicode name, None for a URL relative to the selected mailbox.  ``section``: the
    section text as in ``BODY[...]`` (decoded), or None.  ``partial``: (offset, length or None).
    ``expire``: UNIX seconds.  URLAUTH: ``access`` (``anonymous``, ``authuser``,
    ``user+name``, ``submit+name``: keyword lowercased, name as sent), ``mechanism``,
    ``token`` and ``rump`` (the text the token signs).
    """

    text: str
    user: str | None = None
    host: str | None = None
    mailbox: str | None = None
    uidvalidity: int | None = None
    uid: int = 0
    section: str | None = None
    partial: tuple | None = None
    expire: int | None = None
    access: str | None = None
    mechanism: str | None = None
    token: str | None = None
    rump: str | None = None

    @property
    def absolute(self) -> bool:
        return self.host is not None

    @property
    def access_kind(self) -> str | None:
        """``anonymous``, ``authuser``, ``user`` or ``submit``."""
        return None if self.access is None else self.access.split("+", 1)[0]

    @property
    def access_user(self) -> str | None:
        """The user named by ``user+name`` / ``submit+name``."""
        if self.access is None or "+" not in self.access:
            return None
        return self.access.split("+", 1)[1]


def _decode(text: str, what: str) -> str:
    try:
        return urllib.parse.unquote(text, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise BadUrl(f"{what} is not UTF-8") from None


def parse(text: str) -> ImapUrl:
    """Parse a message URL (see the module docstring).  Raises BadUrl."""
    if len(text) > MAX_URL_LENGTH:
        raise BadUrl("URL too long")
    if any(c < " " or c == "\x7f" for c in text):
        raise BadUrl("control character in URL")
    user = host = None
    if text[:7].lower() == "imap://":
        m = _ABSOLUTE.match(text)
        if not m or not m.group("host"):
            raise BadUrl("invalid server part")
        host = m.group("host").lower()
        if m.group("userinfo") is not None:
            enc_user = m.group("userinfo").split(";", 1)[0]     # ;AUTH=... is not ours to check
            if enc_user:
                user = _decode(enc_user, "user name")
        path = m.group("path") or ""
        if not path.startswith("/") or path.startswith("/;"):
            raise BadUrl("URL names no mailbox")
        path = path[1:]
    elif text.startswith("/"):
        path = text[1:]
        if path.startswith(";"):
            raise BadUrl("URL names no mailbox")
    elif text[:5].upper() == ";UID=":
        path = text
    else:
        raise BadUrl("not an IMAP URL")
    m = _MESSAGE.match(path)
    if not m:
        raise BadUrl("not a message URL (;UID= missing or unknown parameters)")
    mailbox = None
    if m.group("mailbox"):
        mailbox = unicodedata.normalize("NFC", _decode(m.group("mailbox"), "mailbox name"))
    elif not text.startswith(";"):
        raise BadUrl("URL names no mailbox")
    section = None
    if m.group("section") is not None:
        section = _decode(m.group("section"), "section")
        if not section:
            raise BadUrl("empty section")
    partial = None
    if m.group("offset") is not None:
        partial = (int(m.group("offset")), int(m.group("length")) if m.group("length") else None)
    expire = None
    if m.group("expire") is not None:
        expire = _expire(m.group("expire"))
    access = mechanism = token = rump = None
    if m.group("access") is not None:
        if host is None:
            raise BadUrl("URLAUTH needs an absolute URL")
        a = _ACCESS.match(m.group("access"))
        if not a:
            raise BadUrl("unknown URLAUTH access identifier")
        if a.group("plain"):
            access = a.group("plain").lower()
        else:
            access = a.group("app").lower() + "+" + _decode(a.group("user"), "access user")
        rump = text[:len(text) - len(path) + m.end("access")]
        if m.group("mechanism") is not None:
            mechanism, token = m.group("mechanism"), m.group("token")
            if not _TOKEN.match(token):
                raise BadUrl("invalid URLAUTH token")
    elif m.group("expire") is not None:
        raise BadUrl(";EXPIRE= without ;URLAUTH=")
    uidvalidity = int(m.group("uidvalidity")) if m.group("uidvalidity") else None
    uid = int(m.group("uid"))
    if uid > 0xFFFFFFFF or (uidvalidity or 0) > 0xFFFFFFFF:
        raise BadUrl("number out of range")
    return ImapUrl(text, user, host, mailbox, uidvalidity, uid, section, partial, expire,
                   access, mechanism, token, rump)


def _expire(text: str) -> int:
    value = _decode(text, "expiry")
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise BadUrl("invalid ;EXPIRE= date-time") from None
    if when.tzinfo is None:
        raise BadUrl(";EXPIRE= without a time zone")
    return int(when.timestamp())


def new_key() -> str:
    """A fresh mailbox access key (hex)."""
    return secrets.token_hex(KEY_BYTES)


def token(key_hex: str, rump: str) -> str:
    """The INTERNAL token of a rump URL under a mailbox access key."""
    return hmac.new(bytes.fromhex(key_hex), rump.encode("utf-8"), hashlib.sha256).hexdigest()


def verify(key_hex: str, rump: str, given: str) -> bool:
    """Constant-time check of a token."""
    return hmac.compare_digest(token(key_hex, rump), given.lower())


def for_response_code(text: str) -> str:
    """A URL as it may appear in ``[BADURL ...]`` (no ``]``, no control characters)."""
    return "".join(c for c in text if c >= " " and c not in "]\x7f")[:1024]
