"""Saving one received message for every recipient of an LMTP transaction.

Recipients are grouped by (user, detail mailbox): the same address given twice is saved once, as
Dovecot does, and every address gets the reply of its group's save.  The message is parsed for the
index cache once for all groups (the copies are the same bytes), saves run in parallel, and a
recipient's reply is ready only once its save committed (object and index record durable).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailserver.storage import mime
from mailserver.storage.errors import ErrorKind, StorageError

log = Logger(namespace="mailserver.lmtp")


class Recipient:
    __slots__ = ("address", "username", "detail")

    def __init__(self, address: str, username: str, detail: str):
        self.address = address
        self.username = username        # normalised, known to the passdb
        self.detail = detail            # the part after the recipient delimiter ("" if none)


def deliver(storage, recipients: list[Recipient], data: bytes, internaldate: int, *, session: str,
            event: dict, to_detail_mailbox: bool, quota_tempfail: bool = False) -> list[defer.Deferred]:
    """Start saving ``data``; one Deferred per recipient (in order) firing with its reply line.
    ``quota_tempfail``: an over-quota recipient gets 452 4.2.2 rather than 552 5.2.2."""
    groups: dict[tuple[str, str], list[Recipient]] = {}
    for rcpt in recipients:
        groups.setdefault((rcpt.username, rcpt.detail if to_detail_mailbox else ""), []).append(rcpt)
    # Every copy is the same bytes when there are several: parse once, not once per user.
    analysis = mime.analyze(data) if len(groups) > 1 else None
    saves = {key: defer.Deferred.fromCoroutine(
                 _save(storage, key[0], key[1], rcpts, data, internaldate, analysis, session, event,
                       quota_tempfail))
             for key, rcpts in groups.items()}
    out = []
    for rcpt in recipients:
        key = (rcpt.username, rcpt.detail if to_detail_mailbox else "")
        out.append(_reply_for(saves[key], rcpt))
    for save in saves.values():
        save.addErrback(lambda f: None)     # handed to every recipient's Deferred above
    return out


def _reply_for(save: defer.Deferred, rcpt: Recipient) -> defer.Deferred:
    """A Deferred with the reply line of one recipient of a (shared) save."""
    d = defer.Deferred()

    def done(result):
        if isinstance(result, Failure):
            d.errback(result)
        else:
            code, text = result
            d.callback(f"{code} <{rcpt.address}> {text}")
        return result
    save.addBoth(done)
    return d


async def _save(storage, username: str, detail: str, rcpts: list[Recipient], data: bytes,
                internaldate: int, analysis, session: str, event: dict,
                quota_tempfail: bool = False) -> tuple[str, str]:
    """Save into the user's detail mailbox (when it exists) or INBOX; (code, text) of the reply."""
    addresses = ", ".join(r.address for r in rcpts)
    event = dict(event, recipient=addresses, rcpt_user=username, size=len(data))
    try:
        user = await storage.open_user(username)
        try:
            mailbox, uid = None, None
            if detail:
                try:
                    mailbox, uid = detail, await _save_into(user, detail, data, internaldate, analysis, event)
                except StorageError as e:
                    if e.kind not in (ErrorKind.NOT_FOUND, ErrorKind.INVALID):
                        raise
                    mailbox = None          # no such mailbox: INBOX, as Dovecot
            if mailbox is None:
                mailbox, uid = "INBOX", await _save_into(user, "INBOX", data, internaldate, analysis, event)
        finally:
            await user.close()
    except StorageError as e:
        return _storage_failure(e, event, quota_tempfail)
    except Exception:
        log.failure("delivery to {recipient} failed", **event)
        return "451 4.3.0", "Temporary internal error"
    log.info("saved mail to {rcpt_user} {mailbox} uid {uid} ({size} bytes) for {recipient}",
             mailbox=mailbox, uid=uid, **event)
    return "250 2.0.0", f"{session} Saved"


async def _save_into(user, mailbox: str, data: bytes, internaldate: int, analysis, event: dict) -> int | str:
    tx = user.begin_save(mailbox)
    try:
        await tx.add(data, flags=(), internaldate=internaldate, analysis=analysis)
        result = await tx.commit()
    except BaseException:
        try:
            await tx.rollback()
        except Exception:
            log.failure("rollback after a failed delivery failed", **event)
        raise
    return result.uids[0] if result.uids else "?"


def quota_reply(tempfail: bool) -> tuple[str, str]:
    """The reply to a recipient over quota: permanent (552 5.2.2, RFC 3463 mailbox full), or
    temporary with ``[quota] full_tempfail`` (as Dovecot's quota_full_tempfail)."""
    return ("452 4.2.2" if tempfail else "552 5.2.2"), "Quota exceeded (mailbox for user is full)"


def _storage_failure(e: StorageError, event: dict, quota_tempfail: bool = False) -> tuple[str, str]:
    if e.kind is ErrorKind.OVER_QUOTA:
        log.info("delivery to {recipient}: over quota: {detail}", detail=e.detail, **event)
        return quota_reply(quota_tempfail)
    if e.kind is ErrorKind.TOO_BIG:
        log.info("delivery to {recipient}: too big: {detail}", detail=e.detail, **event)
        return "552 5.3.4", "Message too big for system"
    if e.kind is ErrorKind.TEMPORARY:
        log.warn("delivery to {recipient}: temporary failure: {detail}", detail=e.detail, **event)
    else:
        log.error("delivery to {recipient} failed ({kind}): {detail}", kind=e.kind.value,
                  detail=e.detail, **event)
    return "451 4.3.0", "Temporary internal error"
