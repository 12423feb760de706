"""QUOTA (RFC 9208): GETQUOTAROOT, GETQUOTA and SETQUOTA.

Storage answers with ``QuotaRoot``s whose STORAGE usage and limit are in bytes; IMAP reports
KiB, rounded up as Dovecot does (a 1-byte message uses 1 KiB, and a limit is never shown below
what it allows).  A resource without a limit is left out of the ``* QUOTA`` list, and a root
with no limited resource at all is not shown, as Dovecot leaves it out (RFC 9208's quota-list
holds at least one resource): a user without limits gets ``* QUOTAROOT INBOX`` naming no root
and ``OK No quota``, and GETQUOTA of that root only its tagged OK.  Limits come from the
administrator: SETQUOTA is not advertised (no QUOTASET) and is refused ``NO [NOPERM]`` (Dovecot
answers a plain NO; the RFC 5530 code says why).
"""

from __future__ import annotations

from mailserver.storage.errors import ErrorKind, StorageError

from .. import names
from ..errors import no, storage_answer
from ..parser import Args
from ..response import CRLF, astring
from . import AUTH, Sync, command

# RFC 9208 resource names for what storage reports.
_RESOURCES = ("STORAGE", "MESSAGE")


def capabilities(enabled: bool) -> list[str]:
    """What QUOTA adds to CAPABILITY when quota is enabled."""
    return ["QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE"] if enabled else []


def kib(value: int) -> int:
    """Bytes as KiB, rounded up."""
    return (value + 1023) // 1024


def quota_line(root) -> bytes:
    """``* QUOTA root (NAME usage limit ...)`` of one ``QuotaRoot``; empty when none of its
    resources has a limit."""
    items = []
    for res in root.resources:
        if res.limit is None or res.name not in _RESOURCES:
            continue
        usage, limit = (kib(res.usage), kib(res.limit)) if res.name == "STORAGE" else (res.usage, res.limit)
        items.append(f"{res.name} {usage} {limit}")
    if not items:
        return b""
    return b"* QUOTA " + astring(root.name) + b" (" + " ".join(items).encode("ascii") + b")" + CRLF


@command("GETQUOTAROOT", AUTH, sync=Sync.CHANGES)
async def getquotaroot(session, tag: str, args: Args):
    """``GETQUOTAROOT mailbox``: the roots of the mailbox and their usage and limits."""
    raw = args.astring("mailbox name")
    args.end()
    name = names.mailbox(raw, session.utf8)
    try:
        roots = await session.user.quota_roots(name)
    except StorageError as e:
        raise storage_answer(e) from e
    lines = [(root, quota_line(root)) for root in roots]
    lines = [(root, line) for root, line in lines if line]
    w = session.writer
    w.write(b"* QUOTAROOT " + names.encode(name, session.utf8)
            + b"".join(b" " + astring(root.name) for root, _ in lines) + CRLF)
    for _, line in lines:
        w.write(line)
    return "Getquotaroot completed" if lines else "No quota"


@command("GETQUOTA", AUTH, sync=Sync.CHANGES)
async def getquota(session, tag: str, args: Args):
    """``GETQUOTA root``: one root's usage and limits (the default rule's)."""
    root_name = args.astring("quota root").decode("utf-8", "replace")
    args.end()
    try:
        root = await session.user.quota(root_name)
    except StorageError as e:
        raise storage_answer(e, texts={ErrorKind.NOT_FOUND: "Quota root does not exist"}) from e
    session.writer.write(quota_line(root))
    return "Getquota completed"


@command("SETQUOTA", AUTH, sync=Sync.NONE)
async def setquota(session, tag: str, args: Args):
    """Limits are the administrator's (userdb and configuration): refused, as Dovecot refuses
    a user who is not an admin."""
    args.astring("quota root")
    args.list("resource limits")
    args.end()
    raise no("Quota can be changed only by the administrator", "NOPERM")
