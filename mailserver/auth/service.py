"""The Authenticator every protocol uses: one username rule, a passdb, logging and a delay on
failure.  ``build_authenticator(config)`` is what the server calls."""

from __future__ import annotations

from twisted.internet import task
from twisted.logger import Logger

from mailserver.auth import AuthResult, Authenticator, AuthUnavailable, PassDB, UserRecord

log = Logger(namespace="mailserver.auth")

# Longer passwords are refused without hashing them: SHA-crypt and PBKDF2 cost grows with the
# password's length, and no real password is this long.
MAX_PASSWORD_BYTES = 1024
MAX_USERNAME_LENGTH = 255


class UsernameRule:
    """The one way a username is normalised (login, LMTP recipient, passdb keys, storage).

    ``case``: ``lower`` or ``keep``; ``strip_domain``: drop ``@domain``; ``chars``: the
    characters a valid username may contain (empty: any but control characters and ``/``)."""

    def __init__(self, case: str = "lower", chars: str = "", strip_domain: bool = False):
        self.case = case
        self.chars = frozenset(chars)
        self.strip_domain = strip_domain

    @classmethod
    def from_config(cls, config) -> "UsernameRule":
        a = config.auth
        return cls(a.username_case, a.username_chars, a.strip_domain)

    def normalize(self, username: str) -> str:
        """The canonical form (no validity check: see ``problem``)."""
        if self.strip_domain:
            username = username.partition("@")[0]
        return username.lower() if self.case == "lower" else username

    def problem(self, username: str) -> str | None:
        """Why a normalised username can never be a user here, or None."""
        if not username:
            return "empty username"
        if len(username) > MAX_USERNAME_LENGTH:
            return "username too long"
        if self.chars:
            bad = set(username) - self.chars
            if bad:
                return f"username contains disallowed characters {''.join(sorted(bad))!r}"
        elif any(c < " " or c in "/\x7f" for c in username):
            return "username contains control characters or '/'"
        return None


class PassdbAuthenticator(Authenticator):
    """``Authenticator`` over one passdb.

    A failed login is logged (service, peer, user, mechanism, reason; never the password) and
    answered after ``failure_delay`` seconds; an unknown user costs what a wrong password costs
    (the passdb checks a dummy hash).  ``clock`` is the reactor (a ``task.Clock`` in tests)."""

    def __init__(self, passdb: PassDB, rule: UsernameRule, failure_delay: float = 2.0, clock=None):
        self.passdb = passdb
        self.rule = rule
        self.failure_delay = failure_delay
        self._clock = clock

    def normalize(self, username: str) -> str:
        return self.rule.normalize(username)

    async def authenticate(self, username: str, password: str, *, service: str, peer: str,
                           mechanism: str = "PLAIN") -> AuthResult:
        """Verify a login; log and delay failures.  ``username`` as the client sent it."""
        name = self.normalize(username)
        problem = self.rule.problem(name)
        if problem:
            result = AuthResult(False, reason=problem)
        elif len(password.encode("utf-8", "surrogateescape")) > MAX_PASSWORD_BYTES:
            result = AuthResult(False, reason="password too long")
        else:
            result = await self.passdb.verify(name, password)
        if result.ok:
            log.info("{service} login: user={user} peer={peer} mechanism={mechanism}",
                     service=service, user=name, peer=peer, mechanism=mechanism)
            return AuthResult(True, username=name)
        log.warn("{service} login failed: user={user} peer={peer} mechanism={mechanism}: {reason}",
                 service=service, user=name if not problem else repr(username[:64]), peer=peer,
                 mechanism=mechanism, reason=result.reason, temporary=result.temporary)
        if self.failure_delay > 0 and not result.temporary:
            await task.deferLater(self._reactor(), self.failure_delay, lambda: None)
        return AuthResult(False, username="", temporary=result.temporary, reason=result.reason)

    async def lookup(self, username: str) -> UserRecord | None:
        """The record of a user (LMTP RCPT), or None.  Raises AuthUnavailable."""
        name = self.normalize(username)
        if self.rule.problem(name):
            return None
        return await self.passdb.lookup(name)

    def _reactor(self):
        if self._clock is None:
            from twisted.internet import reactor
            return reactor
        return self._clock


def build_authenticator(config) -> Authenticator:
    """The server's authenticator: the passwd-file passdb (``mailserver.passdbs`` entry point)
    with the configured username rule.  Raises ConfigError / PluginError."""
    from mailserver import plugins
    cls = plugins.load(plugins.PASSDBS, "passwd-file")
    return PassdbAuthenticator(cls.from_config(config), UsernameRule.from_config(config),
                               config.auth.failure_delay)


__all__ = ["UsernameRule", "PassdbAuthenticator", "build_authenticator", "AuthUnavailable"]
