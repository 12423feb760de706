"""The index cache: fields parsed once at save time (envelope, bodystructure, part offsets, the
commonly fetched header fields), so FETCH and SEARCH of metadata never read a message body.

One append-only file per mailbox.  Entries are keyed by object id (immutable, shared by COPY),
so they are written before UIDs exist and need no lock: each entry is one ``write`` of one frame.
The cache is not authoritative: a lost or damaged entry is recomputed from the object.
"""

from __future__ import annotations

import struct
import zlib

from twisted.internet import defer

from mailserver.storage.index.records import FRAME, MAX_RECORD, frame

ENVELOPE = 1
BODYSTRUCTURE = 2
BODY = 3
PARTS = 4          # JSON of mime.Part.to_json()
HEADER_SIZE = 5    # decimal ASCII
HEADERS = 6        # raw lines of the cached header fields
HEADER_NAMES = 7   # lowercased names covered by HEADERS, comma-separated
PREVIEW = 8        # RFC 8970 preview text, UTF-8
FIELDS = (ENVELOPE, BODYSTRUCTURE, BODY, PARTS, HEADER_SIZE, HEADERS, HEADER_NAMES, PREVIEW)
# Not computed from the body, so not in FIELDS (an entry without it is complete): the POP3 UIDL from
# the object's metadata (empty when none was recorded at migration), filled in when first asked for.
POP3_UIDL = 9

_FIELD = struct.Struct("<BI")
_NAME_SETS: dict[bytes, frozenset] = {}


def header_names(raw: bytes) -> frozenset:
    """The HEADER_NAMES field as a set of names (memoised: most messages share a few sets)."""
    names = _NAME_SETS.get(raw)
    if names is None:
        names = frozenset(raw.decode("ascii", "replace").split(","))
        if len(_NAME_SETS) >= 4096:
            _NAME_SETS.clear()
        _NAME_SETS[bytes(raw)] = names
    return names


def encode_entry(oid: str, fields: dict[int, bytes]) -> bytes:
    raw_oid = oid.encode("ascii")
    parts = [bytes([len(raw_oid)]), raw_oid]
    for fid, value in fields.items():
        parts.append(_FIELD.pack(fid, len(value)))
        parts.append(value)
    return frame(b"".join(parts))


def decode_fields(payload: bytes, pos: int) -> dict[int, bytes]:
    fields = {}
    n = len(payload)
    while pos < n:
        fid, ln = _FIELD.unpack_from(payload, pos)
        pos += _FIELD.size
        fields[fid] = payload[pos:pos + ln]
        pos += ln
    return fields


def scan(data: bytes, start: int = 0):
    """Yield ``(end, oid, payload, fields_pos)`` for each valid entry.  A damaged frame followed
    by valid ones is skipped by searching for the next valid frame; an incomplete frame at the
    end stops the scan (a writer may be appending it right now)."""
    pos = start
    n = len(data)
    while pos + 8 <= n:
        length, crc = FRAME.unpack_from(data, pos)
        end = pos + 8 + length
        if length <= MAX_RECORD and end <= n:
            payload = data[pos + 8:end]
            if zlib.crc32(payload) == crc and payload:
                oid_len = payload[0]
                oid = payload[1:1 + oid_len].decode("ascii", "replace")
                yield end, oid, payload, 1 + oid_len
                pos = end
                continue
        # Damaged, or incomplete: an incomplete frame with a valid one after it is a torn write
        # (appends are single writes); with nothing after it, it may be being written now.
        nxt = _resync(data, pos + 1)
        if nxt is None:
            return
        pos = nxt


def _resync(data: bytes, pos: int) -> int | None:
    n = len(data)
    while pos + 8 <= n:
        length, crc = FRAME.unpack_from(data, pos)
        end = pos + 8 + length
        if 0 < length <= MAX_RECORD and end <= n and zlib.crc32(data[pos + 8:end]) == crc:
            return pos
        pos += 1
    return None


class CacheEntry:
    """Cached fields of one object, decoded on first use."""

    __slots__ = ("_payload", "_pos", "_fields", "_complete")

    def __init__(self, payload: bytes, pos: int):
        self._payload = payload
        self._pos = pos
        self._fields = None
        self._complete = None

    def get(self, fid: int) -> bytes | None:
        if self._fields is None:
            self._fields = decode_fields(self._payload, self._pos)
        return self._fields.get(fid)

    def complete(self) -> bool:
        """Every field of ``FIELDS`` is there (older entries may lack newer fields)."""
        if self._complete is None:
            if self._fields is None:
                self._fields = decode_fields(self._payload, self._pos)
            self._complete = all(f in self._fields for f in FIELDS)
        return self._complete


class MessageCache:
    """In-memory view of one mailbox's cache file, read incrementally."""

    def __init__(self, store, path: str):
        self.store = store
        self.path = path
        self.entries: dict[str, CacheEntry] = {}
        self.offset = 0
        self.loaded = False
        self._loading = defer.DeferredLock()
        # Values derived from entries by the mailbox format (e.g. decoded header fields for
        # SEARCH): {kind: {oid: value}}.  Objects are immutable, so they never go stale.
        self.derived: dict[str, dict] = {}

    async def load_more(self) -> None:
        """Read entries appended since the last call (by this or another process)."""
        data = await self.store.read(self.path, self.offset)
        self.loaded = True
        if not data:
            return
        end = 0
        for end, oid, payload, pos in scan(data):
            self.entries[oid] = CacheEntry(payload, pos)
        self.offset += end

    async def get(self, oid: str) -> CacheEntry | None:
        entry = self.entries.get(oid)
        if entry is None:
            # FETCH asks for many entries at once: one read of the file serves them all, instead
            # of every waiting request reading (and scanning) the whole file again.
            await self._loading.acquire()
            try:
                entry = self.entries.get(oid)
                if entry is None:
                    await self.load_more()
                    entry = self.entries.get(oid)
            finally:
                self._loading.release()
        return entry

    async def add(self, oid: str, fields: dict[int, bytes]) -> None:
        """Append an entry (not synced: the cache can always be recomputed)."""
        path, raw = self.remember(oid, fields)
        await self.store.append(path, raw)

    def remember(self, oid: str, fields: dict[int, bytes]) -> tuple[str, bytes]:
        """Keep an entry in memory; the ``(path, frame)`` the caller appends to the store (the
        save path hands it to the index commit, so it costs no round trip of its own)."""
        raw = encode_entry(oid, fields)
        self.entries[oid] = CacheEntry(raw[8:], 1 + len(oid))
        return self.path, raw

    def forget(self) -> None:
        """Drop memory (the file stays)."""
        self.entries.clear()
        self.derived.clear()
        self.offset = 0
        self.loaded = False
