"""Framing and encoding of index log records (docs/storage-format.md describes every byte).

A frame is ``length:u32le crc32:u32le payload``; ``crc32`` covers the payload.  A frame that is
incomplete or fails its checksum ends the readable log: readers stop there (a writer may be
mid-append), and a writer holding the lock cuts it off as a torn tail.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

FRAME = struct.Struct("<II")
MAX_RECORD = 64 * 1024 * 1024  # a sanity bound: a longer length field means garbage

# Record types (first payload byte).
HEADER = 1     # mailbox identity: written first in a new mailbox's first log
APPEND = 2     # new messages with their UIDs
FLAGS = 3      # flag/keyword change of some UIDs, one modseq
EXPUNGE = 4    # UIDs removed, one modseq
KEYWORD = 5    # defines keyword number -> name for this mailbox
ROTATE = 6     # this log ends; continue in log.<next>
RECENT = 7     # messages below this UID are no longer \Recent

# System flag bits.
FLAG_BITS = {"\\Seen": 1, "\\Answered": 2, "\\Flagged": 4, "\\Deleted": 8, "\\Draft": 16}
BIT_FLAGS = {v: k for k, v in FLAG_BITS.items()}

MODE_ADD, MODE_REMOVE, MODE_REPLACE = 0, 1, 2

_HEADER = struct.Struct("<BI16sq")                # type, uidvalidity, mailbox guid, created
_APPEND_HEAD = struct.Struct("<BQI")              # type, modseq, count
_MSG = struct.Struct("<IBqqQQ16sBBH")             # uid, flags, internaldate, savedate, size, vsize, guid, oidlen, reflen, nkw
_CHANGE_HEAD = struct.Struct("<BQBBHI")           # type, modseq, mode, flags, nkw, nranges
_EXPUNGE_HEAD = struct.Struct("<BQI")             # type, modseq, nranges
_KEYWORD_HEAD = struct.Struct("<BH")              # type, number (name follows, UTF-8)
_ROTATE = struct.Struct("<BI")                    # type, next log number
_RECENT = struct.Struct("<BI")                    # type, first recent uid
_RANGE = struct.Struct("<II")
_U16 = struct.Struct("<H")


class CorruptRecord(Exception):
    """A frame's payload does not decode (a bug or on-disk damage)."""


@dataclasses.dataclass(slots=True)
class NewMessage:
    uid: int
    flags: int                 # system flag bits
    keywords: tuple            # keyword numbers
    internaldate: int
    savedate: int
    size: int
    vsize: int
    guid: bytes                # 16 bytes
    oid: str
    ref: str


@dataclasses.dataclass(slots=True)
class Header:
    uidvalidity: int
    guid: bytes
    created: int


@dataclasses.dataclass(slots=True)
class Append:
    modseq: int
    messages: list


@dataclasses.dataclass(slots=True)
class FlagChange:
    modseq: int
    mode: int
    flags: int
    keywords: tuple
    ranges: tuple              # ((lo, hi), ...) inclusive UID ranges


@dataclasses.dataclass(slots=True)
class Expunge:
    modseq: int
    ranges: tuple


@dataclasses.dataclass(slots=True)
class Keyword:
    number: int
    name: str


@dataclasses.dataclass(slots=True)
class Rotate:
    next_log: int


@dataclasses.dataclass(slots=True)
class Recent:
    first_recent_uid: int


def frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def iter_frames(data: bytes, start: int = 0):
    """Yield ``(end_offset, payload)`` for each valid frame from ``start``; stop at the first
    incomplete or damaged one.  The caller's new offset is the last ``end_offset``."""
    pos = start
    n = len(data)
    while pos + 8 <= n:
        length, crc = FRAME.unpack_from(data, pos)
        end = pos + 8 + length
        if length > MAX_RECORD or end > n:
            return
        payload = data[pos + 8:end]
        if zlib.crc32(payload) != crc:
            return
        yield end, payload
        pos = end


def ranges_of(uids) -> tuple:
    """Inclusive ranges covering sorted unique UIDs."""
    out = []
    lo = prev = None
    for uid in uids:
        if lo is None:
            lo = prev = uid
        elif uid == prev + 1:
            prev = uid
        else:
            out.append((lo, prev))
            lo = prev = uid
    if lo is not None:
        out.append((lo, prev))
    return tuple(out)


def _pack_ranges(ranges) -> bytes:
    return b"".join(_RANGE.pack(lo, hi) for lo, hi in ranges)


def _unpack_ranges(payload: bytes, pos: int, count: int) -> tuple:
    return tuple(_RANGE.unpack_from(payload, pos + 8 * i) for i in range(count))


# --- encoders -----------------------------------------------------------------------------------

def encode_header(h: Header) -> bytes:
    return frame(_HEADER.pack(HEADER, h.uidvalidity, h.guid, h.created))


def encode_append(a: Append) -> bytes:
    parts = [_APPEND_HEAD.pack(APPEND, a.modseq, len(a.messages))]
    for m in a.messages:
        oid = m.oid.encode("ascii")
        ref = m.ref.encode("ascii")
        parts.append(_MSG.pack(m.uid, m.flags, m.internaldate, m.savedate, m.size, m.vsize, m.guid,
                               len(oid), len(ref), len(m.keywords)))
        parts.append(oid)
        parts.append(ref)
        parts.extend(_U16.pack(k) for k in m.keywords)
    return frame(b"".join(parts))


def encode_flags(c: FlagChange) -> bytes:
    head = _CHANGE_HEAD.pack(FLAGS, c.modseq, c.mode, c.flags, len(c.keywords), len(c.ranges))
    kws = b"".join(_U16.pack(k) for k in c.keywords)
    return frame(head + kws + _pack_ranges(c.ranges))


def encode_expunge(e: Expunge) -> bytes:
    return frame(_EXPUNGE_HEAD.pack(EXPUNGE, e.modseq, len(e.ranges)) + _pack_ranges(e.ranges))


def encode_keyword(k: Keyword) -> bytes:
    return frame(_KEYWORD_HEAD.pack(KEYWORD, k.number) + k.name.encode("utf-8"))


def encode_rotate(r: Rotate) -> bytes:
    return frame(_ROTATE.pack(ROTATE, r.next_log))


def encode_recent(r: Recent) -> bytes:
    return frame(_RECENT.pack(RECENT, r.first_recent_uid))


# --- decoder ------------------------------------------------------------------------------------

def decode(payload: bytes):
    """One record object from a frame's payload.  Raises CorruptRecord."""
    try:
        kind = payload[0]
        if kind == APPEND:
            _, modseq, count = _APPEND_HEAD.unpack_from(payload, 0)
            pos = _APPEND_HEAD.size
            messages = []
            for _ in range(count):
                uid, flags, idate, sdate, size, vsize, guid, oidlen, reflen, nkw = _MSG.unpack_from(payload, pos)
                pos += _MSG.size
                oid = payload[pos:pos + oidlen].decode("ascii")
                pos += oidlen
                ref = payload[pos:pos + reflen].decode("ascii")
                pos += reflen
                kws = tuple(_U16.unpack_from(payload, pos + 2 * i)[0] for i in range(nkw))
                pos += 2 * nkw
                messages.append(NewMessage(uid, flags, kws, idate, sdate, size, vsize, guid, oid, ref))
            if pos != len(payload):
                raise CorruptRecord("APPEND record has trailing bytes")
            return Append(modseq, messages)
        if kind == FLAGS:
            _, modseq, mode, flags, nkw, nranges = _CHANGE_HEAD.unpack_from(payload, 0)
            pos = _CHANGE_HEAD.size
            kws = tuple(_U16.unpack_from(payload, pos + 2 * i)[0] for i in range(nkw))
            pos += 2 * nkw
            if pos + 8 * nranges != len(payload):
                raise CorruptRecord("FLAGS record has the wrong length")
            return FlagChange(modseq, mode, flags, kws, _unpack_ranges(payload, pos, nranges))
        if kind == EXPUNGE:
            _, modseq, nranges = _EXPUNGE_HEAD.unpack_from(payload, 0)
            if _EXPUNGE_HEAD.size + 8 * nranges != len(payload):
                raise CorruptRecord("EXPUNGE record has the wrong length")
            return Expunge(modseq, _unpack_ranges(payload, _EXPUNGE_HEAD.size, nranges))
        if kind == HEADER:
            _, uidvalidity, guid, created = _HEADER.unpack(payload)
            return Header(uidvalidity, guid, created)
        if kind == KEYWORD:
            _, number = _KEYWORD_HEAD.unpack_from(payload, 0)
            return Keyword(number, payload[_KEYWORD_HEAD.size:].decode("utf-8"))
        if kind == ROTATE:
            return Rotate(_ROTATE.unpack(payload)[1])
        if kind == RECENT:
            return Recent(_RECENT.unpack(payload)[1])
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise CorruptRecord(f"record type {payload[:1].hex()}: {e}") from None
    raise CorruptRecord(f"unknown record type {payload[:1].hex()}")
