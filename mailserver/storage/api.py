"""The mail-storage API: what IMAP, POP3 and LMTP see of storage.

Every method that may touch storage is a coroutine (run it from Twisted with
``Deferred.fromCoroutine`` / ``ensureDeferred``); nothing here blocks the reactor.
Errors are ``mailserver.storage.errors.StorageError``.

Names: mailbox names are Unicode strings with ``/`` as the hierarchy separator;
``INBOX`` is matched case-insensitively and always reported as ``INBOX``.
Protocol encodings (modified UTF-7) are the protocol layer's business.

Shape of a session:

    user = await storage.open_user("alice")          # shared per process, refcounted
    box = await user.open_mailbox("INBOX")           # one view per session
    changes = await box.refresh()                    # bring the view up to date
    async for mail in box.fetch(uids, {"envelope"}):  # batch-shaped, prefetching
        ...
    cols = await box.columns(uids, {"flags", "envelope"})  # or column by column: {name: [...]}
    await box.close(); await user.close()
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from typing import AsyncIterator, Callable, Iterable, Sequence

SEEN = "\\Seen"
ANSWERED = "\\Answered"
FLAGGED = "\\Flagged"
DELETED = "\\Deleted"
DRAFT = "\\Draft"
SYSTEM_FLAGS = (SEEN, ANSWERED, FLAGGED, DELETED, DRAFT)

SEPARATOR = "/"

SPECIAL_USES = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")


@dataclasses.dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message as the index knows it (no body access needed).

    ``flags`` holds system flags (``\\Seen``...) and keywords together, as their IMAP names.
    Dates are UNIX seconds.  ``size`` is the stored (physical) size, ``vsize`` the size with
    every line ending counted as CRLF (what RFC822.SIZE, POP3 LIST and STATUS SIZE report).
    """

    uid: int
    guid: str            # mail GUID, 32 hex digits, kept across COPY and MOVE
    oid: str             # object id of the body in the object store
    flags: frozenset
    modseq: int
    internaldate: int
    savedate: int
    size: int
    vsize: int


@dataclasses.dataclass(frozen=True, slots=True)
class MailboxInfo:
    """An entry of the mailbox list."""

    name: str
    guid: str
    subscribed: bool
    special_use: frozenset = frozenset()
    has_children: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class MailboxStatus:
    """What STATUS reports.  ``size`` is the sum of vsizes; ``unseen`` counts messages without
    \\Seen; ``deleted_size`` is the sum of vsizes of messages flagged \\Deleted (what an EXPUNGE
    would give back: STATUS DELETED-STORAGE)."""

    messages: int
    recent: int
    uidnext: int
    uidvalidity: int
    unseen: int
    highestmodseq: int
    size: int
    deleted: int
    guid: str
    deleted_size: int = 0


@dataclasses.dataclass(slots=True)
class Changes:
    """What happened in a mailbox since a view last refreshed.

    ``expunged``: UIDs removed from the view, ascending.  ``appended``: new messages, ascending UID.
    ``flags``: messages still in the view whose flags or modseq changed (latest state).
    """

    expunged: list = dataclasses.field(default_factory=list)
    appended: list = dataclasses.field(default_factory=list)
    flags: list = dataclasses.field(default_factory=list)

    def __bool__(self):
        return bool(self.expunged or self.appended or self.flags)


@dataclasses.dataclass(slots=True)
class FetchedMail:
    """One message's answer to ``Mailbox.fetch``: only what was asked for is filled in.

    Cached fields come from the index cache (computed once at save time):
      ``envelope``, ``bodystructure``, ``body`` -- IMAP syntax strings (RFC 3501 section 7.4.2)
      ``parts`` -- the MIME part tree with byte offsets (``mailserver.storage.mime.Part``)
      ``cached_headers`` -- raw lines of the commonly used header fields, and
      ``cached_header_names`` -- the lowercased field names they cover (a field not named there
      needs ``header``)
      ``preview`` -- RFC 8970 PREVIEW text
      ``pop3_uidl`` -- the POP3 UIDL recorded for the message when it was migrated from another
      server (object metadata, read once and then cached), or ``""`` when none was recorded
    Body data, read from the object store:
      ``data`` -- the whole message as stored
      ``header`` -- the message header block, including the blank line that ends it
    ``missing`` is set when the object could not be read (logged); other fields stay usable.
    """

    info: MessageInfo
    envelope: str | None = None
    bodystructure: str | None = None
    body: str | None = None
    parts: object | None = None
    cached_headers: bytes | None = None
    cached_header_names: frozenset | None = None
    preview: str | None = None
    pop3_uidl: str | None = None
    data: bytes | None = None
    header: bytes | None = None
    missing: bool = False


class FetchItem(str, enum.Enum):
    """What ``Mailbox.fetch`` can be asked for.  Metadata (``MessageInfo``) always comes back."""

    ENVELOPE = "envelope"
    BODYSTRUCTURE = "bodystructure"
    BODY = "body"
    PARTS = "parts"
    CACHED_HEADERS = "cached_headers"
    PREVIEW = "preview"
    POP3_UIDL = "pop3_uidl"
    HEADER = "header"
    DATA = "data"


# ``Mailbox.columns``: MessageInfo fields by column name, and the cached fields.
_INFO_COLUMNS = {"flags": "flags", "modseq": "modseq", "internaldate": "internaldate",
                 "savedate": "savedate", "size": "size", "vsize": "vsize", "guid": "guid"}
COLUMNS = ("uid",) + tuple(_INFO_COLUMNS) + ("envelope", "bodystructure", "body", "preview")


class StoreMode(enum.Enum):
    ADD = "add"
    REMOVE = "remove"
    REPLACE = "replace"


@dataclasses.dataclass(slots=True)
class StoreResult:
    """``changed``: messages whose flags changed (new state, new modseq).
    ``unchanged``: messages whose flags were already as asked (state as it is).
    ``failed``: UIDs skipped because their modseq was above UNCHANGEDSINCE (RFC 7162 MODIFIED)."""

    changed: list = dataclasses.field(default_factory=list)
    unchanged: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True)
class SaveResult:
    """UIDVALIDITY and the UIDs given to the saved messages, in the order they were added."""

    uidvalidity: int
    uids: tuple


@dataclasses.dataclass(frozen=True, slots=True)
class CopyResult:
    """UIDVALIDITY of the destination and (source UID, destination UID) pairs, ascending by source."""

    uidvalidity: int
    pairs: tuple


@dataclasses.dataclass(frozen=True, slots=True)
class QuotaResource:
    """One resource of a quota root: ``name`` is ``"STORAGE"`` (``usage``/``limit`` in bytes; IMAP
    reports KiB) or ``"MESSAGE"`` (messages).  ``limit`` None: unlimited."""

    name: str
    usage: int
    limit: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class QuotaRoot:
    """A quota root (RFC 9208) and its resources, with the limits that apply to the mailbox it
    was asked for (per-mailbox rules such as a larger Trash allowance)."""

    name: str
    resources: tuple


class SaveTransaction(abc.ABC):
    """Saves one or more messages into one mailbox, all or nothing.

    ``add`` starts writing the body at once (many adds may be in flight); ``commit`` waits for
    every body to be durable, then makes them visible in the index in one durable step and
    returns their UIDs.  Nothing is visible before ``commit`` returns.
    """

    @abc.abstractmethod
    async def add(self, data: bytes, flags: Iterable[str] = (), internaldate: int | None = None,
                  analysis=None) -> None:
        """Queue one message.  ``internaldate`` defaults to now.  Raises TOO_BIG, OVER_QUOTA...

        ``analysis``: ``mailserver.storage.mime.analyze(data)`` when the caller already has it (LMTP
        saving one message for many recipients parses it once); it must be of exactly ``data``."""

    @abc.abstractmethod
    async def commit(self) -> SaveResult:
        """Make every added message durable and visible; returns their UIDs."""

    @abc.abstractmethod
    async def rollback(self) -> None:
        """Forget the added messages (their objects are removed, best effort)."""


class Mailbox(abc.ABC):
    """One session's view of one mailbox.

    The view's message list changes only in ``refresh``, so a protocol decides when a client
    learns about expunges (IMAP must not announce them during FETCH, STORE or SEARCH).
    Flags read through the view are always the latest.
    """

    name: str
    guid: str
    readonly: bool

    # --- header -------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def uidvalidity(self) -> int: ...

    @property
    @abc.abstractmethod
    def uidnext(self) -> int: ...

    @property
    @abc.abstractmethod
    def highestmodseq(self) -> int: ...

    @property
    @abc.abstractmethod
    def first_recent_uid(self) -> int:
        """Messages with UID >= this are \\Recent to this session (IMAP4rev1)."""

    # --- the view -----------------------------------------------------------------------------
    @abc.abstractmethod
    def uids(self) -> Sequence[int]:
        """UIDs in the view, ascending; position + 1 is the message sequence number."""

    @abc.abstractmethod
    def info(self, uid: int) -> MessageInfo | None:
        """Latest index state of a message in the view (None if expunged meanwhile)."""

    @abc.abstractmethod
    def all_info(self) -> list:
        """MessageInfo of every message in the view, in view order (None for ones expunged meanwhile)."""

    def flag_summary(self) -> tuple:
        """(keywords of the mailbox, sequence number of the first message of the view without
        \\Seen or 0): what SELECT reports.  Formats may answer without a MessageInfo per message."""
        words: set = set()
        first_unseen = 0
        for msn, info in enumerate(self.all_info(), 1):
            if info is None:
                continue
            words.update(f for f in info.flags if not f.startswith("\\"))
            if not first_unseen and SEEN not in info.flags:
                first_unseen = msn
        return frozenset(words), first_unseen

    @abc.abstractmethod
    def vanished_since(self, modseq: int) -> list | None:
        """UIDs expunged after ``modseq`` (QRESYNC VANISHED (EARLIER)), ascending; None when the
        index no longer remembers that far back (RFC 7162 then allows reporting every UID below
        UIDNEXT that is not in the mailbox)."""

    @abc.abstractmethod
    async def refresh(self, expunges: bool = True) -> Changes:
        """Bring the view up to date with the index (reading other processes' changes).

        With ``expunges=False`` expunged messages stay in the view (and are not reported);
        new messages and flag changes are still applied.
        """

    @abc.abstractmethod
    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` (on the reactor) when the mailbox may have changed, by this
        process or another.  Returns a function that cancels the subscription."""

    # --- reading ------------------------------------------------------------------------------
    @abc.abstractmethod
    def fetch(self, uids: Sequence[int], items: Iterable[FetchItem]) -> AsyncIterator[FetchedMail]:
        """Yield one FetchedMail per UID, in the order given, filling in ``items``.

        Body reads are issued ahead of consumption (a prefetch window), so many are in
        flight at once; cached fields never read a body.  UIDs not in the mailbox are skipped.
        """

    async def columns(self, uids: Sequence[int], names: Iterable[str]) -> dict:
        """Metadata of many messages at once, column by column (FETCH of metadata without an
        object per message).

        ``names``: some of ``COLUMNS``.  Returns ``{name: list}`` for each name asked plus
        ``"uid"``, every list aligned with the ``"uid"`` column: the UIDs of ``uids`` that are in
        the mailbox, in the order given.  Values: ``flags`` frozensets (as ``MessageInfo.flags``;
        formats return one object per distinct set, so callers may memoise on them), ``guid``
        strings, the integer fields of ``MessageInfo``, and the cached fields ``envelope``,
        ``bodystructure``, ``body``, ``preview`` as UTF-8 bytes (None where the message's
        object could not be read to compute them; logged).

        This default builds a MessageInfo per message and uses ``fetch``; formats override it."""
        names = set(names)
        unknown = names - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown columns {sorted(unknown)}")
        infos = [i for i in map(self.info, uids) if i is not None]
        out = {"uid": [i.uid for i in infos]}
        for name in names & _INFO_COLUMNS.keys():
            attr = _INFO_COLUMNS[name]
            out[name] = [getattr(i, attr) for i in infos]
        cached = [n for n in ("envelope", "bodystructure", "body", "preview") if n in names]
        if cached:
            by_uid = {}
            async for mail in self.fetch(out["uid"], {FetchItem(n) for n in cached}):
                by_uid[mail.info.uid] = mail
            for name in cached:
                values = []
                for uid in out["uid"]:
                    mail = by_uid.get(uid)
                    value = getattr(mail, name) if mail is not None else None
                    values.append(None if value is None else value.encode("utf-8"))
                out[name] = values
        return out

    async def search_header_texts(self, uids: Sequence[int], name: str) -> list:
        """For SEARCH keys on a header field (``mailserver.storage.search.evaluate``): per UID of
        ``uids``, in order, the decoded values of field ``name`` (case-insensitive), as
        ``search.header_text`` makes them (casemapped, joined); None where the message has no
        such field or is not in the mailbox.  A message's header never changes, so formats
        memoise these; this default reads the header fields each time."""
        from mailserver.storage import mime, search
        lname = name.lower()
        item = FetchItem.CACHED_HEADERS if lname in mime.CACHED_HEADER_FIELDS else FetchItem.HEADER
        texts = {}
        async for mail in self.fetch(list(uids), {item}):
            header = mail.header
            if item is FetchItem.CACHED_HEADERS:
                header = mail.cached_headers
                if mail.cached_header_names is not None and lname not in mail.cached_header_names:
                    # Too long to be cached for this message: its header has it.
                    header = None
                    async for full in self.fetch([mail.info.uid], {FetchItem.HEADER}):
                        header = full.header
            texts[mail.info.uid] = search.header_text(search.field_values(header or b"", lname))
        return [texts.get(u) for u in uids]

    @abc.abstractmethod
    async def search(self, program, uids: Sequence[int] | None = None) -> list:
        """UIDs (ascending) of messages in the view (or in ``uids``) matching ``program``, a
        ``mailserver.storage.search`` tree.  Metadata keys use the index and cache only."""

    # --- changing -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def store(self, uids: Sequence[int], mode: StoreMode, flags: Iterable[str],
                    unchanged_since: int | None = None) -> StoreResult:
        """Change flags/keywords of messages, durably, with one new modseq."""

    @abc.abstractmethod
    async def expunge(self, uids: Sequence[int] | None = None) -> list:
        """Durably expunge messages flagged \\Deleted (only among ``uids`` when given).
        Returns the expunged UIDs; the view drops them at its next ``refresh``."""

    @abc.abstractmethod
    async def copy(self, uids: Sequence[int], destination: str) -> CopyResult:
        """Copy messages to another mailbox of the same user without copying their bodies."""

    @abc.abstractmethod
    async def move(self, uids: Sequence[int], destination: str) -> CopyResult:
        """Move messages: copy then expunge here, atomically as seen by other sessions."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the view.  Safe to call twice."""


class Lock(abc.ABC):
    """A held named lock of a user (``User.lock``)."""

    @abc.abstractmethod
    async def release(self) -> None:
        """Let the lock go.  Safe to call twice."""


class User(abc.ABC):
    """One user's mailboxes.  Obtained from ``MailStorage.open_user``; shared per process."""

    name: str

    @abc.abstractmethod
    async def list_mailboxes(self) -> list:
        """Every mailbox (``MailboxInfo``), INBOX first, then by name."""

    @abc.abstractmethod
    async def create_mailbox(self, name: str, special_use: Iterable[str] = ()) -> MailboxInfo:
        """Create a mailbox (and missing parents).  EXISTS if it does."""

    @abc.abstractmethod
    async def delete_mailbox(self, name: str) -> None:
        """Delete a mailbox and its messages.  INBOX: CANNOT.  Children stay."""

    @abc.abstractmethod
    async def rename_mailbox(self, old: str, new: str) -> None:
        """Rename a mailbox with its children.  Renaming INBOX moves its messages to ``new``."""

    @abc.abstractmethod
    async def set_subscribed(self, name: str, subscribed: bool) -> None:
        """Subscribe or unsubscribe (the name need not exist, as IMAP allows)."""

    @abc.abstractmethod
    async def subscriptions(self) -> list:
        """Subscribed names, existing or not."""

    @abc.abstractmethod
    async def status(self, name: str) -> MailboxStatus:
        """Counters of a mailbox from its index, without selecting it."""

    @abc.abstractmethod
    async def open_mailbox(self, name: str, readonly: bool = False) -> Mailbox:
        """Open a view of a mailbox.  NOT_FOUND if it does not exist."""

    @abc.abstractmethod
    async def lock(self, name: str) -> Lock:
        """Take the user's exclusive lock ``name`` (``[a-z0-9-]+``, e.g. ``"pop3"``: one POP3
        session per mailbox) without waiting.  It holds across every process and host sharing
        the storage, until released or the process ends.  IN_USE when someone else holds it."""

    # --- quota (formats without quota keep these defaults: no roots, nothing refused) ---------
    async def quota_roots(self, mailbox: str) -> list:
        """The quota roots (``QuotaRoot``) that apply to ``mailbox`` (GETQUOTAROOT), with their
        usage and the limits for that mailbox.  NOT_FOUND when the mailbox does not exist."""
        await self.status(mailbox)
        return []

    async def quota(self, root: str) -> QuotaRoot:
        """One quota root by name (GETQUOTA).  NOT_FOUND when the user has no such root."""
        from mailserver.storage.errors import not_found
        raise not_found(f"quota root {root!r}")

    async def check_quota(self, mailbox: str, size: int, count: int = 1) -> None:
        """Would ``count`` more messages totalling ``size`` bytes fit into ``mailbox``?
        OVER_QUOTA when not (LMTP RCPT with SIZE asks before the data comes)."""

    @abc.abstractmethod
    def begin_save(self, name: str) -> SaveTransaction:
        """Start saving into a mailbox (APPEND, LMTP).  NOT_FOUND surfaces at add/commit."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Drop this reference; the last one flushes and forgets the user's state."""


class MailStorage(abc.ABC):
    """A mailbox format (registered in the ``mailserver.mailbox_formats`` entry-point group).

    Built once per process by ``from_config``; ``start`` connects to its backends.
    """

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config, registry) -> "MailStorage":
        """Build from the validated configuration (``mailserver.config.Config``) and the plugin
        registry (``mailserver.plugins``), which finds the object store and index store."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect to backends.  Raises StorageError(TEMPORARY) with a clear detail if one is down."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Finish in-flight writes, flush, disconnect."""

    @abc.abstractmethod
    async def open_user(self, username: str) -> User:
        """The user's storage (created on first use).  ``username`` is already normalised and
        authenticated: every path and namespace is derived from it, never from client input."""
