"""The selected mailbox of a session and the untagged updates it owes the client.

The storage view changes only in ``Mailbox.refresh``; ``sync`` refreshes it when storage said it
may have changed (or when the command asks for a forced check, as NOOP does) and writes what
changed: EXPUNGE (only when the command allows it: never during FETCH, STORE or SEARCH),
EXISTS, RECENT and FETCH FLAGS; with QRESYNC, VANISHED instead of EXPUNGE; with CONDSTORE,
MODSEQ in the FETCH; with IMAP4rev2, no RECENT and no \\Recent.  Searches kept up to date
(CONTEXT=SEARCH/SORT UPDATE, ``contexts``) hear about each change after it is reported.
"""

from __future__ import annotations

import bisect

from mailserver.storage.api import Changes

from .extensions import CONDSTORE, IMAP4REV2, QRESYNC
from .response import flag_list
from .seqset import format_uids

RECENT = "\\Recent"


class Selected:
    """One session's selected mailbox.

    ``mailbox``: the storage view; ``readonly``: EXAMINE (or a read-only mailbox);
    ``wake``: called (on the reactor) when storage signals a change, so IDLE can report it.
    """

    def __init__(self, mailbox, readonly: bool, wake=None, enabled: set | None = None):
        self.mailbox = mailbox
        self.readonly = readonly
        self._wake = wake
        self.enabled = enabled if enabled is not None else set()   # the session's ENABLEd set
        self.changed = False           # storage signalled a change not yet refreshed
        self.expunges_held = False     # a refresh kept expunged messages in the view
        self.exists = len(mailbox.uids())
        self.recent = self._count_recent()
        self.highestmodseq = mailbox.highestmodseq   # what the client has been told up to
        self.saved: list = []          # SEARCHRES ``$`` (RFC 5182): UIDs, empty until saved
        self.contexts: dict = {}       # tag -> search kept up to date (CONTEXT UPDATE)
        self._cancel = mailbox.on_change(self._on_change)

    def _on_change(self) -> None:
        self.changed = True
        if self._wake is not None:
            self._wake()

    def _count_recent(self) -> int:
        uids = self.mailbox.uids()
        return len(uids) - bisect.bisect_left(uids, self.mailbox.first_recent_uid)

    # --- the view -------------------------------------------------------------------------------
    def uids(self):
        """UIDs in the view, ascending (position + 1 = message sequence number)."""
        return self.mailbox.uids()

    def msn(self, uid: int) -> int:
        """Sequence number of a UID in the view (0 if absent)."""
        uids = self.mailbox.uids()
        i = bisect.bisect_left(uids, uid)
        return i + 1 if i < len(uids) and uids[i] == uid else 0

    @property
    def condstore(self) -> bool:
        return CONDSTORE in self.enabled or QRESYNC in self.enabled

    @property
    def rev2(self) -> bool:
        return IMAP4REV2 in self.enabled

    def flags(self, info) -> bytes:
        """The FLAGS list of a message, with \\Recent when it is recent to this session
        (never in IMAP4rev2, which has no \\Recent)."""
        if info.uid >= self.mailbox.first_recent_uid and not self.rev2:
            return flag_list(set(info.flags) | {RECENT})
        return flag_list(info.flags)

    def scan(self) -> tuple[set, int]:
        """(keywords of the mailbox, sequence number of the first message without \\Seen or 0),
        for SELECT (``Mailbox.flag_summary``)."""
        words, first_unseen = self.mailbox.flag_summary()
        return set(words), first_unseen

    # --- updates ------------------------------------------------------------------------------
    async def sync(self, writer, expunges: bool = True, force: bool = False) -> None:
        """Refresh the view if needed and write the untagged updates.

        ``expunges``: whether EXPUNGE responses may be sent now.  ``force``: refresh even if
        storage did not signal a change (NOOP, CHECK, IDLE start).
        """
        if not (force or self.changed or (expunges and self.expunges_held)):
            return
        was_changed = self.changed
        self.changed = False
        changes = await self.mailbox.refresh(expunges=expunges)
        self.highestmodseq = self.mailbox.highestmodseq
        if expunges:
            self.expunges_held = False
        elif was_changed or force:
            self.expunges_held = True
        self.report(changes, writer)
        if changes and self.contexts:
            await self.update_contexts(changes, writer)

    def report(self, changes: Changes, writer) -> None:
        """Write EXPUNGE (or VANISHED) / EXISTS / RECENT / FETCH FLAGS for ``changes`` (already
        applied to the view)."""
        uids = self.mailbox.uids()
        out = []
        if changes.expunged and QRESYNC in self.enabled:
            out.append(b"* VANISHED %s\r\n" % format_uids(changes.expunged).encode())
        else:
            for uid in changes.expunged:
                # Each EXPUNGE renumbers the messages after it; sent in ascending UID order, the
                # number to send is the position among the messages that remain.
                out.append(b"* %d EXPUNGE\r\n" % (bisect.bisect_left(uids, uid) + 1))
        if len(uids) != self.exists - len(changes.expunged) or changes.appended:
            out.append(b"* %d EXISTS\r\n" % len(uids))
            recent = self._count_recent()
            if (recent != self.recent or changes.appended) and not self.rev2:
                out.append(b"* %d RECENT\r\n" % recent)
            self.recent = recent
        elif changes.expunged:
            self.recent = self._count_recent()
        self.exists = len(uids)
        condstore = self.condstore
        for info in changes.flags:
            msn = self.msn(info.uid)
            if msn:
                if condstore:
                    out.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
                               % (msn, info.uid, self.flags(info), info.modseq))
                else:
                    out.append(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (msn, info.uid, self.flags(info)))
        if out:
            writer.write(b"".join(out))

    async def update_contexts(self, changes: Changes, writer, own_flags=()) -> None:
        """Tell searches kept up to date (CONTEXT=SEARCH/SORT UPDATE) what ``changes`` did to
        their results; ``own_flags`` are messages this session's STORE changed."""
        for context in list(self.contexts.values()):
            await context.update(self, changes, own_flags, writer)

    async def close(self) -> None:
        """Stop listening for changes and release the view."""
        self._cancel()
        self._wake = None
        await self.mailbox.close()
