"""Dovecot's passwd-file as a passdb.

Format, one user a line (``#`` comments and blank lines ignored)::

    user:{SCHEME}hash:uid:gid:gecos:home:shell:extra_fields

Only ``user`` and the password are needed; missing trailing fields are empty.  ``extra_fields`` is
everything after the seventh ``:`` (it may itself contain ``:``), a space-separated list of
``key=value`` (a bare ``key`` means ``key=y``); ``userdb_`` prefixes are kept as written.
A password without ``{SCHEME}`` is CRYPT; libpam-pwdfile's ``hash[13]`` is CRYPT and
``hash[34]`` PLAIN-MD5, as Dovecot reads them.  Usernames are normalised with the server's one
rule (``[auth] username_case`` ...) so the file's ``Alice`` is the login ``alice``.

The file is re-read when its mtime, size or inode changes, checked at most once a second.
Reading, parsing and every password verification run in the bounded ``auth`` thread pool.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import secrets
import time
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailserver import threads
from mailserver.auth import AuthResult, AuthUnavailable, PassDB, UserDB, UserRecord, schemes
from mailserver.config import Key, absolute_path, usable_cpus

log = Logger(namespace="mailserver.auth.passwd_file")

POOL = "auth"
CHECK_INTERVAL = 1.0        # seconds between stat() calls on the file
_TRUE = ("", "y", "yes", "1", "true")


@dataclasses.dataclass(frozen=True)
class ParsedFile:
    """The users of one version of the file, what was wrong with it, and the hash an unknown
    user is checked against (a real one, of the most common scheme, so both cost the same)."""

    users: dict
    problems: list
    dummy_hash: str
    stamp: tuple


def parse_extra_fields(text: str) -> dict:
    """``key=value key2 ...`` into a dict (``key`` alone: ``"y"``, as Dovecot's bare flags)."""
    fields = {}
    for item in text.split(" "):
        if not item:
            continue
        key, sep, value = item.partition("=")
        fields[key] = value if sep else "y"
    return fields


def _password_field(pw: str | None) -> str:
    """The stored password with libpam-pwdfile's ``[13]``/``[34]`` suffixes made schemes."""
    if pw is None:
        return ""
    if len(pw) > 4 and pw[0] not in "{$" and pw[-1] == "]" and pw[-4] == "[":
        kind, pw = pw[-3:-1], pw[:-4]
        return ("{PLAIN-MD5}" if kind == "34" else "{CRYPT}") + pw
    return pw


def parse(text: str, normalize: Callable[[str], str] = lambda u: u, path: str = "passwd-file",
          stamp: tuple = ()) -> ParsedFile:
    """Parse a passwd-file's text.  Bad lines are skipped and described in ``problems``."""
    users: dict[str, UserRecord] = {}
    problems: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line or line[0] in "#:":
            continue
        fields = line.split(":")
        username = normalize(fields[0])
        if not username.strip():
            problems.append(f"{path}:{lineno}: empty username")
            continue
        if username in users:
            problems.append(f"{path}:{lineno}: user {username} exists more than once (first kept)")
            continue
        rest = fields[2:] + [""] * max(0, 7 - len(fields))
        extra = ":".join(fields[7:]) if len(fields) > 7 else ""
        users[username] = UserRecord(
            username=username,
            password=_password_field(fields[1] if len(fields) > 1 else None),
            uid=rest[0], gid=rest[1], gecos=rest[2], home=rest[3], shell=rest[4],
            extra=parse_extra_fields(extra))
    return ParsedFile(users, problems, _pick_dummy(users), stamp)


def _pick_dummy(users: dict) -> str:
    """A stored hash of the most common scheme in the file (checking a random password against
    it costs what a wrong password of a real user costs)."""
    by_scheme: dict[str, str] = {}
    counts: collections.Counter = collections.Counter()
    for record in users.values():
        if not record.password:
            continue
        scheme = schemes.scheme_of(record.password)
        counts[scheme] += 1
        by_scheme.setdefault(scheme, record.password)
    if counts:
        return by_scheme[counts.most_common(1)[0][0]]
    return ""


def _stamp(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def load(path: str, normalize: Callable[[str], str], previous: ParsedFile | None) -> ParsedFile:
    """Blocking: stat the file; read and parse it if it changed.  Raises OSError."""
    st = os.stat(path)
    if previous is not None and previous.stamp == _stamp(st):
        return previous
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read()
    return parse(data.decode("utf-8", "surrogateescape"), normalize, path, _stamp(st))


def _verify_blocking(stored: str, password: str) -> tuple[bool, str]:
    """(matched, problem) -- runs in the pool; a bad hash is a problem for the log, not a match."""
    try:
        return schemes.verify(stored, password), ""
    except schemes.SchemeError as e:
        return False, str(e)


class PasswdFilePassDB(PassDB, UserDB):
    """Users and password hashes from a Dovecot passwd-file (entry point ``passwd-file`` in
    ``mailserver.passdbs`` and ``mailserver.userdbs``)."""

    SETTINGS = {"path": Key(str, "", absolute_path, "The passwd-file.", required=True)}
    supports_credentials = True

    def __init__(self, path: str, normalize: Callable[[str], str] = lambda u: u, *,
                 pool_size: int = 4, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self._normalize = normalize
        self._clock = clock
        self._parsed: ParsedFile | None = None
        self._checked_at = float("-inf")
        self._waiters: list[defer.Deferred] = []
        self._failed = ""               # why the last check failed ("" when it did not)
        threads.pool(POOL, pool_size)
        # Checked against when no user hash exists at all (an empty file).
        self._fallback_dummy = schemes.hash_password("SHA512-CRYPT", secrets.token_urlsafe(16))

    @classmethod
    def from_config(cls, config, settings) -> "PasswdFilePassDB":
        from mailserver.auth.service import UsernameRule
        from mailserver.config import ConfigError
        path = settings["path"]
        # As Dovecot, refuse to start on a file that cannot be read (a typo would otherwise only
        # show at the first login).  Later read failures answer "temporarily unavailable".
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise ConfigError(f"passwd-file {path}: cannot read: {e.strerror}") from None
        return cls(path, UsernameRule.from_config(config).normalize,
                   # Verifying a hash is CPU work that releases the GIL: a thread per CPU.
                   pool_size=min(usable_cpus(), 4))

    # --- the file ---------------------------------------------------------------------------------

    async def _current(self) -> ParsedFile:
        """The users as of at most a second ago.  Raises AuthUnavailable."""
        now = self._clock()
        if now - self._checked_at < CHECK_INTERVAL:
            if self._failed:
                raise AuthUnavailable(f"passwd-file {self.path}: {self._failed}")
            if self._parsed is not None:
                return self._parsed
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        if len(self._waiters) == 1:      # one check in flight, shared by every caller
            threads.run(POOL, load, self.path, self._normalize, self._parsed).addBoth(self._checked, now)
        return await d

    def _checked(self, result, started: float) -> None:
        waiters, self._waiters = self._waiters, []
        self._checked_at = started
        if isinstance(result, Failure):
            problem = result.getErrorMessage()
            if self._failed != problem:
                log.error("passwd-file {path}: cannot read: {problem}", path=self.path, problem=problem)
            self._failed = problem
            for d in waiters:
                d.errback(AuthUnavailable(f"passwd-file {self.path}: {problem}"))
            return
        if result is not self._parsed:
            for problem in result.problems:
                log.warn("passwd-file {problem}", problem=problem)
            log.info("passwd-file {path}: {count} users loaded", path=self.path, count=len(result.users))
        self._failed = ""
        self._parsed = result
        for d in waiters:
            d.callback(result)

    # --- PassDB -------------------------------------------------------------------------------------

    async def lookup(self, username: str) -> UserRecord | None:
        """The record of a normalised username, or None.  Raises AuthUnavailable."""
        return (await self._current()).users.get(username)

    async def credentials(self, username: str) -> UserRecord | None:
        """The record for CRAM-MD5/SCRAM, None for an unknown or ``nologin`` user; a
        ``nopassword`` user's record has no password (such a user cannot use those mechanisms)."""
        record = (await self._current()).users.get(username)
        if record is None or "nologin" in record.extra:
            return None
        if "nopassword" in record.extra:
            return dataclasses.replace(record, password="")
        return record

    async def verify(self, username: str, password: str) -> AuthResult:
        """Check a password in the pool.  An unknown user is checked against a dummy hash so the
        answer takes as long as for a wrong password."""
        try:
            parsed = await self._current()
        except AuthUnavailable as e:
            return AuthResult(False, temporary=True, reason=str(e))
        record = parsed.users.get(username)
        if record is None:
            dummy = parsed.dummy_hash or self._fallback_dummy
            await threads.run(POOL, _verify_blocking, dummy, secrets.token_urlsafe(24))
            return AuthResult(False, reason="unknown user")
        extra = record.extra
        if "nopassword" in extra and extra["nopassword"].lower() in _TRUE:
            matched, problem = True, ""
        elif not record.password:
            matched, problem = False, "user has no password (and no nopassword field)"
        else:
            matched, problem = await threads.run(POOL, _verify_blocking, record.password, password)
        if problem:
            log.error("passwd-file {path}: user {user}: unusable password hash: {problem}",
                      path=self.path, user=username, problem=problem)
            return AuthResult(False, reason=f"unusable password hash ({problem})")
        if not matched:
            return AuthResult(False, reason="password mismatch")
        if "nologin" in extra:
            return AuthResult(False, reason="nologin field set")
        return AuthResult(True, username=username)
