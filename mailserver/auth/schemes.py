"""Dovecot password schemes: hash and verify ``{SCHEME}encoded`` strings as Dovecot 2.3 does.

A stored password is ``{SCHEME}data`` or, without a prefix, ``data`` in the default scheme (CRYPT,
as Dovecot's passwd-file assumes; a bare ``$1$...`` is MD5-CRYPT).  Scheme names are
case-insensitive and may carry an encoding suffix, ``.HEX`` or ``.B64``/``.BASE64``, that overrides
the scheme's default encoding of its raw bytes.  ``hash_password`` prints what ``doveadm pw -s``
prints; ``verify`` accepts what doveadm makes.  Hashing and verifying may cost milliseconds
(bcrypt, argon2, sha-crypt): callers on the reactor run them in a thread pool.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import secrets
import warnings
from typing import Callable

from passlib import hash as _ph

# crypt(3) from the C library (stdlib until Python 3.13), imported once here: checks run in
# pool threads, and warnings.catch_warnings() is not safe to enter from several at once.
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt as _crypt
except ImportError:
    _crypt = None


class SchemeError(ValueError):
    """Base class of the errors below."""


class UnknownScheme(SchemeError):
    """The scheme (or its encoding suffix) is not one we know."""


class InvalidHash(SchemeError):
    """The stored value is not valid data for its scheme (bad base64, wrong length...)."""


DEFAULT_SCHEME = "CRYPT"

# Dovecot's salt alphabet (the crypt(3) one).
_SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _salt(length: int) -> str:
    return "".join(secrets.choice(_SALT_CHARS) for _ in range(length))


@dataclasses.dataclass(frozen=True)
class _Scheme:
    """One scheme.  ``generate(password, rounds) -> raw bytes``; ``check(password, raw) -> bool``
    (None: generate again and compare, for unsalted digests).  ``raw_len``: fixed length of the
    raw bytes (0: variable), which lets verify tell hex from base64 as Dovecot does."""

    name: str
    encoding: str                       # "none", "base64" or "hex"
    generate: Callable[[bytes, int | None], bytes]
    check: Callable[[bytes, bytes], bool] | None = None
    raw_len: int = 0


# --- unsalted and salted digests -----------------------------------------------------------------

def _digest(algorithm: str):
    def generate(password: bytes, rounds=None) -> bytes:
        return hashlib.new(algorithm, password).digest()
    return generate


def _salted(algorithm: str, salt_len: int = 4):
    """SSHA-style: raw = digest(password + salt) + salt."""
    size = hashlib.new(algorithm).digest_size

    def generate(password: bytes, rounds=None) -> bytes:
        salt = secrets.token_bytes(salt_len)
        return hashlib.new(algorithm, password + salt).digest() + salt

    def check(password: bytes, raw: bytes) -> bool:
        if len(raw) <= size:
            raise InvalidHash(f"salted {algorithm} value is too short")
        expected = hashlib.new(algorithm, password + raw[size:]).digest()
        return hmac.compare_digest(expected, raw[:size])

    return generate, check


def _plain_generate(password: bytes, rounds=None) -> bytes:
    return password


# --- crypt(3) family ------------------------------------------------------------------------------

# bcrypt (Dovecot uses crypt_blowfish) only reads the first 72 bytes of a password.
_BCRYPT_MAX = 72


def _ascii(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidHash("crypt value is not ASCII") from None


def _crypt_check(password: bytes, raw: bytes) -> bool:
    """Verify any crypt(3) string, as Dovecot's crypt_verify does through the C library:
    DES, MD5-crypt, SHA-crypt, bcrypt; other formats (yescrypt...) through the system crypt."""
    stored = _ascii(raw)
    if not stored:
        return False            # an empty crypt string would "match" anything in crypt(3)
    try:
        if stored.startswith("$1$"):
            return _ph.md5_crypt.verify(password, stored)
        if stored.startswith(("$5$", "$6$")):
            # The C library's SHA-crypt costs about half of passlib's, which is pure Python
            # here and holds the GIL all along (measured, SHA512-CRYPT: 1.6 ms against 3.4 ms).
            handler = _ph.sha256_crypt if stored.startswith("$5$") else _ph.sha512_crypt
            if handler.from_string(stored).checksum is None:    # a salt alone, as passlib refuses
                raise InvalidHash("crypt value has no hash")
            result = _c_crypt(password, stored)
            if result is not None:
                return hmac.compare_digest(result.encode(), stored.encode())
            return handler.verify(password, stored)
        if stored.startswith(("$2a$", "$2b$", "$2y$")):
            return _ph.bcrypt.verify(password[:_BCRYPT_MAX], stored)
        if stored.startswith("$argon2"):
            return _ph.argon2.verify(password, stored)
        if len(stored) == 13 and not stored.startswith("$"):
            return _ph.des_crypt.verify(password, stored)
        if len(stored) == 20 and stored.startswith("_"):
            return _ph.bsdi_crypt.verify(password, stored)
    except ValueError as e:     # passlib: malformed hash string
        raise InvalidHash(f"malformed crypt value: {e}") from None
    return _system_crypt_check(password, stored)


def _c_crypt(password: bytes, stored: str) -> str | None:
    """crypt(3) from the C library, or None where it is missing or refuses the format."""
    if _crypt is None:
        return None
    try:
        result = _crypt.crypt(password.decode("utf-8", "surrogateescape"), stored)
    except (OSError, ValueError):
        return None
    return None if not result or result.startswith("*") else result


def _system_crypt_check(password: bytes, stored: str) -> bool:
    """Formats passlib does not know (yescrypt ``$y$`` from /etc/shadow...): the C library."""
    result = _c_crypt(password, stored)
    if result is None:
        raise InvalidHash("unrecognised crypt format")
    return hmac.compare_digest(result.encode(), stored.encode())


def _passlib_generate(handler, **settings):
    def generate(password: bytes, rounds=None) -> bytes:
        opts = dict(settings)
        if rounds:
            opts["rounds"] = rounds
        return handler.using(**opts).hash(password).encode("ascii")
    return generate


def _bcrypt_generate(password: bytes, rounds=None) -> bytes:
    return _ph.bcrypt.using(ident="2y", rounds=rounds or 5).hash(password[:_BCRYPT_MAX]).encode("ascii")


def _sha_crypt_generate(handler):
    def generate(password: bytes, rounds=None) -> bytes:
        # Dovecot: 16 salt characters, 5000 rounds left implicit unless asked for.
        return handler.using(salt_size=16, rounds=rounds or 5000).hash(password).encode("ascii")
    return generate


def _argon2_generate(kind: str, memory_kib: int, default_rounds: int):
    def generate(password: bytes, rounds=None) -> bytes:
        # libsodium's crypto_pwhash_str parameters, as Dovecot 2.3 uses them.
        h = _ph.argon2.using(type=kind, memory_cost=memory_kib, rounds=rounds or default_rounds,
                             parallelism=1, salt_size=16, digest_size=32)
        return h.hash(password).encode("ascii")
    return generate


def _argon2_check(password: bytes, raw: bytes) -> bool:
    stored = _ascii(raw)
    if not stored.startswith("$argon2"):
        raise InvalidHash("not an argon2 string")
    try:
        return _ph.argon2.verify(password, stored)
    except ValueError as e:
        raise InvalidHash(f"malformed argon2 value: {e}") from None


# --- MD5 (Dovecot: MD5-CRYPT when generating; MD5-CRYPT or PLAIN-MD5 when verifying) ------------

def _md5_check(password: bytes, raw: bytes) -> bool:
    if raw.startswith(b"$1$"):
        return _crypt_check(password, raw)
    digest = _decode(_ascii(raw), _SCHEMES["PLAIN-MD5"], "hex", explicit=False)
    return hmac.compare_digest(hashlib.md5(password).digest(), digest)


# --- PBKDF2 (Dovecot's own format: $1$salt$rounds$hex(PBKDF2-HMAC-SHA1, 20 bytes)) --------------

_PBKDF2_KEY_LEN = 20


def _pbkdf2_generate(password: bytes, rounds=None) -> bytes:
    salt = _salt(16)
    rounds = rounds or 5000
    key = hashlib.pbkdf2_hmac("sha1", password, salt.encode("ascii"), rounds, _PBKDF2_KEY_LEN)
    return f"$1${salt}${rounds}${key.hex()}".encode("ascii")


def _pbkdf2_check(password: bytes, raw: bytes) -> bool:
    if not raw.startswith(b"$1$"):
        raise InvalidHash("PBKDF2 value does not start with $1$")
    fields = raw[3:].split(b"$")
    if len(fields) != 3 or not fields[1].isdigit():
        raise InvalidHash("PBKDF2 value is not $1$salt$rounds$hash")
    salt, rounds, hexkey = fields[0], int(fields[1]), fields[2]
    if rounds < 1 or len(hexkey) != 2 * _PBKDF2_KEY_LEN:
        raise InvalidHash("PBKDF2 value has bad rounds or a hash that is not 160 bits of hex")
    try:
        expected = bytes.fromhex(hexkey.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise InvalidHash("PBKDF2 hash is not hex") from None
    key = hashlib.pbkdf2_hmac("sha1", password, salt, rounds, _PBKDF2_KEY_LEN)
    return hmac.compare_digest(key, expected)


# --- CRAM-MD5 (HMAC-MD5 contexts, see hmac_md5) and SCRAM (RFC 5802 keys) ------------------------

def _cram_generate(password: bytes, rounds=None) -> bytes:
    from mailserver.auth.hmac_md5 import cram_context
    return cram_context(password)


_SCRAM_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}
SCRAM_DEFAULT_ITERATIONS = 4096


@dataclasses.dataclass(frozen=True)
class ScramKeys:
    """What Dovecot stores for SCRAM: ``iterations,base64(salt),base64(StoredKey),base64(ServerKey)``."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


def scram_keys(hash_name: str, password: bytes, salt: bytes, iterations: int) -> ScramKeys:
    salted = hashlib.pbkdf2_hmac(hash_name, password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    server_key = hmac.new(salted, b"Server Key", hash_name).digest()
    return ScramKeys(iterations, salt, hashlib.new(hash_name, client_key).digest(), server_key)


def parse_scram(data: str | bytes, hash_name: str) -> ScramKeys:
    """The fields of a stored SCRAM value.  Raises InvalidHash."""
    if isinstance(data, bytes):
        data = _ascii(data)
    fields = data.split(",")
    size = hashlib.new(hash_name).digest_size
    try:
        if len(fields) != 4 or not fields[0].isdigit():
            raise ValueError
        keys = ScramKeys(int(fields[0]), *(base64.b64decode(f, validate=True) for f in fields[1:]))
    except (ValueError, binascii.Error):
        raise InvalidHash("SCRAM value is not iterations,salt,storedkey,serverkey") from None
    if keys.iterations < 1 or len(keys.stored_key) != size or len(keys.server_key) != size:
        raise InvalidHash("SCRAM value has bad iterations or key lengths")
    return keys


def _scram(name: str):
    hash_name = _SCRAM_HASHES[name]

    def generate(password: bytes, rounds=None) -> bytes:
        k = scram_keys(hash_name, password, secrets.token_bytes(16), rounds or SCRAM_DEFAULT_ITERATIONS)
        b64 = [base64.b64encode(x).decode("ascii") for x in (k.salt, k.stored_key, k.server_key)]
        return f"{k.iterations},{b64[0]},{b64[1]},{b64[2]}".encode("ascii")

    def check(password: bytes, raw: bytes) -> bool:
        stored = parse_scram(raw, hash_name)
        mine = scram_keys(hash_name, password, stored.salt, stored.iterations)
        return hmac.compare_digest(mine.stored_key, stored.stored_key)

    return generate, check


# --- the table ------------------------------------------------------------------------------------

def _build() -> dict[str, _Scheme]:
    ssha = _salted("sha1")
    ssha256 = _salted("sha256")
    ssha512 = _salted("sha512")
    smd5 = _salted("md5")
    crypt_bf = _bcrypt_generate
    table = [
        _Scheme("PLAIN", "none", _plain_generate),
        _Scheme("CLEARTEXT", "none", _plain_generate),
        _Scheme("CLEAR", "none", _plain_generate),
        _Scheme("PLAIN-MD5", "hex", _digest("md5"), raw_len=16),
        _Scheme("LDAP-MD5", "base64", _digest("md5"), raw_len=16),
        _Scheme("SMD5", "base64", smd5[0], smd5[1]),
        _Scheme("MD5", "none", _passlib_generate(_ph.md5_crypt, salt_size=8), _md5_check),
        _Scheme("SHA", "base64", _digest("sha1"), raw_len=20),
        _Scheme("SHA1", "base64", _digest("sha1"), raw_len=20),
        _Scheme("SHA256", "base64", _digest("sha256"), raw_len=32),
        _Scheme("SHA512", "base64", _digest("sha512"), raw_len=64),
        _Scheme("SSHA", "base64", ssha[0], ssha[1]),
        _Scheme("SSHA256", "base64", ssha256[0], ssha256[1]),
        _Scheme("SSHA512", "base64", ssha512[0], ssha512[1]),
        # Dovecot 2.3 generates bcrypt for {CRYPT}; verification accepts any crypt(3) string.
        _Scheme("CRYPT", "none", crypt_bf, _crypt_check),
        _Scheme("DES-CRYPT", "none", _passlib_generate(_ph.des_crypt), _crypt_check),
        _Scheme("MD5-CRYPT", "none", _passlib_generate(_ph.md5_crypt, salt_size=8), _crypt_check),
        _Scheme("SHA256-CRYPT", "none", _sha_crypt_generate(_ph.sha256_crypt), _crypt_check),
        _Scheme("SHA512-CRYPT", "none", _sha_crypt_generate(_ph.sha512_crypt), _crypt_check),
        _Scheme("BLF-CRYPT", "none", crypt_bf, _crypt_check),
        _Scheme("ARGON2I", "none", _argon2_generate("I", 32768, 4), _argon2_check),
        _Scheme("ARGON2ID", "none", _argon2_generate("ID", 65536, 3), _argon2_check),
        _Scheme("PBKDF2", "none", _pbkdf2_generate, _pbkdf2_check),
        _Scheme("CRAM-MD5", "hex", _cram_generate, raw_len=32),
        _Scheme("SCRAM-SHA-1", "none", *_scram("SCRAM-SHA-1")),
        _Scheme("SCRAM-SHA-256", "none", *_scram("SCRAM-SHA-256")),
    ]
    return {s.name: s for s in table}


_SCHEMES = _build()
_ENCODINGS = {"HEX": "hex", "B64": "base64", "BASE64": "base64"}


def supported() -> list[str]:
    """Every scheme name we hash and verify (aliases included), sorted."""
    return sorted(_SCHEMES)


def _lookup(name: str) -> tuple[_Scheme, str, bool]:
    """(scheme, encoding, encoding given explicitly) for ``NAME`` or ``NAME.ENCODING``."""
    base, dot, suffix = name.upper().partition(".")
    scheme = _SCHEMES.get(base)
    if scheme is None:
        raise UnknownScheme(f"unknown password scheme {name!r} (known: {' '.join(supported())})")
    if not dot:
        return scheme, scheme.encoding, False
    encoding = _ENCODINGS.get(suffix)
    if encoding is None:
        raise UnknownScheme(f"unknown encoding {suffix!r} in scheme {name!r} (HEX, B64 or BASE64)")
    return scheme, encoding, True


def _encode(raw: bytes, encoding: str) -> str:
    if encoding == "hex":
        return raw.hex()
    if encoding == "base64":
        return base64.b64encode(raw).decode("ascii")
    return raw.decode("utf-8", "surrogateescape")


def _decode(data: str, scheme: _Scheme, encoding: str, explicit: bool) -> bytes:
    """The raw bytes of a stored value, following Dovecot's password_decode: with no explicit
    suffix, a fixed-length scheme's value is hex when twice the raw length, else base64."""
    guessed = False
    if encoding != "none" and scheme.raw_len and not explicit:
        encoding = "hex" if len(data) == 2 * scheme.raw_len else "base64"
        guessed = True
    if encoding == "none":
        return data.encode("utf-8", "surrogateescape")
    if encoding == "hex":
        try:
            raw = bytes.fromhex(data)
        except ValueError:
            if not guessed:
                raise InvalidHash("value is not valid hex") from None
            encoding = "base64"     # some lengths are valid as both; Dovecot retries as base64
    if encoding == "base64":
        try:
            raw = base64.b64decode(data.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise InvalidHash("value is not valid base64") from None
    if scheme.raw_len and len(raw) != scheme.raw_len:
        raise InvalidHash(f"value decodes to {len(raw)} bytes instead of {scheme.raw_len}")
    return raw


def _password_bytes(password: str | bytes) -> bytes:
    return password if isinstance(password, bytes) else password.encode("utf-8")


def split(stored: str, default: str = DEFAULT_SCHEME) -> tuple[str, str]:
    """(scheme name, data) of a stored password, as Dovecot's password_get_scheme reads it."""
    if stored.startswith("$1$"):
        # $1$<salt>$<hash>[$<ignored>]
        parts = stored.split("$")
        if len(parts) >= 4:
            return "MD5-CRYPT", "$".join(parts[:4])
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 0:
            return stored[1:end], stored[end + 1:]
    return default, stored


def scheme_of(stored: str, default: str = DEFAULT_SCHEME) -> str:
    """The canonical (upper-case) scheme name a stored password uses."""
    return split(stored, default)[0].upper()


def hash_password(scheme: str, password: str | bytes, rounds: int | None = None) -> str:
    """``{SCHEME}data`` for ``password``, the format ``doveadm pw -s SCHEME`` prints.
    ``rounds`` (like ``doveadm pw -r``) sets the cost of crypt, argon2 and PBKDF2 schemes.
    Raises UnknownScheme."""
    s, encoding, _ = _lookup(scheme)
    raw = s.generate(_password_bytes(password), rounds)
    return "{" + scheme.upper() + "}" + _encode(raw, encoding)


def verify(stored: str, password: str | bytes, default_scheme: str = DEFAULT_SCHEME) -> bool:
    """True if ``password`` matches ``stored`` (compared in constant time).
    Raises UnknownScheme for a scheme we do not know and InvalidHash for a value that is not
    valid for its scheme: both are the admin's problem, to be logged, not a wrong password."""
    name, data = split(stored, default_scheme)
    s, encoding, explicit = _lookup(name)
    raw = _decode(data, s, encoding, explicit)
    pw = _password_bytes(password)
    if s.check is not None:
        return bool(s.check(pw, raw))
    return hmac.compare_digest(s.generate(pw, None), raw)
