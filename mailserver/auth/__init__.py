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
    """A password database (``mailserver.passdbs`` entry-point group)."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config) -> "PassDB":
        """Build from the validated configuration."""

    @abc.abstractmethod
    async def lookup(self, username: str) -> UserRecord | None:
        """The record of a normalised username, or None.  Raises AuthUnavailable when the
        backend cannot answer."""

    @abc.abstractmethod
    async def verify(self, username: str, password: str) -> AuthResult:
        """Check a password (hashing runs off the reactor)."""


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
