"""Index checkpoints: each mailbox's mutable state (UIDs, flags, keywords, modseqs) copied into
the object store, so losing the whole index loses no flags (``force-resync`` reads them back).

A checkpoint is a state object named ``checkpoint.<mailbox guid>``::

    "RBXCKPT1"  json_length:u32  JSON {"guid", "name", "uidvalidity", "highestmodseq", "written"}
    snapshot bytes (the index snapshot format, docs/storage-format.md)

Written on a schedule (``[rbox] checkpoint_interval``) for mailboxes that changed, and when the
last session of a changed mailbox closes.  An older state never overwrites a newer one.
"""

from __future__ import annotations

import json
import struct
import time

from mailserver.storage.index.state import MailboxState, SnapshotError

MAGIC = b"RBXCKPT1"
PREFIX = "checkpoint."
_U32 = struct.Struct("<I")


def name_for(guid: str) -> str:
    return PREFIX + guid


def encode(state: MailboxState, guid: str, name: str) -> bytes:
    head = json.dumps({"guid": guid, "name": name, "uidvalidity": state.uidvalidity,
                       "highestmodseq": state.highestmodseq, "written": int(time.time())}).encode()
    return MAGIC + _U32.pack(len(head)) + head + state.encode_snapshot()


def decode_head(raw: bytes) -> dict:
    if not raw.startswith(MAGIC):
        raise SnapshotError("not a checkpoint")
    (n,) = _U32.unpack_from(raw, len(MAGIC))
    return json.loads(raw[len(MAGIC) + 4:len(MAGIC) + 4 + n])


def decode(raw: bytes) -> tuple[dict, MailboxState]:
    head = decode_head(raw)
    (n,) = _U32.unpack_from(raw, len(MAGIC))
    return head, MailboxState.decode_snapshot(raw[len(MAGIC) + 4 + n:])


async def write(objects, ns: str, guid: str, name: str, state: MailboxState) -> bool:
    """Write a checkpoint unless a newer one is there.  True if written."""
    existing = await objects.get_state(ns, name_for(guid))
    if existing:
        try:
            if decode_head(existing).get("highestmodseq", 0) > state.highestmodseq:
                return False
        except (SnapshotError, ValueError, struct.error):
            pass  # damaged: replace it
    await objects.put_state(ns, name_for(guid), encode(state, guid, name))
    return True
