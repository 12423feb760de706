"""HMAC-MD5 from a precomputed context: Dovecot's ``{CRAM-MD5}`` password scheme.

Dovecot stores, for CRAM-MD5, the MD5 states after the first block of HMAC's inner and outer
hashes (``password XOR ipad`` and ``password XOR opad``): four 32-bit little-endian words each,
outer first (as ``doveadm pw -s CRAM-MD5`` prints), 64 hex digits in all.  The password itself is not recoverable, but HMAC-MD5 of any
challenge can be finished from those states.  hashlib cannot start MD5 from a given state, so the
compression function is here (a few microseconds per CRAM-MD5 login).
"""

from __future__ import annotations

import hashlib
import math
import struct

_MASK = 0xFFFFFFFF
_SHIFTS = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_K = [int(abs(math.sin(i + 1)) * 2 ** 32) & _MASK for i in range(64)]
_INIT = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)


def _compress(state: tuple, block: bytes) -> tuple:
    a, b, c, d = state
    words = struct.unpack("<16I", block)
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | ~d), (7 * i) % 16
        f = (f + a + _K[i] + words[g]) & _MASK
        a, d, c = d, c, b
        b = (b + ((f << _SHIFTS[i]) | (f >> (32 - _SHIFTS[i])))) & _MASK
    return tuple((x + y) & _MASK for x, y in zip(state, (a, b, c, d)))


def md5_continue(state: tuple, data: bytes, done: int) -> bytes:
    """MD5 digest of ``done`` bytes already folded into ``state`` (a multiple of 64) followed
    by ``data``."""
    total = done + len(data)
    data = data + b"\x80" + b"\0" * ((55 - total) % 64) + struct.pack("<Q", (total * 8) & (2 ** 64 - 1))
    for i in range(0, len(data), 64):
        state = _compress(state, data[i:i + 64])
    return struct.pack("<4I", *state)


def _key_blocks(password: bytes) -> tuple[bytes, bytes]:
    if len(password) > 64:
        password = hashlib.md5(password).digest()
    key = password.ljust(64, b"\0")
    return bytes(k ^ 0x36 for k in key), bytes(k ^ 0x5C for k in key)


def cram_context(password: bytes) -> bytes:
    """The 32 bytes Dovecot stores (hex-encoded) as ``{CRAM-MD5}``."""
    inner, outer = _key_blocks(password)
    return struct.pack("<8I", *_compress(_INIT, outer), *_compress(_INIT, inner))


def hmac_from_context(context: bytes, message: bytes) -> bytes:
    """HMAC-MD5(password, message) from ``cram_context(password)``."""
    if len(context) != 32:
        raise ValueError("a CRAM-MD5 context is 32 bytes")
    words = struct.unpack("<8I", context)
    inner = md5_continue(words[4:], message, 64)
    return md5_continue(words[:4], inner, 64)
