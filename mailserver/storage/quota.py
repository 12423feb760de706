"""Quota: a wrapper around any ``MailStorage`` that counts usage in the dictionary and refuses
what would not fit.

Usage lives under Dovecot's dict-quota keys ``priv/quota/storage`` (bytes: the sum of the
messages' vsizes, what RFC822.SIZE and STATUS SIZE report, so a recount can use STATUS) and
``priv/quota/messages``.  Each change is one dictionary transaction of increments, made right
after the storage change it follows has committed (save, copy, move across an ignored mailbox,
expunge, mailbox delete): increments from several processes and hosts never lose each other.
When the counters are missing (new user, or removed by an admin) they are recounted from every
mailbox's STATUS, as Dovecot's dict quota does.

Checks happen before the change, against the limits of the destination mailbox
(``quota_rules``); a refused change raises ``StorageError(OVER_QUOTA)``.  Two sessions saving
at once may both pass the check and end a little over the limit together, as in Dovecot.

The user's rules come from ``rules_for(username)`` (the server looks the user up in the
userdb), reused for ``cache_seconds``.  A rule that cannot be parsed makes every check and
report of that user fail with TEMPORARY (logged), as a bad quota_rule from Dovecot's userdb
fails the user's session; counting still goes on, so usage stays right once it is fixed.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

from twisted.logger import Logger

from mailserver.storage import mime
from mailserver.storage.api import MailStorage, QuotaResource, QuotaRoot
from mailserver.storage.errors import ErrorKind, StorageError, not_found
from mailserver.storage.quota_rules import Limits, QuotaRules, RuleError

log = Logger(namespace="mailserver.quota")

STORAGE_KEY = "priv/quota/storage"
MESSAGES_KEY = "priv/quota/messages"
PREFIX = "priv/quota/"


def over_quota(detail: str) -> StorageError:
    """The error a refused change raises (``detail`` is for the log)."""
    return StorageError(ErrorKind.OVER_QUOTA, detail)


def check_limits(limits: Limits, usage: tuple[int, int], size: int, count: int, what: str) -> None:
    """Raise OVER_QUOTA when ``count`` messages of ``size`` bytes added to ``usage``
    ((bytes, messages)) would pass ``limits`` (storage: unless within its grace while under it)."""
    if limits.ignored:
        return
    if limits.storage is not None and size > 0 and usage[0] + size > limits.storage:
        # quota_grace: one change may take a user who is still under the limit a little past it.
        if not (usage[0] < limits.storage and usage[0] + size <= limits.storage + limits.grace):
            raise over_quota(f"{what}: {usage[0]} + {size} bytes > storage limit {limits.storage}"
                             + (f" + grace {limits.grace}" if limits.grace else ""))
    if limits.messages is not None and count > 0 and usage[1] + count > limits.messages:
        raise over_quota(f"{what}: {usage[1]} + {count} messages > message limit {limits.messages}")


async def drop_counters(dictionary, username: str) -> None:
    """Remove a user's usage counters; they are recounted at their next use."""
    await dictionary.transaction(username, sets={STORAGE_KEY: None, MESSAGES_KEY: None})


class QuotaStorage:
    """Wraps a ``MailStorage``: users it opens are ``QuotaUser``; everything else (start, stop,
    a format's admin module...) is the inner storage's.

    Not a ``MailStorage`` subclass on purpose: the abstract methods would shadow delegation.
    """

    def __init__(self, inner: MailStorage, dictionary, rules_for: Callable[[str], Awaitable[QuotaRules]],
                 *, root_name: str = "User quota", cache_seconds: float = 60.0, warnings=None):
        self.inner = inner
        self.dict = dictionary
        self.rules_for = rules_for
        self.root_name = root_name
        self.cache_seconds = cache_seconds
        self.warnings = warnings            # mailserver.storage.quota_warnings.Warnings or None
        self._rules: dict[str, tuple[float, QuotaRules | RuleError]] = {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def start(self) -> None:
        """Start the inner storage (the dictionary is the server's to start)."""
        await self.inner.start()

    async def stop(self) -> None:
        """Stop the inner storage."""
        await self.inner.stop()

    async def open_user(self, username: str) -> "QuotaUser":
        """The inner storage's user, wrapped."""
        user = await self.inner.open_user(username)
        return QuotaUser(self, user)

    async def rules(self, username: str) -> QuotaRules:
        """The user's rules (cached briefly).  TEMPORARY when the userdb cannot answer or a
        rule is invalid (logged once per cache period)."""
        now = time.monotonic()
        cached = self._rules.get(username)
        if cached is None or cached[0] <= now:
            try:
                value = await self.rules_for(username)
            except RuleError as e:
                log.error("quota: invalid quota rule for {user}: {error}", user=username, error=str(e))
                value = e
            except StorageError:
                raise
            except Exception as e:
                # The userdb is down: retry at the next operation, do not cache.
                raise StorageError(ErrorKind.TEMPORARY, f"quota rules of {username}: {e}") from e
            if len(self._rules) > 10000:
                self._rules.clear()     # bounded: a burst of distinct users must not grow it forever
            self._rules[username] = cached = (now + self.cache_seconds, value)
        value = cached[1]
        if isinstance(value, RuleError):
            raise StorageError(ErrorKind.TEMPORARY, f"invalid quota rule for {username}: {value}")
        return value

    # --- usage --------------------------------------------------------------------------------
    async def usage(self, user, rules: QuotaRules | None = None) -> tuple[int, int]:
        """(bytes, messages) of a user, recounted first when the counters are missing."""
        values = await self.dict.iterate(user.name, PREFIX, recursive=False)
        if STORAGE_KEY in values and MESSAGES_KEY in values:
            try:
                return int(values[STORAGE_KEY]), int(values[MESSAGES_KEY])
            except ValueError:
                log.warn("quota: counters of {user} are not numbers; recounting", user=user.name)
        return await self.recalc(user, rules)

    async def recalc(self, user, rules: QuotaRules | None = None) -> tuple[int, int]:
        """Sum every counted mailbox's STATUS and rewrite the counters; (bytes, messages)."""
        if rules is None:
            rules = await self.rules(user.name)
        size = messages = 0
        for info in await user.list_mailboxes():
            if not rules.counted(info.name):
                continue
            try:
                st = await user.status(info.name)
            except StorageError as e:
                if e.kind is ErrorKind.NOT_FOUND:
                    continue        # deleted meanwhile
                raise
            size += st.size
            messages += st.messages
        await self.dict.transaction(user.name, sets={STORAGE_KEY: str(size), MESSAGES_KEY: str(messages)})
        log.info("quota: recounted {user}: {size} bytes, {messages} messages", user=user.name, size=size,
                 messages=messages)
        return size, messages

    async def invalidate(self, user) -> None:
        """Drop the counters so the next use recounts them (when a change could not be
        counted).  Best effort: a dictionary that cannot answer is logged."""
        try:
            await drop_counters(self.dict, user.name)
        except StorageError as e:
            log.error("quota: counters of {user} may be wrong and could not be dropped: {error}",
                      user=user.name, error=str(e))

    async def update(self, user, size: int, count: int) -> None:
        """Add to the counters (negative: give room back), after a committed change.  A failure
        is logged, not raised: the mail change stands, and ``quota recalc`` repairs the counts."""
        if not size and not count:
            return
        try:
            await self.dict.transaction(user.name, increments={STORAGE_KEY: size, MESSAGES_KEY: count})
        except StorageError as e:
            log.error("quota: usage of {user} not updated by {size} bytes, {count} messages: {error}",
                      user=user.name, size=size, count=count, error=str(e))
            return
        if self.warnings is not None and (size > 0 or count > 0):
            await self.warnings.after_growth(self, user, size, count)


class QuotaUser:
    """A user whose saves, copies, moves, expunges and mailbox deletes keep the quota."""

    def __init__(self, quota: QuotaStorage, inner):
        self._quota = quota
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def _context(self, mailbox: str) -> tuple[QuotaRules, Limits, tuple[int, int]]:
        rules = await self._quota.rules(self.name)
        limits = rules.limits(mailbox)
        usage = (0, 0) if limits.ignored else await self._quota.usage(self.inner, rules)
        return rules, limits, usage

    # --- reports ------------------------------------------------------------------------------
    def _root(self, limits: Limits, usage: tuple[int, int]) -> QuotaRoot:
        return QuotaRoot(self._quota.root_name, (QuotaResource("STORAGE", usage[0], limits.storage),
                                                 QuotaResource("MESSAGE", usage[1], limits.messages)))

    async def quota_roots(self, mailbox: str) -> list:
        """One root for every mailbox, with the limits for saving into ``mailbox``."""
        await self.inner.status(mailbox)        # NOT_FOUND for a mailbox that does not exist
        rules = await self._quota.rules(self.name)
        limits = rules.limits(mailbox)
        if limits.ignored:
            limits = rules.limits()      # the root is still the user's; nothing counts here
        return [self._root(limits, await self._quota.usage(self.inner, rules))]

    async def quota(self, root: str) -> QuotaRoot:
        """The user's root with the default rule's limits."""
        if root != self._quota.root_name:
            raise not_found(f"quota root {root!r} of {self.name}")
        rules = await self._quota.rules(self.name)
        return self._root(rules.limits(), await self._quota.usage(self.inner, rules))

    async def check_quota(self, mailbox: str, size: int, count: int = 1) -> None:
        _, limits, usage = await self._context(mailbox)
        check_limits(limits, usage, size, count, f"{self.name} {mailbox}")

    async def recalc(self) -> tuple[int, int]:
        """Recount the counters from every mailbox (``mailserver quota recalc``)."""
        return await self._quota.recalc(self.inner)

    # --- changes ------------------------------------------------------------------------------
    def begin_save(self, name: str):
        """A save checked against ``name``'s limits and counted at commit."""
        return QuotaSave(self, self.inner.begin_save(name), name)

    async def open_mailbox(self, name: str, readonly: bool = False):
        """A view whose expunge, copy and move keep the quota."""
        return QuotaMailbox(self, await self.inner.open_mailbox(name, readonly))

    async def delete_mailbox(self, name: str) -> None:
        """Delete, then give the mailbox's messages back (its STATUS just before)."""
        rules = await self._quota.rules(self.name)
        status = await self.inner.status(name)
        await self.inner.delete_mailbox(name)
        if rules.counted(name):
            await self._quota.update(self.inner, -status.size, -status.messages)

    async def rename_mailbox(self, old: str, new: str) -> None:
        """Rename; usage changes only when mail crosses into or out of an ignored name."""
        await self.inner.rename_mailbox(old, new)
        rules = await self._quota.rules(self.name)
        if rules.mailbox_rules and any(r.ignore for r in rules.mailbox_rules):
            # Mail may have moved between a counted and an ignored name: recount, simplest right answer.
            await self._quota.recalc(self.inner, rules)

    async def close(self) -> None:
        """Drop the inner user's reference."""
        await self.inner.close()


class QuotaSave:
    """A save transaction checked message by message against the destination's limits; the
    counters grow once, after the commit."""

    def __init__(self, user: QuotaUser, inner, mailbox: str):
        self._user = user
        self.inner = inner
        self._mailbox = mailbox
        self._context = None
        self._size = 0
        self._count = 0

    async def add(self, data: bytes, flags=(), internaldate: int | None = None, analysis=None) -> None:
        """Queue one message if it fits (with the ones queued before); OVER_QUOTA if not."""
        if self._context is None:
            self._context = await self._user._context(self._mailbox)
        _, limits, usage = self._context
        size = analysis.vsize if analysis is not None else mime.vsize(data)
        # MULTIAPPEND is all or nothing: every message added so far counts against the limit.
        check_limits(limits, (usage[0] + self._size, usage[1] + self._count), size, 1,
                     f"{self._user.name} {self._mailbox}")
        await self.inner.add(data, flags, internaldate, analysis)
        self._size += size
        self._count += 1

    async def commit(self):
        """Commit, then count what was saved (one dictionary transaction)."""
        result = await self.inner.commit()
        if self._context is not None and not self._context[1].ignored:
            await self._user._quota.update(self._user.inner, self._size, self._count)
        return result

    async def rollback(self) -> None:
        """Forget the queued messages; nothing was counted."""
        await self.inner.rollback()


class QuotaMailbox:
    """A mailbox view whose expunge, copy and move keep the quota; the rest is the inner view's."""

    def __init__(self, user: QuotaUser, inner):
        self._user = user
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def expunge(self, uids=None) -> list:
        """Expunge, then give the expunged messages' room back."""
        # Sizes are read before: after the expunge the index no longer knows them.
        sizes = await self._sizes(self.inner.uids() if uids is None else uids)
        gone = await self.inner.expunge(uids)
        if not gone:
            return gone
        quota = self._user._quota
        try:
            rules = await quota.rules(self._user.name)
        except StorageError as e:
            log.warn("quota: expunge in {mailbox} of {user} not counted ({error}); counters dropped "
                     "for a recount", mailbox=self.inner.name, user=self._user.name, error=str(e))
            await quota.invalidate(self._user.inner)
            return gone
        if not rules.counted(self.inner.name):
            return gone
        if any(uid not in sizes for uid in gone):
            # Messages another process added since this view refreshed: their sizes are unknown
            # here, so recount rather than guess.
            await quota.recalc(self._user.inner, rules)
        else:
            await quota.update(self._user.inner, -sum(sizes[u] for u in gone), -len(gone))
        return gone

    async def _sizes(self, uids) -> dict:
        """{uid: vsize} of ``uids`` still in the index, column-wise (no object per message:
        EXPUNGE or COPY of a large mailbox stays cheap)."""
        cols = await self.inner.columns(sorted(set(uids)), {"vsize"})
        return dict(zip(cols["uid"], cols["vsize"]))

    async def copy(self, uids, destination: str):
        """Copy if the copies fit into ``destination``; count them."""
        quota = self._user._quota
        rules, limits, usage = await self._user._context(destination)
        sizes = await self._sizes(uids)
        check_limits(limits, usage, sum(sizes.values()), len(sizes), f"{self._user.name} COPY to {destination}")
        result = await self.inner.copy(uids, destination)
        if not limits.ignored:
            await quota.update(self._user.inner, sum(sizes.get(s, 0) for s, _ in result.pairs), len(result.pairs))
        return result

    async def move(self, uids, destination: str):
        """Within the one quota root a move changes usage only across an ignored mailbox; only
        a move that adds usage is checked (as Dovecot checks a move only when it may grow)."""
        quota = self._user._quota
        rules = await quota.rules(self._user.name)
        sign = int(rules.counted(destination)) - int(rules.counted(self.inner.name))
        if not sign:        # the common case (Archive, Trash): no sizes, no usage read
            return await self.inner.move(uids, destination)
        sizes = await self._sizes(uids)
        if sign > 0:
            _, limits, usage = await self._user._context(destination)
            check_limits(limits, usage, sum(sizes.values()), len(sizes), f"{self._user.name} MOVE to {destination}")
        result = await self.inner.move(uids, destination)
        await quota.update(self._user.inner, sign * sum(sizes.get(s, 0) for s, _ in result.pairs),
                           sign * len(result.pairs))
        return result

    async def close(self) -> None:
        """Release the inner view."""
        await self.inner.close()
