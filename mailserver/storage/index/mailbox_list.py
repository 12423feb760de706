"""The per-user mailbox list index: names, mailbox GUIDs, special-use and subscriptions.

One small file, ``users/<user>/mailboxes``, replaced atomically under the user's lock:
``b"RBXLIST1" crc32:u32le length:u32le`` then UTF-8 JSON::

    {"mailboxes": {"INBOX": {"guid": "<32 hex>", "special_use": [], "created": 1700000000}, ...},
     "subscriptions": ["INBOX", ...],
     "last_uidvalidity": 1700000000}

Changes are rare (CREATE, DELETE, RENAME, SUBSCRIBE); reads happen at LIST, SELECT and STATUS.
"""

from __future__ import annotations

import json
import struct
import zlib

from mailserver.storage.errors import ErrorKind, StorageError

MAGIC = b"RBXLIST1"
_HEAD = struct.Struct("<II")


def encode(data: dict) -> bytes:
    body = json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return MAGIC + _HEAD.pack(zlib.crc32(body), len(body)) + body


def decode(raw: bytes, where: str) -> dict:
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + _HEAD.size:
        raise StorageError(ErrorKind.CORRUPTED, f"{where}: not a mailbox list file")
    crc, length = _HEAD.unpack_from(raw, len(MAGIC))
    body = raw[len(MAGIC) + _HEAD.size:]
    if len(body) != length or zlib.crc32(body) != crc:
        raise StorageError(ErrorKind.CORRUPTED, f"{where}: mailbox list checksum mismatch")
    return json.loads(body.decode("utf-8"))


def empty() -> dict:
    return {"mailboxes": {}, "subscriptions": [], "last_uidvalidity": 0}


class MailboxList:
    def __init__(self, store, user_dir: str):
        self.store = store
        self.path = f"{user_dir}/mailboxes"
        self.lock_path = f"{user_dir}/mailboxes.lock"

    async def read(self) -> dict:
        raw = await self.store.read(self.path)
        return decode(raw, self.path) if raw else empty()

    async def modify(self, change):
        """Under the user's lock: read, ``result = change(data)`` (mutates data, may raise),
        write back durably.  Returns ``result``."""
        lock = await self.store.lock(self.lock_path)
        try:
            data = await self.read()
            result = change(data)
            await self.store.write_atomic(self.path, encode(data))
            return result
        finally:
            await lock.release()
