"""The one sequence-set type (RFC 3501 ``sequence-set``, RFC 5182 ``$``).

A ``SequenceSet`` is parsed once from the client's text and resolved against the session's view
of the selected mailbox (its ascending UID list) either as message sequence numbers or as UIDs.
``format_uids`` writes UID lists compactly for APPENDUID, COPYUID and VANISHED.
"""

from __future__ import annotations

import bisect
import re
from typing import Iterable, Sequence

MAX_NUMBER = 0xFFFFFFFF
STAR = 0           # stands for "*" inside a range (real numbers are never 0)

_RANGE = re.compile(r"([1-9][0-9]*|\*)(?::([1-9][0-9]*|\*))?\Z")


class InvalidSequenceSet(ValueError):
    """Text that is not a sequence set; the message is safe to show a client."""


class OutOfRange(ValueError):
    """A message sequence number beyond the number of messages in the view."""


class SequenceSet:
    """A parsed sequence set: ``ranges`` as written ((first, last) with STAR for ``*``), or
    ``saved`` for ``$`` (the result saved by SEARCH RETURN (SAVE), RFC 5182)."""

    __slots__ = ("ranges", "saved")

    def __init__(self, ranges: tuple = (), saved: bool = False):
        self.ranges = tuple(ranges)
        self.saved = saved

    @classmethod
    def parse(cls, text: str | bytes) -> "SequenceSet":
        """Parse ``1:5,7,10:*`` or ``$``.  Raises InvalidSequenceSet."""
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("ascii")
            except UnicodeDecodeError:
                raise InvalidSequenceSet("Invalid sequence set") from None
        if text == "$":
            return cls(saved=True)
        if not text:
            raise InvalidSequenceSet("Empty sequence set")
        ranges = []
        for item in text.split(","):
            m = _RANGE.match(item)
            if not m:
                raise InvalidSequenceSet(f"Invalid sequence set element {item[:20]!r}")
            first = _number(m.group(1))
            last = _number(m.group(2)) if m.group(2) is not None else first
            ranges.append((first, last))
        return cls(tuple(ranges))

    @classmethod
    def is_sequence_set(cls, text: str) -> bool:
        """True if ``text`` parses as a sequence set (SEARCH tells a set from a key this way)."""
        try:
            cls.parse(text)
        except InvalidSequenceSet:
            return False
        return True

    # --- resolution ---------------------------------------------------------------------------
    def msns_to_uids(self, view: Sequence[int], saved: Sequence[int] | None = None) -> list[int]:
        """UIDs (ascending, unique) of the messages this set names as sequence numbers.

        ``*`` is the last message; in an empty view a range with ``*`` names nothing.
        Raises OutOfRange for a number beyond the view.
        """
        if self.saved:
            return self._saved_uids(view, saved)
        count = len(view)
        spans = []
        for first, last in self.ranges:
            if count == 0 and STAR in (first, last):
                continue
            lo, hi = sorted((first or count, last or count))
            if hi > count:
                raise OutOfRange(f"Message sequence number {hi} does not exist")
            spans.append((lo - 1, hi))
        return _slices(view, spans)

    def uids(self, view: Sequence[int], saved: Sequence[int] | None = None) -> list[int]:
        """UIDs (ascending, unique) of the messages of the view this set names as UIDs.

        ``*`` is the highest UID in the view, so ``559:*`` always includes the last message
        (RFC 3501 6.4.8); UIDs not in the view are ignored.
        """
        if self.saved:
            return self._saved_uids(view, saved)
        if not view:
            return []
        top = view[-1]
        spans = []
        for first, last in self.ranges:
            lo, hi = sorted((first or top, last or top))
            spans.append((bisect.bisect_left(view, lo), bisect.bisect_right(view, hi)))
        return _slices(view, spans)

    def resolve(self, view: Sequence[int], uid: bool, saved: Sequence[int] | None = None) -> list[int]:
        """``uids`` when ``uid`` is true, else ``msns_to_uids``."""
        return self.uids(view, saved) if uid else self.msns_to_uids(view, saved)

    def uid_ranges(self, view: Sequence[int], uid: bool,
                   saved: Sequence[int] | None = None) -> tuple:
        """Inclusive UID ranges ((lo, hi), ...) for a storage search node (``search.UidIn``)."""
        if uid and not self.saved:
            top = view[-1] if view else 0
            spans = sorted(tuple(sorted((first or top, last or top))) for first, last in self.ranges)
            return tuple(_merge(spans, adjacent=1))
        return uid_ranges(self.resolve(view, uid, saved))

    @staticmethod
    def _saved_uids(view: Sequence[int], saved: Sequence[int] | None) -> list[int]:
        if not saved:
            return []
        # The saved result may name messages expunged since; keep those still in the view.
        present = []
        for u in sorted(set(saved)):
            i = bisect.bisect_left(view, u)
            if i < len(view) and view[i] == u:
                present.append(u)
        return present

    def __str__(self) -> str:
        if self.saved:
            return "$"
        parts = []
        for first, last in self.ranges:
            a = "*" if first == STAR else str(first)
            parts.append(a if first == last else a + ":" + ("*" if last == STAR else str(last)))
        return ",".join(parts)

    def __repr__(self) -> str:
        return f"SequenceSet({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, SequenceSet) and (self.ranges, self.saved) == (other.ranges, other.saved)

    def __hash__(self) -> int:
        return hash((self.ranges, self.saved))


def _number(text: str) -> int:
    if text == "*":
        return STAR
    value = int(text)
    if value > MAX_NUMBER:
        raise InvalidSequenceSet("Sequence number out of range")
    return value


def _merge(spans: list, adjacent: int = 0) -> list:
    """Sorted spans merged where they overlap (or touch, with ``adjacent=1`` for inclusive ranges)."""
    merged: list = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + adjacent:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def _slices(view: Sequence[int], spans: list) -> list[int]:
    """Concatenate view[start:stop] for half-open index spans, merged, ascending."""
    if len(spans) == 1:
        start, stop = spans[0]
        return list(view[start:stop])
    out: list[int] = []
    for start, stop in _merge(sorted(spans)):
        out.extend(view[start:stop])
    return out


def uid_ranges(uids: Iterable[int]) -> tuple:
    """Inclusive ranges covering ascending ``uids``: [1, 2, 3, 7] -> ((1, 3), (7, 7))."""
    ranges: list = []
    for u in uids:
        if ranges and u == ranges[-1][1] + 1:
            ranges[-1][1] = u
        else:
            ranges.append([u, u])
    return tuple((lo, hi) for lo, hi in ranges)


def format_uids(uids: Iterable[int]) -> str:
    """Compact text of a UID list, keeping its order: [1, 2, 3, 5, 9, 8] -> ``1:3,5,9,8``.

    Order is kept because COPYUID pairs source and destination sets element by element.
    """
    parts = []
    for lo, hi in uid_ranges(uids):
        parts.append(str(lo) if lo == hi else f"{lo}:{hi}")
    return ",".join(parts)
