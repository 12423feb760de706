"""The in-memory state of one mailbox's index, and its snapshot file.

Messages are kept in columns (arrays indexed by position, ascending UID), so a 10,000-message
snapshot loads with a handful of ``frombytes`` calls and no per-message Python objects;
``MessageInfo`` objects are built only for what a session reads.
"""

from __future__ import annotations

import bisect
import struct
import sys
import zlib
from array import array

from mailserver.storage.api import MessageInfo
from mailserver.storage.index import records as R

SNAPSHOT_MAGIC = b"RBXSNAP1"
_SNAP_HEAD = struct.Struct("<I16sqIIQIQIH")
# uidvalidity, guid, created, uidnext, first_recent_uid, highestmodseq, log_no, log_offset, count, nkeywords
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_EXP_HEAD = struct.Struct("<QI")     # modseq (or floor), count
_RANGE = struct.Struct("<II")

MAX_EXPUNGE_HISTORY = 10000   # expunge records kept for VANISHED (EARLIER)

_COLUMNS = (("uids", "I"), ("flags", "B"), ("modseqs", "Q"), ("idates", "q"),
            ("sdates", "q"), ("sizes", "Q"), ("vsizes", "Q"))


class SnapshotError(Exception):
    """A snapshot file is damaged (the mailbox is then rebuilt from the log or the objects)."""


class MailboxState:
    """UIDs, flags, keywords, modseqs and per-message metadata of one mailbox."""

    def __init__(self):
        self.uidvalidity = 0
        self.guid = b"\0" * 16
        self.created = 0
        self.uidnext = 1
        self.first_recent_uid = 1
        self.highestmodseq = 1
        self.log_no = 1              # log file this state continues in
        self.log_offset = 0          # bytes of that log already applied
        self.keywords: list[str] = []
        self.keyword_numbers: dict[str, int] = {}
        self.uids = array("I")
        self.flags = array("B")
        self.modseqs = array("Q")
        self.idates = array("q")
        self.sdates = array("q")
        self.sizes = array("Q")
        self.vsizes = array("Q")
        self.guids = bytearray()
        self.oids: list[str] = []
        self.refs: list[str] = []
        self.kwmasks: list[int] = []
        self.expunge_count = 0       # grows with every expunged message (views compare it)
        self.expunged: list = []     # (modseq, uid ranges) of recent expunges, oldest first (QRESYNC)
        self.expunged_floor = 0      # expunges at or below this modseq are no longer listed
        self._flagsets: dict = {}

    # --- lookups ------------------------------------------------------------------------------
    def __len__(self):
        return len(self.uids)

    def position(self, uid: int) -> int:
        """Index of ``uid`` in the columns, or -1."""
        i = bisect.bisect_left(self.uids, uid)
        return i if i < len(self.uids) and self.uids[i] == uid else -1

    def flag_names(self, bits: int, mask: int) -> frozenset:
        key = (bits, mask)
        fs = self._flagsets.get(key)
        if fs is None:
            names = [name for bit, name in R.BIT_FLAGS.items() if bits & bit]
            n = 0
            while mask:
                if mask & 1 and n < len(self.keywords):
                    names.append(self.keywords[n])
                mask >>= 1
                n += 1
            fs = self._flagsets[key] = frozenset(names)
        return fs

    def info_at(self, i: int) -> MessageInfo:
        return MessageInfo(
            uid=self.uids[i], guid=self.guids[16 * i:16 * i + 16].hex(), oid=self.oids[i],
            flags=self.flag_names(self.flags[i], self.kwmasks[i]), modseq=self.modseqs[i],
            internaldate=self.idates[i], savedate=self.sdates[i], size=self.sizes[i], vsize=self.vsizes[i])

    def info(self, uid: int) -> MessageInfo | None:
        i = self.position(uid)
        return self.info_at(i) if i >= 0 else None

    def expunged_since(self, modseq: int) -> list | None:
        """UIDs expunged with a modseq above ``modseq``, ascending; None if the history kept
        does not reach back that far."""
        if modseq < self.expunged_floor:
            return None
        out = []
        for m, ranges in self.expunged:
            if m > modseq:
                for lo, hi in ranges:
                    out.extend(range(lo, hi + 1))
        return sorted(set(out))

    def keyword_mask(self, names) -> tuple[int, list[str]]:
        """Bit mask of keyword names, and the names not yet defined in this mailbox."""
        mask = 0
        new = []
        for name in names:
            n = self.keyword_numbers.get(name)
            if n is None:
                new.append(name)
            else:
                mask |= 1 << n
        return mask, new

    # --- applying log records -----------------------------------------------------------------
    def apply(self, rec) -> None:
        t = type(rec)
        if t is R.Append:
            self._apply_append(rec)
        elif t is R.FlagChange:
            self._apply_flags(rec)
        elif t is R.Expunge:
            self._apply_expunge(rec)
        elif t is R.Keyword:
            while len(self.keywords) <= rec.number:
                self.keywords.append("")
            self.keywords[rec.number] = rec.name
            self.keyword_numbers[rec.name] = rec.number
            self._flagsets.clear()
        elif t is R.Header:
            self.uidvalidity, self.guid, self.created = rec.uidvalidity, rec.guid, rec.created
        elif t is R.Recent:
            self.first_recent_uid = max(self.first_recent_uid, rec.first_recent_uid)
        elif t is R.Rotate:
            self.log_no, self.log_offset = rec.next_log, 0

    def _apply_append(self, rec: R.Append) -> None:
        for m in rec.messages:
            if self.uids and m.uid <= self.uids[-1]:
                continue  # already applied (replayed twice) or out of order: UIDs only grow
            self.uids.append(m.uid)
            self.flags.append(m.flags)
            self.modseqs.append(rec.modseq)
            self.idates.append(m.internaldate)
            self.sdates.append(m.savedate)
            self.sizes.append(m.size)
            self.vsizes.append(m.vsize)
            self.guids += m.guid
            self.oids.append(m.oid)
            self.refs.append(m.ref)
            mask = 0
            for k in m.keywords:
                mask |= 1 << k
            self.kwmasks.append(mask)
            self.uidnext = max(self.uidnext, m.uid + 1)
        self.highestmodseq = max(self.highestmodseq, rec.modseq)

    def positions_in(self, ranges) -> list[int]:
        out = []
        uids = self.uids
        for lo, hi in ranges:
            i = bisect.bisect_left(uids, lo)
            j = bisect.bisect_right(uids, hi)
            out.extend(range(i, j))
        return out

    def _apply_flags(self, rec: R.FlagChange) -> None:
        kwmask = 0
        for k in rec.keywords:
            kwmask |= 1 << k
        for i in self.positions_in(rec.ranges):
            if rec.mode == R.MODE_ADD:
                self.flags[i] |= rec.flags
                self.kwmasks[i] |= kwmask
            elif rec.mode == R.MODE_REMOVE:
                self.flags[i] &= ~rec.flags & 0xFF
                self.kwmasks[i] &= ~kwmask
            else:
                self.flags[i] = rec.flags
                self.kwmasks[i] = kwmask
            self.modseqs[i] = rec.modseq
        self.highestmodseq = max(self.highestmodseq, rec.modseq)

    def _apply_expunge(self, rec: R.Expunge) -> None:
        gone = self.positions_in(rec.ranges)
        if gone:
            self.expunged.append((rec.modseq, R.ranges_of(self.uids[i] for i in gone)))
            if len(self.expunged) > MAX_EXPUNGE_HISTORY:
                self.expunged_floor = self.expunged.pop(0)[0]
            keep = sorted(set(range(len(self.uids))) - set(gone)) if len(gone) < len(self.uids) else []
            self.keep_positions(keep)
            self.expunge_count += len(gone)
        self.highestmodseq = max(self.highestmodseq, rec.modseq)

    def keep_positions(self, keep: list[int]) -> None:
        for name, code in _COLUMNS:
            col = getattr(self, name)
            setattr(self, name, array(code, [col[i] for i in keep]))
        self.guids = bytearray(b"".join(self.guids[16 * i:16 * i + 16] for i in keep))
        self.oids = [self.oids[i] for i in keep]
        self.refs = [self.refs[i] for i in keep]
        self.kwmasks = [self.kwmasks[i] for i in keep]

    # --- snapshot -----------------------------------------------------------------------------
    def encode_snapshot(self) -> bytes:
        """The whole state as a snapshot file (see docs/storage-format.md)."""
        parts = [SNAPSHOT_MAGIC,
                 _SNAP_HEAD.pack(self.uidvalidity, bytes(self.guid), self.created, self.uidnext,
                                 self.first_recent_uid, self.highestmodseq, self.log_no, self.log_offset,
                                 len(self.uids), len(self.keywords))]
        for name in self.keywords:
            raw = name.encode("utf-8")
            parts.append(_U16.pack(len(raw)) + raw)
        for name, _ in _COLUMNS:
            col = getattr(self, name)
            if sys.byteorder == "big":
                col = array(col.typecode, col)
                col.byteswap()
            parts.append(col.tobytes())
        parts.append(bytes(self.guids))
        for strings in (self.oids, self.refs):
            raw = "\0".join(strings).encode("ascii")
            parts.append(_U32.pack(len(raw)) + raw)
        masks = [(i, m) for i, m in enumerate(self.kwmasks) if m]
        parts.append(_U32.pack(len(masks)))
        for i, m in masks:
            raw = m.to_bytes((m.bit_length() + 7) // 8, "little")
            parts.append(_U32.pack(i) + _U16.pack(len(raw)) + raw)
        parts.append(_EXP_HEAD.pack(self.expunged_floor, len(self.expunged)))
        for modseq, ranges in self.expunged:
            parts.append(_EXP_HEAD.pack(modseq, len(ranges)))
            parts.extend(_RANGE.pack(lo, hi) for lo, hi in ranges)
        body = b"".join(parts)
        return body + _U32.pack(zlib.crc32(body))

    @classmethod
    def decode_snapshot(cls, data: bytes) -> "MailboxState":
        if len(data) < len(SNAPSHOT_MAGIC) + _SNAP_HEAD.size + 4 or not data.startswith(SNAPSHOT_MAGIC):
            raise SnapshotError("not a snapshot file")
        body, (crc,) = data[:-4], _U32.unpack(data[-4:])
        if zlib.crc32(body) != crc:
            raise SnapshotError("snapshot checksum mismatch")
        s = cls()
        try:
            pos = len(SNAPSHOT_MAGIC)
            (s.uidvalidity, guid, s.created, s.uidnext, s.first_recent_uid, s.highestmodseq,
             s.log_no, s.log_offset, count, nkw) = _SNAP_HEAD.unpack_from(body, pos)
            s.guid = guid
            pos += _SNAP_HEAD.size
            for n in range(nkw):
                (ln,) = _U16.unpack_from(body, pos)
                name = body[pos + 2:pos + 2 + ln].decode("utf-8")
                pos += 2 + ln
                s.keywords.append(name)
                s.keyword_numbers[name] = n
            for name, code in _COLUMNS:
                col = array(code)
                nbytes = col.itemsize * count
                col.frombytes(body[pos:pos + nbytes])
                if sys.byteorder == "big":
                    col.byteswap()
                setattr(s, name, col)
                pos += nbytes
            s.guids = bytearray(body[pos:pos + 16 * count])
            pos += 16 * count
            for attr in ("oids", "refs"):
                (ln,) = _U32.unpack_from(body, pos)
                raw = body[pos + 4:pos + 4 + ln].decode("ascii")
                pos += 4 + ln
                setattr(s, attr, raw.split("\0") if count else [])
            s.kwmasks = [0] * count
            (nmasks,) = _U32.unpack_from(body, pos)
            pos += 4
            for _ in range(nmasks):
                (i,) = _U32.unpack_from(body, pos)
                (ln,) = _U16.unpack_from(body, pos + 4)
                s.kwmasks[i] = int.from_bytes(body[pos + 6:pos + 6 + ln], "little")
                pos += 6 + ln
            s.expunged_floor, nexp = _EXP_HEAD.unpack_from(body, pos)
            pos += _EXP_HEAD.size
            for _ in range(nexp):
                modseq, nr = _EXP_HEAD.unpack_from(body, pos)
                pos += _EXP_HEAD.size
                s.expunged.append((modseq, tuple(_RANGE.unpack_from(body, pos + 8 * k) for k in range(nr))))
                pos += 8 * nr
        except (struct.error, UnicodeDecodeError, IndexError) as e:
            raise SnapshotError(f"snapshot does not decode: {e}") from None
        if pos != len(body) or len(s.oids) != count or len(s.refs) != count or len(s.guids) != 16 * count:
            raise SnapshotError("snapshot has inconsistent lengths")
        return s
