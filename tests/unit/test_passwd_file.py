"""passwd-file parsing, reloading and the Authenticator over it."""

import os
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from mailserver import config as config_mod
from mailserver.auth import AuthUnavailable, schemes
from mailserver.auth.passwd_file import PasswdFilePassDB, parse, parse_extra_fields
from mailserver.auth.service import PassdbAuthenticator, UsernameRule, build_authenticator

SAMPLE = """\
# a comment

alice:{PLAIN}secret:1000:1000:Alice A:/home/alice:/bin/false:userdb_quota_rule=*:storage=1G nologin_x=1 flag
Bob:{SHA256}NHgme1YSeRtAmIkGs6eJfrarUB4EuV7TL5nQr99mnZw=
carol:QwJUFcDYHo5ck::
dave
erin:{PLAIN}x:::::
:nouser:1
frank:password[34]
gina:QwJUFcDYHo5ck[13]
alice:{PLAIN}second
"""


def test_parse_fields():
    parsed = parse(SAMPLE, str.lower, "users")
    users = parsed.users
    assert sorted(users) == ["alice", "bob", "carol", "dave", "erin", "frank", "gina"]
    a = users["alice"]
    assert (a.password, a.uid, a.gid, a.gecos, a.home, a.shell) == (
        "{PLAIN}secret", "1000", "1000", "Alice A", "/home/alice", "/bin/false")
    # extra fields may contain ':'; userdb_ prefix kept; bare key means "y"
    assert a.extra == {"userdb_quota_rule": "*:storage=1G", "nologin_x": "1", "flag": "y"}
    assert users["bob"].username == "bob"            # normalised with the server's rule
    assert users["carol"].uid == "" and users["carol"].home == ""
    assert users["dave"].password == ""
    assert users["erin"].extra == {}
    assert users["frank"].password == "{PLAIN-MD5}password"
    assert users["gina"].password == "{CRYPT}QwJUFcDYHo5ck"
    assert any("alice exists more than once" in p for p in parsed.problems)
    assert parsed.dummy_hash == "{PLAIN}secret"       # most common scheme, a real hash


def test_extra_fields():
    assert parse_extra_fields("  a=1  b c=x=y ") == {"a": "1", "b": "y", "c": "x=y"}


def test_username_rule():
    rule = UsernameRule("lower", "abcdefghijklmnopqrstuvwxyz0123456789.-_@")
    assert rule.normalize("Alice@Example.COM") == "alice@example.com"
    assert rule.problem("alice@example.com") is None
    assert rule.problem("../etc") is not None
    assert rule.problem("") is not None
    assert rule.problem("a" * 300) is not None
    assert UsernameRule("keep").normalize("Alice") == "Alice"
    assert UsernameRule("lower", strip_domain=True).normalize("Alice@x.org") == "alice"
    assert UsernameRule("keep").problem("a/b") is not None


@pytest.fixture
def users_file(tmp_path):
    path = tmp_path / "users"
    path.write_text(
        "alice:" + schemes.hash_password("SHA512-CRYPT", "alicepw") + "\n"
        "bob:" + schemes.hash_password("SHA512-CRYPT", "bobpw") + "\n"
        "nopw:::::::nopassword\n"
        "blocked:{PLAIN}pw::::::nologin\n"
        "broken:{SHA256}!!!\n"
        "weird:{NOPE}x\n")
    return path


@pytest_twisted.ensureDeferred
async def test_verify(users_file):
    db = PasswdFilePassDB(str(users_file))
    assert (await db.verify("alice", "alicepw")).ok
    assert (await db.verify("alice", "alicepw")).username == "alice"
    wrong = await db.verify("alice", "bobpw")
    assert not wrong.ok and not wrong.temporary and wrong.reason == "password mismatch"
    unknown = await db.verify("zed", "x")
    assert not unknown.ok and unknown.reason == "unknown user"
    assert (await db.verify("nopw", "anything")).ok
    assert not (await db.verify("blocked", "pw")).ok
    broken = await db.verify("broken", "x")
    assert not broken.ok and "unusable password hash" in broken.reason
    assert not (await db.verify("weird", "x")).ok
    rec = await db.lookup("bob")
    assert rec.username == "bob"
    assert await db.lookup("zed") is None


@pytest_twisted.ensureDeferred
async def test_unknown_user_costs_like_a_wrong_password(users_file):
    db = PasswdFilePassDB(str(users_file))
    await db.verify("alice", "warmup")

    async def timed(user):
        t = time.perf_counter()
        for _ in range(5):
            await db.verify(user, "nope")
        return time.perf_counter() - t

    wrong, unknown = await timed("alice"), await timed("nobody")
    # both run one SHA512-CRYPT verification; a lookup-only answer would be ~100x faster
    assert unknown > wrong * 0.4, (wrong, unknown)


@pytest_twisted.ensureDeferred
async def test_reload_on_change(users_file):
    now = [0.0]
    db = PasswdFilePassDB(str(users_file), clock=lambda: now[0])
    assert await db.lookup("carl") is None
    # atomic replace (new inode), same second
    tmp = users_file.with_suffix(".new")
    tmp.write_text("carl:{PLAIN}c\n")
    os.replace(tmp, users_file)
    assert await db.lookup("carl") is None            # checked less than a second ago
    now[0] += 1.5
    assert (await db.lookup("carl")).password == "{PLAIN}c"
    assert await db.lookup("alice") is None
    # in-place rewrite, different size
    users_file.write_text("carl:{PLAIN}c2\nalice:{PLAIN}a\n")
    now[0] += 1.5
    assert (await db.lookup("carl")).password == "{PLAIN}c2"
    assert (await db.verify("alice", "a")).ok


@pytest_twisted.ensureDeferred
async def test_missing_file_is_unavailable(tmp_path):
    now = [0.0]
    db = PasswdFilePassDB(str(tmp_path / "absent"), clock=lambda: now[0])
    with pytest.raises(AuthUnavailable):
        await db.lookup("alice")
    result = await db.verify("alice", "x")
    assert not result.ok and result.temporary
    (tmp_path / "absent").write_text("alice:{PLAIN}x\n")
    now[0] += 2
    assert (await db.verify("alice", "x")).ok


@pytest_twisted.ensureDeferred
async def test_concurrent_lookups_share_one_read(users_file):
    db = PasswdFilePassDB(str(users_file))
    results = await defer.gatherResults([defer.Deferred.fromCoroutine(db.lookup(u))
                                         for u in ("alice", "bob", "zed")])
    assert [r and r.username for r in results] == ["alice", "bob", None]


def _config(users_file, **auth):
    return config_mod.load(None, {"auth": {"passwd_file": str(users_file), **auth},
                                  "server": {"state_dir": "/tmp"}})


@pytest_twisted.ensureDeferred
async def test_authenticator(users_file):
    clock = task.Clock()
    auth = build_authenticator(_config(users_file, failure_delay=0.0))
    assert auth.normalize("ALICE") == "alice"
    ok = await auth.authenticate("ALICE", "alicepw", service="imap", peer="127.0.0.1:1", mechanism="PLAIN")
    assert ok.ok and ok.username == "alice"
    bad = await auth.authenticate("alice", "x", service="imap", peer="p")
    assert not bad.ok and bad.username == ""
    assert not (await auth.authenticate("../alice", "alicepw", service="pop3", peer="p")).ok
    assert not (await auth.authenticate("alice", "x" * 5000, service="pop3", peer="p")).ok
    assert (await auth.lookup("Bob")).username == "bob"
    assert await auth.lookup("bo/b") is None

    # the failure delay runs on the reactor's clock, without blocking
    delayed = PassdbAuthenticator(auth.passdb, auth.rule, failure_delay=2.0, clock=clock)
    d = defer.Deferred.fromCoroutine(delayed.authenticate("alice", "x", service="imap", peer="p"))
    while not clock.getDelayedCalls():
        await task.deferLater(reactor, 0.01, lambda: None)     # the verification runs in a thread
    assert not d.called
    clock.advance(2.0)
    result = await d
    assert not result.ok


def test_config_requires_passwd_file():
    with pytest.raises(config_mod.ConfigError):
        build_authenticator(config_mod.load(None, {"server": {"state_dir": "/tmp"}}))


def test_config_refuses_unreadable_file(tmp_path):
    with pytest.raises(config_mod.ConfigError, match="cannot read"):
        build_authenticator(_config(tmp_path / "missing"))
