"""SASL, one implementation shared by IMAP AUTHENTICATE and POP3 AUTH.

A protocol starts a mechanism with ``start(name, auth, service=..., peer=..., plaintext_ok=...)``
and feeds it the client's responses, already base64-decoded (``None`` when the client sent no
initial response).  Each ``step`` returns either a challenge to send (base64-encoding and framing
are the protocol's job, as are ``*`` cancellation and malformed base64) or the final
``AuthResult``.  Mechanisms: PLAIN (RFC 4616), LOGIN (draft-murchison-sasl-login), CRAM-MD5
(RFC 2195), SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802/7677, through ``scramp``, without channel
binding), OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's), the last two validating the bearer
token at an RFC 7662 introspection endpoint.

Password mechanisms go through ``Authenticator.authenticate``; challenge-response ones ask
``Authenticator.credentials`` for the stored password and report with ``Authenticator.conclude``
(so the penalty, the failure delay and the log line are the same for all).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import hmac
import json
import secrets
import socket
import time

from mailserver import threads
from mailserver.auth import AuthResult, Authenticator, AuthUnavailable, schemes
from mailserver.auth.hmac_md5 import hmac_from_context

# Mechanisms that reveal a reusable secret to whoever reads the connection: offered only over
# TLS or to plaintext_networks.
PLAINTEXT = frozenset({"PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2"})
_POOL = "auth"
# Per-process secret for the salts of unknown users (SCRAM must not tell who exists).
_FAKE_SALT_KEY = secrets.token_bytes(32)


@dataclasses.dataclass(frozen=True)
class Step:
    """``challenge`` to send to the client, or ``result`` when the exchange is over."""

    challenge: bytes | None = None
    result: AuthResult | None = None


def _fail(reason: str) -> Step:
    return Step(result=AuthResult(False, reason=reason))


class Mechanism(abc.ABC):
    name: str
    # True when the client may send its first response with the command (SASL-IR, RFC 4959).
    client_first: bool = True

    def __init__(self, auth: Authenticator, service: str, peer: str):
        self.auth = auth
        self.service = service
        self.peer = peer

    @abc.abstractmethod
    async def step(self, response: bytes | None) -> Step:
        """Process the client's response (None: the client sent no initial response)."""

    async def _conclude(self, result: AuthResult, login: str) -> Step:
        result = await self.auth.conclude(result, login=login, service=self.service, peer=self.peer,
                                          mechanism=self.name)
        return Step(result=result)


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Plain(Mechanism):
    """RFC 4616: ``authzid NUL authcid NUL passwd`` in one message.  An authorization identity
    other than the user's own is a master login (the authcid must be a master user)."""

    name = "PLAIN"

    async def step(self, response: bytes | None) -> Step:
        if response is None:
            return Step(challenge=b"")
        parts = response.split(b"\0")
        if len(parts) != 3:
            return _fail("malformed PLAIN message")
        texts = [_utf8(p) for p in parts]
        if None in texts:
            return _fail("PLAIN message is not UTF-8")
        authzid, authcid, password = texts
        if not authcid:
            return _fail("empty PLAIN authentication identity")
        extra = {"authzid": authzid} if authzid else {}
        result = await self.auth.authenticate(authcid, password, service=self.service, peer=self.peer,
                                              mechanism=self.name, **extra)
        return Step(result=result)


class Login(Mechanism):
    """The LOGIN mechanism: "Username:" and "Password:" challenges (an initial response is the
    username, as clients send it)."""

    name = "LOGIN"

    def __init__(self, auth, service, peer):
        super().__init__(auth, service, peer)
        self._username: str | None = None

    async def step(self, response: bytes | None) -> Step:
        if self._username is None:
            if not response:
                if response is None:
                    return Step(challenge=b"Username:")
                return _fail("empty LOGIN username")
            username = _utf8(response)
            if username is None:
                return _fail("LOGIN username is not UTF-8")
            self._username = username
            return Step(challenge=b"Password:")
        password = _utf8(response or b"")
        if password is None:
            return _fail("LOGIN password is not UTF-8")
        return Step(result=await self.auth.authenticate(self._username, password, service=self.service,
                                                        peer=self.peer, mechanism=self.name))


class CramMD5(Mechanism):
    """RFC 2195.  Works for users stored in plaintext or as ``{CRAM-MD5}`` contexts."""

    name = "CRAM-MD5"
    client_first = False

    def __init__(self, auth, service, peer):
        super().__init__(auth, service, peer)
        self._challenge: bytes | None = None

    async def step(self, response: bytes | None) -> Step:
        if self._challenge is None:
            if response:
                return _fail("CRAM-MD5 takes no initial response")
            self._challenge = (f"<{secrets.randbits(63)}.{int(time.time())}@{socket.gethostname()}>"
                               .encode("ascii"))
            return Step(challenge=self._challenge)
        text = _utf8(response or b"")
        user, _, digest = (text or "").rpartition(" ")
        if not user or len(digest) != 32:
            return _fail("malformed CRAM-MD5 response")
        found = await self.auth.credentials(user, service=self.service, peer=self.peer, mechanism=self.name)
        if found.refused or found.temporary:
            return await self._conclude(AuthResult(False, temporary=found.temporary, reason=found.refused), user)
        expected, problem = _cram_expected(found.stored, self._challenge) if found.stored else (None, "unknown user")
        if expected is None:
            # Compare anyway so an unusable or unknown user takes as long as a wrong answer.
            expected = hmac.new(_FAKE_SALT_KEY, self._challenge, hashlib.md5).hexdigest()
        ok = hmac.compare_digest(expected.encode(), digest.lower().encode()) and not problem
        result = AuthResult(True, username=found.username) if ok else AuthResult(False, reason=problem or "wrong digest")
        return await self._conclude(result, found.username)


def _cram_expected(stored: str, challenge: bytes) -> tuple[str | None, str]:
    """(expected hex digest, "") or (None, why this user cannot use CRAM-MD5)."""
    scheme, data = schemes.split(stored)
    scheme = scheme.upper()
    if scheme in ("PLAIN", "CLEAR", "CLEARTEXT"):
        return hmac.new(data.encode("utf-8"), challenge, hashlib.md5).hexdigest(), ""
    if scheme == "CRAM-MD5":
        try:
            return hmac_from_context(bytes.fromhex(data), challenge).hex(), ""
        except ValueError:
            return None, "malformed {CRAM-MD5} value"
    return None, f"stored scheme {scheme} cannot serve CRAM-MD5"


class Scram(Mechanism):
    """RFC 5802 (SCRAM-SHA-1) and RFC 7677 (SCRAM-SHA-256), through scramp, without channel
    binding.  Stored ``{SCRAM-SHA-*}`` keys of the same hash, or a plaintext password, work."""

    client_first = True
    hash_name = "sha256"
    # Tests set this to replay the RFC 5802 / RFC 7677 examples; None: a random nonce.
    fixed_server_nonce: str | None = None

    def __init__(self, auth, service, peer):
        super().__init__(auth, service, peer)
        self._server = None
        self._user = ""
        self._problem = ""
        self._done = False

    async def step(self, response: bytes | None) -> Step:
        import scramp
        if self._done:
            return await self._conclude(AuthResult(True, username=self._user), self._user)
        if self._server is None:
            if response is None:
                return Step(challenge=b"")
            text = _utf8(response)
            parsed = _scram_client_first(text) if text else None
            if parsed is None:
                return _fail("malformed SCRAM client-first message")
            authzid, user = parsed
            if authzid and self.auth.normalize(authzid) != self.auth.normalize(user):
                return await self._conclude(AuthResult(False, reason="SCRAM authorization identity refused"), user)
            found = await self.auth.credentials(user, service=self.service, peer=self.peer, mechanism=self.name)
            self._user = found.username
            if found.refused or found.temporary:
                return await self._conclude(AuthResult(False, temporary=found.temporary, reason=found.refused), user)
            keys, self._problem = await self._keys(found.stored, found.username)
            self._server = scramp.ScramMechanism(self.name).make_server(
                lambda _name: (keys.salt, keys.stored_key, keys.server_key, keys.iterations),
                s_nonce=self.fixed_server_nonce)
            try:
                self._server.set_client_first(text)
                return Step(challenge=self._server.get_server_first().encode("utf-8"))
            except scramp.ScramException as e:
                return await self._conclude(AuthResult(False, reason=f"SCRAM: {e}"), self._user)
        text = _utf8(response or b"")
        try:
            self._server.set_client_final(text or "")
            final = self._server.get_server_final()
        except scramp.ScramException as e:
            return await self._conclude(AuthResult(False, reason=self._problem or f"SCRAM: {e}"), self._user)
        if self._problem:       # cannot happen (random keys), but never let it through
            return await self._conclude(AuthResult(False, reason=self._problem), self._user)
        self._done = True
        return Step(challenge=final.encode("utf-8"))

    async def _keys(self, stored: str | None, user: str) -> tuple[schemes.ScramKeys, str]:
        """The user's SCRAM keys, or unusable random ones and the reason."""
        problem = "unknown user"
        if stored:
            scheme, data = schemes.split(stored)
            scheme = scheme.upper()
            try:
                if scheme == self.name:
                    return schemes.parse_scram(data, self.hash_name), ""
                if scheme in ("PLAIN", "CLEAR", "CLEARTEXT"):
                    salt = secrets.token_bytes(16)
                    keys = await threads.run(_POOL, schemes.scram_keys, self.hash_name, data.encode("utf-8"),
                                             salt, schemes.SCRAM_DEFAULT_ITERATIONS)
                    return keys, ""
                problem = f"stored scheme {scheme} cannot serve {self.name}"
            except schemes.InvalidHash as e:
                problem = f"stored {self.name} value unusable: {e}"
        # Stable per user, so asking twice does not show that the user is unknown.
        salt = hmac.new(_FAKE_SALT_KEY, user.encode("utf-8"), hashlib.sha256).digest()[:16]
        size = hashlib.new(self.hash_name).digest_size
        return schemes.ScramKeys(schemes.SCRAM_DEFAULT_ITERATIONS, salt, secrets.token_bytes(size),
                                 secrets.token_bytes(size)), problem


class ScramSha1(Scram):
    name = "SCRAM-SHA-1"
    hash_name = "sha1"


class ScramSha256(Scram):
    name = "SCRAM-SHA-256"
    hash_name = "sha256"


def _scram_client_first(text: str) -> tuple[str, str] | None:
    """(authzid, username) from ``gs2-header client-first-bare``, or None when malformed
    (scramp checks the rest)."""
    parts = text.split(",")
    if len(parts) < 4 or parts[0] not in ("n", "y") or not parts[2].startswith("n="):
        return None
    authzid = parts[1][2:] if parts[1].startswith("a=") else ""
    if parts[1] and not authzid:
        return None
    user = _saslname(parts[2][2:])
    return (_saslname(authzid), user) if user else None


def _saslname(value: str) -> str:
    return value.replace("=2C", ",").replace("=3D", "=")


class _Bearer(Mechanism):
    """Shared by OAUTHBEARER and XOAUTH2: validate the token, match the user, report."""

    def __init__(self, auth, service, peer):
        super().__init__(auth, service, peer)
        self._failed: AuthResult | None = None

    async def step(self, response: bytes | None) -> Step:
        if self._failed is not None:
            # The client acknowledged the error challenge: the exchange fails now.
            return Step(result=self._failed)
        if response is None:
            return Step(challenge=b"")
        parsed = self.parse(response)
        if parsed is None:
            return _fail(f"malformed {self.name} message")
        user, token = parsed
        result = await self.auth.verify_token(token, user, service=self.service, peer=self.peer,
                                              mechanism=self.name)
        if result.ok or result.temporary:
            return Step(result=result)
        self._failed = result
        return Step(challenge=self.error_challenge())

    @abc.abstractmethod
    def parse(self, message: bytes) -> tuple[str, str] | None:
        """(requested user or "", bearer token)."""

    @abc.abstractmethod
    def error_challenge(self) -> bytes:
        """The JSON error the client must acknowledge."""


def _kvpairs(text: str) -> dict:
    pairs = {}
    for item in text.split("\x01"):
        if item:
            key, sep, value = item.partition("=")
            if not sep:
                return {}
            pairs[key] = value
    return pairs


def _bearer_token(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class OAuthBearer(_Bearer):
    """RFC 7628: ``gs2-header \\x01 kvpairs \\x01`` with ``auth=Bearer <token>``."""

    name = "OAUTHBEARER"

    def parse(self, message: bytes):
        text = _utf8(message)
        if text is None or not text.endswith("\x01\x01"):
            return None
        gs2, sep, rest = text.partition("\x01")
        fields = gs2.split(",")
        if not sep or len(fields) != 3 or fields[0] not in ("n", "y") or fields[2]:
            return None
        if fields[1] and not fields[1].startswith("a="):
            return None
        token = _bearer_token(_kvpairs(rest).get("auth", ""))
        return (_saslname(fields[1][2:]), token) if token else None

    def error_challenge(self) -> bytes:
        return json.dumps({"status": "invalid_token", "schemes": "bearer", "scope": "mail"}).encode()


class XOAuth2(_Bearer):
    """Google's XOAUTH2: ``user=<user>\\x01auth=Bearer <token>\\x01\\x01``."""

    name = "XOAUTH2"

    def parse(self, message: bytes):
        text = _utf8(message)
        if text is None or not text.endswith("\x01\x01"):
            return None
        pairs = _kvpairs(text)
        token = _bearer_token(pairs.get("auth", ""))
        return (pairs.get("user", ""), token) if token and pairs.get("user") else None

    def error_challenge(self) -> bytes:
        return json.dumps({"status": "401", "schemes": "bearer", "scope": "mail"}).encode()


MECHANISMS: dict[str, type[Mechanism]] = {m.name: m for m in (
    Plain, Login, CramMD5, ScramSha1, ScramSha256, OAuthBearer, XOAuth2)}
_NEED_CREDENTIALS = frozenset({"CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"})


def unusable(name: str, passdbs, oauth2) -> str | None:
    """Why mechanism ``name`` cannot work with these passdbs (and OAuth2 setting), or None."""
    if name not in MECHANISMS:
        return f"unknown SASL mechanism (known: {', '.join(MECHANISMS)})"
    if name in _NEED_CREDENTIALS and not any(db.supports_credentials for db in passdbs):
        return "needs a passdb that can look up stored passwords (passwd-file, or ldap without auth_bind)"
    if name in ("OAUTHBEARER", "XOAUTH2") and oauth2 is None:
        return "needs [auth.oauth2] introspection_url"
    return None


def names(auth: Authenticator | None = None, plaintext_ok: bool = True) -> list[str]:
    """Mechanisms to advertise (all known ones when no authenticator is given)."""
    if auth is None:
        return list(MECHANISMS)
    return auth.mechanisms(plaintext_ok)


def start(name: str, auth: Authenticator, *, service: str, peer: str,
          plaintext_ok: bool = True) -> Mechanism | None:
    """A new exchange for mechanism ``name`` (case-insensitive), or None if it is not offered
    on this connection."""
    name = name.upper()
    cls = MECHANISMS.get(name)
    if cls is None or name not in auth.mechanisms(plaintext_ok):
        return None
    return cls(auth, service, peer)


__all__ = ["Step", "Mechanism", "start", "names", "unusable", "PLAINTEXT", "AuthUnavailable"]
