"""An LDAP directory as passdb and userdb (ldap3; its synchronous calls run in the ``ldap`` pool).

Users are found with ``user_filter`` under ``base`` (``%u`` the whole username, ``%n`` the part
before ``@``, ``%d`` the domain, ``%%`` a percent sign; values are escaped for LDAP filters),
searching as ``bind_dn`` (anonymous when empty).  Then either

- password lookup (default): the ``password_attribute`` (``userPassword``) is read and verified
  here with the Dovecot schemes (``{SSHA}``, ``{CRYPT}``...; no prefix: ``default_password_scheme``),
  which also lets CRAM-MD5 and SCRAM use stored values; or
- ``auth_bind = true``: the directory checks the password by a bind as the user's DN (on
  connections of their own, pooled and re-bound), and the password is never read.

Attributes map to the user's fields: ``user_attribute`` (canonical username, normalised with the
server's rule), ``home_attribute``, ``quota_attribute`` (``quota_rule``) and ``enabled_attribute``
(a login is refused unless it holds one of ``enabled_values``; delivery is not affected).

Connections: ``uris`` tried in order (``ldap://`` with optional ``starttls``, or ``ldaps://``,
verified against ``tls_ca_file``), kept in a pool of ``pool_size``; a broken pooled connection is
replaced and the request retried once.  When no server answers, the passdb raises / returns a
temporary failure (``AuthUnavailable``), never "wrong password".

Timing: an unknown user is checked against a real stored hash (password lookup), or costs an
extra bind padded to the running average of failed binds (auth bind), so it answers in about the
time a wrong password does.
"""

from __future__ import annotations

import math
import secrets
import ssl
import threading
import time

from twisted.internet import task
from twisted.logger import Logger

from mailserver import threads
from mailserver.auth import AuthResult, AuthUnavailable, PassDB, UserDB, UserRecord, schemes
from mailserver.config import ConfigError, Key, absolute_path, one_of, positive

log = Logger(namespace="mailserver.auth.ldap")

POOL = "ldap"
_SCOPES = ("subtree", "onelevel", "base")


def _uris(value: list) -> str | None:
    if not value:
        return "at least one URI is needed"
    for uri in value:
        if not uri.startswith(("ldap://", "ldaps://")):
            return f"{uri!r}: must start with ldap:// or ldaps://"
    return None


def expand_filter(template: str, username: str) -> str:
    """``user_filter`` with %u, %n, %d, %% filled in (values escaped per RFC 4515)."""
    from ldap3.utils.conv import escape_filter_chars
    local, _, domain = username.partition("@")
    values = {"u": username, "n": local, "d": domain, "%": "%"}
    out, i = [], 0
    while i < len(template):
        c = template[i]
        if c == "%" and i + 1 < len(template) and template[i + 1] in values:
            v = values[template[i + 1]]
            out.append(v if template[i + 1] == "%" else escape_filter_chars(v))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


class _Unreachable(Exception):
    """One server could not be reached (try the next)."""


class _Entry:
    """What a search found: DN and the mapped attributes (strings)."""

    __slots__ = ("dn", "attrs")

    def __init__(self, dn: str, attrs: dict):
        self.dn = dn
        self.attrs = attrs


class LdapPassDB(PassDB, UserDB):
    """Entry point ``ldap`` in ``mailserver.passdbs`` and ``mailserver.userdbs``."""

    SETTINGS = {
        "uris": Key(list, ["ldap://127.0.0.1"], _uris, "Directory servers, tried in order (ldap:// or ldaps://)."),
        "starttls": Key(bool, False, None, "Upgrade ldap:// connections with StartTLS."),
        "tls_ca_file": Key(str, "", absolute_path, "CA certificates for ldaps:// and StartTLS (default: system)."),
        "tls_require_cert": Key(bool, True, None, "Verify the directory's certificate and name."),
        "bind_dn": Key(str, "", None, "DN to search as (empty: anonymous)."),
        "bind_password": Key(str, "", None, "Its password."),
        "bind_password_file": Key(str, "", absolute_path, "File holding the password instead (first line)."),
        "base": Key(str, "", None, "Search base.", required=True),
        "scope": Key(str, "subtree", one_of(*_SCOPES), "Search scope."),
        "user_filter": Key(str, "(&(objectClass=inetOrgPerson)(uid=%u))", None,
                           "Filter finding a user: %u username, %n its local part, %d its domain."),
        "auth_bind": Key(bool, False, None, "Check passwords by binding as the user (the password is not read)."),
        "user_attribute": Key(str, "", None, "Attribute holding the canonical username (empty: the login name)."),
        "password_attribute": Key(str, "userPassword", None, "Attribute holding the password hash."),
        "default_password_scheme": Key(str, "CRYPT", None, "Scheme of a stored password without {SCHEME}."),
        "home_attribute": Key(str, "", None, "Attribute holding the home directory."),
        "quota_attribute": Key(str, "", None, "Attribute holding the quota rule (e.g. *:storage=1G)."),
        "enabled_attribute": Key(str, "", None, "Attribute that must hold one of enabled_values to log in."),
        "enabled_values": Key(list, ["TRUE", "1", "yes", "enabled", "active"], None,
                              "Values of enabled_attribute meaning enabled (case-insensitive)."),
        "pool_size": Key(int, 4, positive, "Pooled connections (and threads) per kind (search, auth bind)."),
        "timeout": Key(float, 5.0, positive, "Seconds for connecting and for each operation."),
    }

    def __init__(self, settings: dict, normalize=lambda u: u):
        import ldap3
        self.s = settings
        self._normalize = normalize
        self.supports_credentials = not settings["auth_bind"]
        self._bind_password = settings["bind_password"]
        tls = None
        if any(u.startswith("ldaps://") for u in settings["uris"]) or settings["starttls"]:
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED if settings["tls_require_cert"] else ssl.CERT_NONE,
                            ca_certs_file=settings["tls_ca_file"] or None,
                            version=ssl.PROTOCOL_TLS_CLIENT)
        self._tls = tls
        self._servers = settings["uris"]
        self._preferred = 0             # index of the server that answered last
        self._scope = {"subtree": ldap3.SUBTREE, "onelevel": ldap3.LEVEL, "base": ldap3.BASE}[settings["scope"]]
        self._lock = threading.Lock()
        self._idle: list = []           # search connections (bound as bind_dn)
        self._idle_auth: list = []      # auth-bind connections
        # A real stored hash an unknown user is checked against (updated from real users).
        self._dummy = schemes.hash_password("SSHA512", secrets.token_urlsafe(16))
        self._bind_seconds = 0.01       # running average of failed user binds
        self._down = ""                 # last connection problem, for one log line per outage
        threads.pool(POOL, settings["pool_size"] * 2)

    @classmethod
    def from_config(cls, config, settings) -> "LdapPassDB":
        from mailserver.auth.service import UsernameRule
        settings = dict(settings)
        if settings["bind_password_file"]:
            try:
                with open(settings["bind_password_file"], encoding="utf-8") as f:
                    settings["bind_password"] = f.readline().rstrip("\r\n")
            except OSError as e:
                raise ConfigError(f"[[auth.passdb]] (ldap) bind_password_file: "
                                  f"{settings['bind_password_file']}: cannot read: {e.strerror}") from None
        try:
            schemes.split("{" + settings["default_password_scheme"] + "}x")
            schemes.hash_password(settings["default_password_scheme"], "x")
        except schemes.UnknownScheme as e:
            raise ConfigError(f"[[auth.passdb]] (ldap) default_password_scheme: {e}") from None
        if settings["tls_ca_file"] and not settings["tls_require_cert"]:
            log.warn("ldap: tls_ca_file is set but tls_require_cert = false: certificates are not checked")
        return cls(settings, UsernameRule.from_config(config).normalize)

    # --- connections (blocking; pool threads) -------------------------------------------------------

    def _connect(self, user: str | None, password: str | None):
        """A new open, bound connection to the first server that answers (starting with the one
        that answered last).  Raises AuthUnavailable (nothing answers, or the service bind is
        refused: both are the admin's problem, not the user's)."""
        problems = []
        n = len(self._servers)
        for i in range(n):
            index = (self._preferred + i) % n
            try:
                conn = self._open(self._servers[index], user, password)
            except _Unreachable as e:
                problems.append(f"{self.s['uris'][index]}: {e}")
                continue
            self._preferred = index
            return conn
        raise AuthUnavailable("LDAP server unreachable: " + "; ".join(problems))

    def _open(self, uri: str, user: str | None, password: str | None):
        import ldap3
        from ldap3.core.exceptions import LDAPException
        # A new Server each time: ldap3 remembers an address that failed once and never retries it.
        server = ldap3.Server(uri, use_ssl=uri.startswith("ldaps://"), tls=self._tls, get_info=ldap3.NONE,
                              connect_timeout=self.s["timeout"])
        conn = ldap3.Connection(server, user=user or None, password=password or None,
                                auto_bind=ldap3.AUTO_BIND_NONE, receive_timeout=max(1, math.ceil(self.s["timeout"])),
                                raise_exceptions=False, read_only=True)
        try:
            conn.open()
            if self.s["starttls"] and not server.ssl:
                if not conn.start_tls():
                    raise AuthUnavailable(f"LDAP StartTLS refused: {conn.result.get('description')}")
        except (LDAPException, OSError) as e:
            raise _Unreachable(str(e)) from None
        try:
            bound = conn.bind()
        except (LDAPException, OSError) as e:
            raise _Unreachable(str(e)) from None
        if not bound:
            problem = f"bind as {user or 'anonymous'} refused: {conn.result.get('description')}"
            conn.unbind()
            raise AuthUnavailable("LDAP " + problem)
        return conn

    def _with_connection(self, idle: list, fn):
        """Run ``fn(conn)`` on a pooled search connection; a broken pooled connection is replaced
        and ``fn`` retried once on a fresh one.  Raises AuthUnavailable."""
        from ldap3.core.exceptions import LDAPException
        for attempt in (1, 2):
            with self._lock:
                conn = idle.pop() if idle else None
            fresh = conn is None
            if fresh:
                conn = self._connect(self.s["bind_dn"], self._bind_password)
            try:
                result = fn(conn)
            except LDAPException as e:
                try:
                    conn.unbind()
                except LDAPException:
                    pass
                if fresh or attempt == 2:
                    raise AuthUnavailable(f"LDAP request failed: {e}") from None
                continue
            with self._lock:
                if len(idle) < self.s["pool_size"]:
                    idle.append(conn)
                    conn = None
            if conn is not None:
                conn.unbind()
            return result
        raise AssertionError("unreachable")

    def _search(self, username: str) -> _Entry | None:
        """Blocking.  The user's entry, or None.  Raises AuthUnavailable."""
        from ldap3.core.exceptions import LDAPCommunicationError
        s = self.s
        wanted = [a for a in (s["user_attribute"], s["home_attribute"], s["quota_attribute"],
                              s["enabled_attribute"]) if a]
        if not s["auth_bind"]:
            wanted.append(s["password_attribute"])
        flt = expand_filter(s["user_filter"], username)

        def search(conn):
            ok = conn.search(s["base"], flt, self._scope, attributes=wanted or ["1.1"], size_limit=2,
                             time_limit=int(s["timeout"]) or 1)
            if not ok and conn.result.get("result") not in (0, 4, 32):   # success, sizeLimit, noSuchObject
                if conn.closed or conn.result.get("result") in (51, 52, 80, None):
                    raise LDAPCommunicationError(str(conn.result.get("description")))
                raise AuthUnavailable(f"LDAP search failed: {conn.result.get('description')} "
                                      f"{conn.result.get('message') or ''}".strip())
            return [r for r in (conn.response or []) if r.get("type") == "searchResEntry"]

        entries = self._with_connection(self._idle, search)
        if not entries:
            return None
        if len(entries) > 1:
            log.error("ldap: filter {filter} matches more than one entry: refusing {user}",
                      filter=flt, user=username)
            return None
        raw = entries[0].get("raw_attributes", {})
        attrs = {}
        for name in wanted:
            values = raw.get(name) or next((v for k, v in raw.items() if k.lower() == name.lower()), [])
            if values:
                attrs[name.lower()] = values[0].decode("utf-8", "surrogateescape")
        return _Entry(entries[0]["dn"], attrs)

    def _user_bind(self, dn: str, password: str, measure: bool = True) -> bool:
        """Blocking: does the directory accept ``password`` for ``dn``?  Raises AuthUnavailable."""
        from ldap3.core.exceptions import LDAPCommunicationError
        if not password:
            return False            # an empty password would be an anonymous bind: "success"
        started = time.monotonic()

        def bind(conn):
            if conn.rebind(user=dn, password=password):
                return True
            code = conn.result.get("result")
            if code == 49:           # invalidCredentials
                return False
            if code in (51, 52, 80, None) or conn.closed:
                raise LDAPCommunicationError(str(conn.result.get("description")))
            log.warn("ldap: bind as {dn} refused: {description}", dn=dn,
                     description=conn.result.get("description"))
            return False

        ok = self._with_connection(self._idle_auth, bind)
        if not ok and measure:
            self._bind_seconds = 0.8 * self._bind_seconds + 0.2 * (time.monotonic() - started)
        return ok

    # --- blocking jobs (one pool job per request) -------------------------------------------------

    def _record(self, username: str, entry: _Entry) -> UserRecord:
        s, a = self.s, entry.attrs
        name = username
        if s["user_attribute"] and a.get(s["user_attribute"].lower()):
            name = self._normalize(a[s["user_attribute"].lower()])
        extra = {"dn": entry.dn}
        if s["quota_attribute"] and a.get(s["quota_attribute"].lower()):
            extra["quota_rule"] = a[s["quota_attribute"].lower()]
        if s["enabled_attribute"]:
            value = a.get(s["enabled_attribute"].lower(), "")
            enabled = value.lower() in {v.lower() for v in s["enabled_values"]}
            extra["enabled"] = "yes" if enabled else "no"
        password = ""
        if not s["auth_bind"]:
            password = a.get(s["password_attribute"].lower(), "")
            if password and not password.startswith("{") and not password.startswith("$1$"):
                password = "{" + s["default_password_scheme"] + "}" + password
        home = a.get(s["home_attribute"].lower(), "") if s["home_attribute"] else ""
        return UserRecord(username=name, password=password, home=home, extra=extra)

    def _lookup_blocking(self, username: str) -> UserRecord | None:
        entry = self._search(username)
        return None if entry is None else self._record(username, entry)

    def _verify_blocking(self, username: str, password: str) -> tuple[AuthResult, float]:
        """(result, seconds still to wait so an unknown user costs what a wrong password costs)."""
        started = time.monotonic()
        entry = self._search(username)
        record = None if entry is None else self._record(username, entry)
        if self.s["auth_bind"]:
            if record is None:
                # A bind that cannot succeed, then padding up to a typical failed bind.
                self._user_bind(f"cn={secrets.token_hex(8)},{self.s['base']}", secrets.token_urlsafe(12),
                                measure=False)
                return AuthResult(False, reason="unknown user"), self._bind_seconds - (time.monotonic() - started)
            matched = self._user_bind(entry.dn, password)
        else:
            stored = record.password if record else ""
            try:
                matched = schemes.verify(stored or self._dummy, password) and bool(stored)
            except schemes.SchemeError as e:
                log.error("ldap: user {user}: unusable password hash: {problem}", user=username, problem=str(e))
                return AuthResult(False, reason=f"unusable password hash ({e})"), 0.0
            if record is None:
                return AuthResult(False, reason="unknown user"), 0.0
            if not stored:
                return AuthResult(False, reason=f"no {self.s['password_attribute']} readable"), 0.0
            self._dummy = stored
        if not matched:
            return AuthResult(False, reason="password mismatch"), 0.0
        if record.extra.get("enabled") == "no":
            return AuthResult(False, reason="account disabled in the directory"), 0.0
        return AuthResult(True, username=record.username), 0.0

    # --- PassDB / UserDB -------------------------------------------------------------------------------

    async def _run(self, fn, *args):
        try:
            result = await threads.run(POOL, fn, *args)
        except AuthUnavailable as e:
            if self._down != str(e):
                log.error("ldap: directory unavailable: {problem}", problem=str(e))
            self._down = str(e)
            raise
        if self._down:
            log.info("ldap: directory reachable again")
            self._down = ""
        return result

    async def lookup(self, username: str) -> UserRecord | None:
        """The user's record (password only without auth_bind), or None.  Raises AuthUnavailable."""
        return await self._run(self._lookup_blocking, username)

    async def credentials(self, username: str) -> UserRecord | None:
        record = await self.lookup(username)
        if record is None or record.extra.get("enabled") == "no":
            return None
        return record

    async def verify(self, username: str, password: str) -> AuthResult:
        try:
            result, pad = await self._run(self._verify_blocking, username, password)
        except AuthUnavailable as e:
            return AuthResult(False, temporary=True, reason=str(e))
        if pad > 0:
            from twisted.internet import reactor
            await task.deferLater(reactor, min(pad, 5.0), lambda: None)
        return result
