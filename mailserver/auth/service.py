"""The Authenticator every protocol uses: one username rule, the passdbs in their configured order,
master users, userdbs, the login policy (plaintext networks, SASL mechanisms, penalty), logging
and a delay on failure.  ``build_authenticator(config)`` is what the server calls."""

from __future__ import annotations

from twisted.internet import task
from twisted.logger import Logger

from mailserver.auth import (AuthResult, Authenticator, AuthUnavailable, CredentialLookup, PassDB,
                             UserRecord)
from mailserver.auth.policy import NetworkList, Penalty, host_of

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
    """``Authenticator`` over passdbs tried in order (Dovecot's default chain: a passdb that does
    not know the user or refuses the password hands on to the next; the first success wins; a
    passdb that could not answer makes an overall failure temporary).

    ``masters``: passdbs for ``user*master`` logins (and SASL authorization identities);
    ``userdbs``: where LMTP and master logins look users up (default: the passdbs).
    A failed login is logged (service, peer, user, mechanism, reason; never the password),
    counted by the ``penalty`` and answered after ``failure_delay`` seconds; an unknown user costs
    what a wrong password costs (each passdb takes care of that).  ``clock`` is the reactor
    (a ``task.Clock`` in tests)."""

    def __init__(self, passdbs, rule: UsernameRule, failure_delay: float = 2.0, clock=None, *,
                 masters=(), userdbs=(), master_separator: str = "", penalty: Penalty | None = None,
                 plaintext_networks: NetworkList | None = None, mechanisms=("PLAIN", "LOGIN"),
                 oauth2=None):
        self.passdbs = [passdbs] if isinstance(passdbs, PassDB) else list(passdbs)
        self.masters = list(masters)
        self.userdbs = list(userdbs)
        self.rule = rule
        self.failure_delay = failure_delay
        self.master_separator = master_separator
        self.penalty = penalty or Penalty(threshold=1 << 30)
        self.plaintext_networks = plaintext_networks or NetworkList(["127.0.0.0/8", "::1/128"])
        self.mechanism_names = list(mechanisms)
        self.oauth2 = oauth2                    # mailserver.auth.oauth2.Introspector or None
        self._clock = clock

    @property
    def passdb(self) -> PassDB:
        """The first passdb (what a one-passdb setup has)."""
        return self.passdbs[0]

    def normalize(self, username: str) -> str:
        return self.rule.normalize(username)

    # --- policy ------------------------------------------------------------------------------------

    def plaintext_allowed(self, peer_host: str, secure: bool) -> bool:
        return secure or peer_host in self.plaintext_networks

    def mechanisms(self, plaintext_ok: bool) -> list[str]:
        from mailserver.auth import sasl
        return [m for m in self.mechanism_names if plaintext_ok or m not in sasl.PLAINTEXT]

    # --- logins ------------------------------------------------------------------------------------

    async def authenticate(self, username: str, password: str, *, service: str, peer: str,
                           mechanism: str = "PLAIN", authzid: str = "") -> AuthResult:
        """Verify a login; log, count and delay failures.  ``username`` as the client sent it
        (``user*master`` logs in as ``user`` with ``master``'s password); ``authzid``: a SASL
        authorization identity (a master user ``username`` acting as ``authzid``)."""
        host = host_of(peer)
        await self._hold_back(host)
        login, master = self._split_master(username, authzid)
        name = self.normalize(login)
        master_name = self.normalize(master) if master else ""
        problem = self.rule.problem(name) or (master and self.rule.problem(master_name))
        if problem:
            result = AuthResult(False, reason=problem)
        elif len(password.encode("utf-8", "surrogateescape")) > MAX_PASSWORD_BYTES:
            result = AuthResult(False, reason="password too long")
        elif self.penalty.user_locked(master_name or name, host):
            result = AuthResult(False, reason="too many failures for this user: refused unchecked")
        elif master:
            result = await self._verify_master(master_name, name, password)
        else:
            result = await self._verify(self.passdbs, name, password)
        login_text = name if not problem else repr(username[:64])
        if master:
            login_text = f"{login_text} (master {master_name})"
        return await self.conclude(result, login=login_text, service=service, peer=peer,
                                   mechanism=mechanism, counted_user=master_name or name)

    def _split_master(self, username: str, authzid: str) -> tuple[str, str]:
        """(login, master user or "")."""
        if authzid and self.normalize(authzid) != self.normalize(username):
            return authzid, username
        sep = self.master_separator
        if sep and sep in username and self.masters:
            login, _, master = username.rpartition(sep)
            return login, master
        return username, ""

    async def _verify(self, passdbs, name: str, password: str) -> AuthResult:
        temporary = ""
        reason = "unknown user"
        for db in passdbs:
            result = await db.verify(name, password)
            if result.ok:
                # A passdb may map the login to its canonical name (LDAP user_attribute).
                return AuthResult(True, username=result.username or name)
            if result.temporary:
                temporary = result.reason
            elif result.reason != "unknown user" or reason == "unknown user":
                reason = result.reason
        if temporary:
            return AuthResult(False, temporary=True, reason=temporary)
        return AuthResult(False, reason=reason)

    async def _verify_master(self, master: str, name: str, password: str) -> AuthResult:
        if not self.masters:
            return AuthResult(False, reason="authorization identity given but no master passdb is configured")
        result = await self._verify(self.masters, master, password)
        if not result.ok:
            return AuthResult(False, temporary=result.temporary, reason=f"master user: {result.reason}")
        try:
            record = await self._lookup(name)
        except AuthUnavailable as e:
            return AuthResult(False, temporary=True, reason=str(e))
        if record is None:
            return AuthResult(False, reason=f"master user {master} logged in as unknown user")
        log.info("master user {master} logs in as {user}", master=master, user=name)
        return AuthResult(True, username=name)

    async def credentials(self, username: str, *, service: str, peer: str,
                          mechanism: str) -> CredentialLookup:
        """The stored password for challenge-response mechanisms, after the penalty wait."""
        host = host_of(peer)
        await self._hold_back(host)
        name = self.normalize(username)
        problem = self.rule.problem(name)
        if problem:
            return CredentialLookup(name, None, refused=problem)
        if self.penalty.user_locked(name, host):
            return CredentialLookup(name, None, refused="too many failures for this user: refused unchecked")
        temporary = ""
        for db in self.passdbs:
            if not db.supports_credentials:
                continue
            try:
                record = await db.credentials(name)
            except AuthUnavailable as e:
                temporary = str(e)
                continue
            if record is not None:
                return CredentialLookup(name, record.password or None)
        return CredentialLookup(name, None, temporary=bool(temporary), refused=temporary)

    async def verify_token(self, token: str, user: str, *, service: str, peer: str,
                           mechanism: str) -> AuthResult:
        """Ask the introspection endpoint about ``token``; the token's user must be ``user``
        (when given) and must exist here."""
        host = host_of(peer)
        await self._hold_back(host)
        name = self.normalize(user) if user else ""
        if self.oauth2 is None:
            result = AuthResult(False, reason="OAuth2 is not configured")
        elif name and self.rule.problem(name):
            result = AuthResult(False, reason=self.rule.problem(name))
        elif name and self.penalty.user_locked(name, host):
            result = AuthResult(False, reason="too many failures for this user: refused unchecked")
        else:
            result = await self._check_token(token, name)
        return await self.conclude(result, login=result.username or name or "-", service=service,
                                   peer=peer, mechanism=mechanism, counted_user=name)

    async def _check_token(self, token: str, name: str) -> AuthResult:
        try:
            claimed = await self.oauth2.introspect(token)
        except AuthUnavailable as e:
            return AuthResult(False, temporary=True, reason=str(e))
        if claimed is None:
            return AuthResult(False, reason="token not active")
        owner = self.normalize(claimed)
        if name and owner != name:
            return AuthResult(False, reason=f"token belongs to {owner}, not {name}")
        try:
            record = await self._lookup(owner)
        except AuthUnavailable as e:
            return AuthResult(False, temporary=True, reason=str(e))
        if record is None or self.rule.problem(owner):
            return AuthResult(False, reason=f"token user {owner} is not a user here")
        return AuthResult(True, username=owner)

    async def conclude(self, result: AuthResult, *, login: str, service: str, peer: str,
                       mechanism: str, counted_user: str | None = None) -> AuthResult:
        """Log the outcome; count a failure against the address and the user, then delay it."""
        host = host_of(peer)
        if result.ok:
            self.penalty.succeeded(host)
            log.info("{service} login: user={user} peer={peer} mechanism={mechanism}",
                     service=service, user=result.username, peer=peer, mechanism=mechanism)
            return AuthResult(True, username=result.username)
        if not result.temporary:
            self.penalty.failed(host, counted_user if counted_user is not None else login)
        log.warn("{service} login failed: user={user} peer={peer} mechanism={mechanism}: {reason}",
                 service=service, user=login, peer=peer, mechanism=mechanism, reason=result.reason,
                 temporary=result.temporary, failures=self.penalty.failures(host))
        if self.failure_delay > 0 and not result.temporary:
            await task.deferLater(self._reactor(), self.failure_delay, lambda: None)
        return AuthResult(False, username="", temporary=result.temporary, reason=result.reason)

    async def _hold_back(self, host: str) -> None:
        delay = self.penalty.delay(host)
        if delay > 0:
            log.info("holding back a login from {host} for {delay:.1f}s ({n} recent failures)",
                     host=host, delay=delay, n=self.penalty.failures(host))
            await task.deferLater(self._reactor(), delay, lambda: None)

    # --- users -------------------------------------------------------------------------------------

    async def lookup(self, username: str) -> UserRecord | None:
        """The record of a user (LMTP RCPT), or None.  Raises AuthUnavailable."""
        name = self.normalize(username)
        if self.rule.problem(name):
            return None
        return await self._lookup(name)

    async def _lookup(self, name: str) -> UserRecord | None:
        """Userdbs in order (default: the passdbs); the first that knows the user answers.  A
        userdb that asks for it (static) answers only for users some passdb knows."""
        async def known_to_passdbs(db) -> bool:
            return not getattr(db, "needs_passdb_check", False) or await self._lookup_passdbs(name) is not None
        return await _first_record(self.userdbs or self.passdbs, name, known_to_passdbs)

    async def _lookup_passdbs(self, name: str) -> UserRecord | None:
        return await _first_record(self.passdbs, name)

    def _reactor(self):
        if self._clock is None:
            from twisted.internet import reactor
            return reactor
        return self._clock


def build_authenticator(config) -> Authenticator:
    """The server's authenticator from ``[auth]``: passdbs and userdbs through their entry points,
    the username rule, the policy.  Raises ConfigError / PluginError."""
    from mailserver import plugins
    from mailserver.auth import sasl
    from mailserver.config import ConfigError
    a = config.auth
    if not a.passdb:
        raise ConfigError("[auth]: no passdb configured: set passwd_file or add [[auth.passdb]] tables")
    passdbs, masters, userdbs = [], [], []
    for table in a.passdb:
        db = plugins.load(plugins.PASSDBS, table["driver"]).from_config(config, table)
        (masters if table["master"] else passdbs).append(db)
    if not passdbs:
        raise ConfigError("[auth]: every passdb is a master passdb: add one for ordinary users")
    for table in a.userdb:
        userdbs.append(plugins.load(plugins.USERDBS, table["driver"]).from_config(config, table))
    oauth2 = None
    o = config.section("auth.oauth2")
    if o.introspection_url:
        from mailserver.auth.oauth2 import Introspector
        oauth2 = Introspector.from_config(o)
    for name in a.mechanisms:
        problem = sasl.unusable(name.upper(), passdbs, oauth2)
        if problem:
            raise ConfigError(f"[auth] mechanisms: {name}: {problem}")
    return PassdbAuthenticator(passdbs, UsernameRule.from_config(config), a.failure_delay,
                               masters=masters, userdbs=userdbs,
                               master_separator=a.master_user_separator, penalty=Penalty.from_config(config),
                               plaintext_networks=NetworkList(a.plaintext_networks),
                               mechanisms=[m.upper() for m in a.mechanisms], oauth2=oauth2)


__all__ = ["UsernameRule", "PassdbAuthenticator", "build_authenticator", "AuthUnavailable"]


async def _first_record(dbs, name: str, admit=None) -> UserRecord | None:
    """The first record any of ``dbs`` has for ``name`` (skipping dbs ``admit`` refuses).  If none
    has it and one of them could not answer, raise AuthUnavailable rather than say "unknown"."""
    temporary = ""
    for db in dbs:
        try:
            if admit is not None and not await admit(db):
                continue
            record = await db.lookup(name)
        except AuthUnavailable as e:
            temporary = str(e)
            continue
        if record is not None:
            return record
    if temporary:
        raise AuthUnavailable(temporary)
    return None
