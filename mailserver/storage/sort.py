"""SORT (RFC 5256, RFC 5957 DISPLAYFROM/DISPLAYTO): sort keys from the index and its cache.

Keys come from ``MessageInfo`` (ARRIVAL, SIZE) and the cached header fields (``FetchItem.
CACHED_HEADERS``: From, To, Cc, Subject, Date); message bodies are never read (a field too long
for the cache makes that one message's header be read).  Strings compare under i;unicode-casemap
(``collation.casemap``); equal keys fall back to the next criterion, and finally to the message
order in the mailbox (ascending UID), as RFC 5256 requires.

``base_subject`` is RFC 5256 section 2.1 exactly; it is shared with THREAD (``thread.py``).
"""

from __future__ import annotations

import dataclasses
import re
from email.utils import mktime_tz, parsedate_tz

from mailserver.storage import mime
from mailserver.storage.collation import casemap
from mailserver.storage.mime import _headers as H

KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")
# Header fields each key reads.
_FIELDS = {"CC": "cc", "DATE": "date", "FROM": "from", "SUBJECT": "subject", "TO": "to",
           "DISPLAYFROM": "from", "DISPLAYTO": "to"}


@dataclasses.dataclass(frozen=True)
class Criterion:
    """One sort key (``KEYS``); ``reverse`` for a REVERSE before it."""

    key: str
    reverse: bool = False


# --- base subject (RFC 5256 2.1) ----------------------------------------------------------------

_WSP_RUN = re.compile(r"[ \t\r\n]+")
_BLOB = r"\[[^\[\]]*\][ \t]*"
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])\Z", re.IGNORECASE)
# subj-leader = (*subj-blob subj-refwd) / WSP
_LEADER = re.compile(r"(?:(?:%s)*(?:re|fwd?)[ \t]*(?:%s)?:|[ \t])" % (_BLOB, _BLOB), re.IGNORECASE)
_BLOB_PREFIX = re.compile(_BLOB)
_FWD_HDR = "[fwd:"


def base_subject(subject: str) -> tuple[str, bool]:
    """(base subject, whether reply/forward markers were removed) of a decoded Subject value."""
    s = _WSP_RUN.sub(" ", subject)                        # (1) (decoding is the caller's)
    is_reply = False
    while True:
        while True:                                       # (2) subj-trailer, repeatedly
            m = _TRAILER.search(s)
            if not m:
                break
            if m.group() != " " and m.group() != "\t":
                is_reply = True
            s = s[:m.start()]
        while True:                                       # (5) repeat (3) and (4)
            changed = False
            while True:                                   # (3) subj-leader
                m = _LEADER.match(s)
                if not m or not m.end():
                    break
                if m.group() not in (" ", "\t"):
                    is_reply = True
                s = s[m.end():]
                changed = True
            m = _BLOB_PREFIX.match(s)                     # (4) a blob, if a subj-base remains
            if m and s[m.end():]:
                s = s[m.end():]
                changed = True
            if not changed:
                break
        # (6) [fwd: ...]
        if s[:len(_FWD_HDR)].lower() == _FWD_HDR and s.endswith("]"):
            s = s[len(_FWD_HDR):-1]
            is_reply = True
            continue
        return s, is_reply


# --- per-message values -------------------------------------------------------------------------

def header_values(header: bytes, names) -> dict:
    """The first raw value (unfolded, trimmed) of each of ``names`` (lowercase) in a header."""
    out: dict = {}
    for fname, value, _, _ in H.fields(header):
        if fname in names and fname not in out:
            out[fname] = H.unfold(value).strip(b" \t")
    return out


def sent_date(value: bytes | None, internaldate: int) -> int:
    """The Date field as UTC seconds; INTERNALDATE when missing or unparseable (RFC 5256 2.2)."""
    if value:
        try:
            parsed = parsedate_tz(value.decode("latin-1"))
            if parsed is not None:
                return int(mktime_tz(parsed))
        except (ValueError, OverflowError, TypeError, IndexError):
            pass
    return internaldate


def _first_address(value: bytes | None):
    if not value:
        return None
    for name, _, mailbox, host in mime.parse_addresses(value):
        if host is not None:            # skip group markers
            return name, mailbox, host
    return None


def address_key(value: bytes | None) -> str:
    """FROM/TO/CC: the addr-mailbox of the first address, casemapped ("" if none)."""
    addr = _first_address(value)
    return casemap(addr[1] or "") if addr else ""


def display_key(value: bytes | None) -> str:
    """DISPLAYFROM/DISPLAYTO (RFC 5957): the decoded display name of the first address, or
    its mailbox@host when it has none; casemapped."""
    addr = _first_address(value)
    if not addr:
        return ""
    name, mailbox, host = addr
    if name:
        text = mime.decode_words(name.encode("latin-1")).strip()
        if text:
            return casemap(text)
    return casemap(f"{mailbox or ''}@{host or ''}")


def subject_key(value: bytes | None) -> str:
    if not value:
        return ""
    return casemap(base_subject(mime.decode_words(value))[0])


def key_value(key: str, info, fields: dict):
    """The comparable value of one sort key for one message."""
    if key == "ARRIVAL":
        return info.internaldate
    if key == "SIZE":
        return info.vsize
    if key == "DATE":
        return sent_date(fields.get("date"), info.internaldate)
    if key == "SUBJECT":
        return subject_key(fields.get("subject"))
    if key in ("DISPLAYFROM", "DISPLAYTO"):
        return display_key(fields.get(_FIELDS[key]))
    return address_key(fields.get(_FIELDS[key]))


async def headers_of(mailbox, uids, names: set):
    """Yield (MessageInfo, {field: raw value}) per UID from the cached header fields (reading
    the header of a message only when a field was too long to be cached)."""
    from mailserver.storage.api import FetchItem
    if not names:
        for uid in uids:
            info = mailbox.info(uid)
            if info is not None:
                yield info, {}
        return
    async for mail in mailbox.fetch(list(uids), {FetchItem.CACHED_HEADERS}):
        header = mail.cached_headers or b""
        if mail.cached_header_names is not None and not names <= mail.cached_header_names:
            async for full in mailbox.fetch([mail.info.uid], {FetchItem.HEADER}):
                header = full.header or header
        yield mail.info, header_values(header, names)


async def sort(mailbox, uids, criteria) -> list:
    """``uids`` ordered by ``criteria`` (a list of ``Criterion``), ties by ascending UID."""
    names = {_FIELDS[c.key] for c in criteria if c.key in _FIELDS}
    rows = []
    async for info, fields in headers_of(mailbox, sorted(uids), names):
        rows.append((info.uid, [key_value(c.key, info, fields) for c in criteria]))
    # Stable sorts from the last criterion to the first; rows start in UID order.
    for i in range(len(criteria) - 1, -1, -1):
        rows.sort(key=lambda row: row[1][i], reverse=criteria[i].reverse)
    return [uid for uid, _ in rows]
