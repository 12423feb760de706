"""Authentication: passdbs (registered in ``mailserver.passdbs``), username normalisation and
the ``Authenticator`` every protocol uses.  SASL mechanisms live in ``mailserver.auth.sasl``."""

from __future__ import annotations

import abc
import dataclasses


@dataclasses.dataclass(frozen=True)
class UserRecord:
    """A user as a passdb knows it.  ``password`` is the stored hash with its ``{SCHEME}`` prefix;
    ``extra`` holds passwd-file extra fields (``userdb_quota_rule=*:storage=1G`` ...)."""

    username: str
    password: str = ""
    uid: str = ""
    gid: str = ""
    gecos: str = ""
    home: str = ""
    shell: str = ""
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AuthResult:
    """Outcome of a login.  ``username`` is the normalised name to open storage with (on success).
    ``temporary``: the passdb could not answer (answer NO [UNAVAILABLE], not "wrong password").
    ``reason`` is for the log only."""

    ok: bool
    username: str = ""
    temporary: bool = False
    reason: str = ""


class PassDB(abc.ABC):
    """A password database (``mailserver.passdbs`` entry-point group), one ``[[auth.passdb]]``.

    ``SETTINGS`` declares the driver's keys in its table (``{name: config.Key}``), validated by the
    config loader.  ``supports_credentials``: ``credentials`` can hand out the stored password
    (CRAM-MD5 and SCRAM need it; an LDAP passdb doing authentication binds cannot)."""

    SETTINGS: dict = {}
    supports_credentials = False

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config, settings) -> "PassDB":
        """Build from the validated configuration and this passdb's validated table (a dict:
        ``driver``, ``master`` and the ``SETTINGS`` keys).  Raises ConfigError."""

    @abc.abstractmethod
    async def lookup(self, username: str) -> UserRecord | None:
        """The record of a normalised username, or None.  Raises AuthUnavailable when the
        backend cannot answer."""

    @abc.abstractmethod
    async def verify(self, username: str, password: str) -> AuthResult:
        """Check a password (hashing runs off the reactor).  An unknown user gets
        ``reason="unknown user"`` and costs what a wrong password costs."""

    async def credentials(self, username: str) -> UserRecord | None:
        """The record with the stored ``{SCHEME}`` password (only when ``supports_credentials``).
        Raises AuthUnavailable."""
        return await self.lookup(username)


class UserDB(abc.ABC):
    """A user database (``mailserver.userdbs``), one ``[[auth.userdb]]``: does a user exist (LMTP)
    and what are its fields.  Passdbs that can look users up register here too."""

    SETTINGS: dict = {}

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config, settings) -> "UserDB":
        """Build from the configuration and this userdb's validated table."""

    @abc.abstractmethod
    async def lookup(self, username: str) -> UserRecord | None:
        """The record of a normalised username, or None.  Raises AuthUnavailable."""


class AuthUnavailable(Exception):
    """The passdb could not answer (file unreadable, directory down)."""


class Authenticator(abc.ABC):
    """What protocols call.  One normalisation rule for IMAP, POP3, LMTP and storage."""

    @abc.abstractmethod
    def normalize(self, username: str) -> str:
        """The canonical form of a username (case, domain), used for login and storage alike."""

    @abc.abstractmethod
    async def authenticate(self, username: str, password: str, *, service: str, peer: str,
                           mechanism: str = "PLAIN") -> AuthResult:
        """Verify a login and log the outcome (never the password)."""

    @abc.abstractmethod
    async def lookup(self, username: str) -> UserRecord | None:
        """A user's record (LMTP RCPT), or None.  Raises AuthUnavailable."""

    # --- policy (defaults: everything allowed; the real one is in mailserver.auth.service) ----

    def plaintext_allowed(self, peer_host: str, secure: bool) -> bool:
        """May a client at ``peer_host`` send a password in the clear (LOGIN, USER/PASS, PLAIN)?
        ``secure``: the connection runs TLS."""
        return True

    def mechanisms(self, plaintext_ok: bool) -> list[str]:
        """SASL mechanisms to advertise (``plaintext_ok``: as ``plaintext_allowed`` said)."""
        return ["PLAIN"]

    async def credentials(self, username: str, *, service: str, peer: str,
                          mechanism: str) -> "CredentialLookup":
        """For challenge-response mechanisms: wait out the caller's penalty, then the stored
        password of ``username`` (as the client sent it).  The outcome must be reported with
        ``conclude``."""
        return CredentialLookup(self.normalize(username), None, temporary=False, refused="not supported")

    async def verify_token(self, token: str, user: str, *, service: str, peer: str,
                           mechanism: str) -> AuthResult:
        """OAUTHBEARER/XOAUTH2: validate a bearer token for ``user`` ("" : whoever the token
        names), with the same penalty, delay and log line as a password."""
        return AuthResult(False, reason="bearer tokens are not supported")

    async def conclude(self, result: AuthResult, *, login: str, service: str, peer: str,
                       mechanism: str) -> AuthResult:
        """Log the outcome of a challenge-response exchange, count failures (penalty), delay a
        failure; the result to act on."""
        return result


@dataclasses.dataclass(frozen=True)
class CredentialLookup:
    """``username``: normalised; ``stored``: ``{SCHEME}data`` or None (unknown user, or the
    user's scheme cannot serve this mechanism: the exchange runs on and fails at the end);
    ``temporary``: the passdb could not answer; ``refused``: why the lookup was refused before
    asking any passdb (penalty lock, bad username), for the log."""

    username: str
    stored: str | None
    temporary: bool = False
    refused: str = ""
