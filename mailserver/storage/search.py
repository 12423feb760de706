"""Search programs: the storage-level form of IMAP SEARCH (and of anything else that filters mail).

The IMAP layer turns its parsed SEARCH keys into a tree of these nodes (sequence sets become
UID sets, NEW becomes And(Recent, Not(Seen)), ...); ``Mailbox.search`` evaluates it.  Keys that
need only metadata are answered from the index and cache; Body/Text read bodies.
"""

from __future__ import annotations

import dataclasses
import datetime


class Node:
    """Base class of search nodes."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True)
class All(Node):
    """Every message."""


@dataclasses.dataclass(frozen=True)
class And(Node):
    items: tuple


@dataclasses.dataclass(frozen=True)
class Or(Node):
    left: Node
    right: Node


@dataclasses.dataclass(frozen=True)
class Not(Node):
    item: Node


@dataclasses.dataclass(frozen=True)
class Flag(Node):
    """A system flag (``\\Seen``...) or keyword is set."""

    flag: str


@dataclasses.dataclass(frozen=True)
class Recent(Node):
    """The message is \\Recent in this session."""


@dataclasses.dataclass(frozen=True)
class UidIn(Node):
    """UID within a set of inclusive ranges ((lo, hi), ...)."""

    ranges: tuple


@dataclasses.dataclass(frozen=True)
class Size(Node):
    """RFC822.SIZE larger (``larger`` True) or smaller than ``size``."""

    larger: bool
    size: int


@dataclasses.dataclass(frozen=True)
class Date(Node):
    """``field``: "internal" (INTERNALDATE), "sent" (Date: header) or "save" (SAVEDATE).
    ``op``: "before", "on" or "since"; compared by calendar day as RFC 3501 says."""

    field: str
    op: str
    day: datetime.date


@dataclasses.dataclass(frozen=True)
class Age(Node):
    """WITHIN (RFC 5032): internal date older (``older`` True) or younger than ``seconds``."""

    older: bool
    seconds: int


@dataclasses.dataclass(frozen=True)
class Header(Node):
    """Header field ``name`` contains ``value`` (decoded, case-insensitive); "" tests presence."""

    name: str
    value: str


@dataclasses.dataclass(frozen=True)
class Body(Node):
    """The decoded body text contains ``value`` (case-insensitive)."""

    value: str


@dataclasses.dataclass(frozen=True)
class Text(Node):
    """The decoded header or body contains ``value`` (case-insensitive)."""

    value: str


@dataclasses.dataclass(frozen=True)
class ModSeq(Node):
    """CONDSTORE MODSEQ: the message's modseq is at least ``modseq``."""

    modseq: int


@dataclasses.dataclass(frozen=True)
class EmailId(Node):
    """OBJECTID EMAILID: the mail GUID equals ``value``."""

    value: str
