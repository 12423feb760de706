"""The LDAP passdb against a real directory (Debian's slapd, started by the test): password lookup
and authentication binds, attribute mapping, LDAPS and StartTLS, the directory going away (a
temporary failure in every protocol, never "wrong password"), and unknown-user timing."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import statistics
import time

import pytest
import pytest_twisted

from mailserver import config as configmod
from mailserver.auth import AuthUnavailable, schemes
from mailserver.auth.ldap import LdapPassDB, expand_filter
from mailserver.auth.service import build_authenticator
from tests import slapd as slapd_mod
from tests.harness import RunningServer

pytestmark = pytest.mark.skipif(not slapd_mod.available(), reason="slapd is not installed (scripts/install --test)")

USERS = [
    slapd_mod.person("alice", schemes.hash_password("SSHA", "alicepw"), mail="alice@example.org",
                     home="/home/alice", quota="*:storage=1G"),
    slapd_mod.person("bob", "{CRYPT}" + schemes.hash_password("SHA512-CRYPT", "bobpw").split("}", 1)[1],
                     mail="bob@example.org"),
    slapd_mod.person("carol", "carolpw", mail="carol@example.org"),            # cleartext in the directory
    slapd_mod.person("dave", schemes.hash_password("SSHA", "davepw"), state="disabled"),
    slapd_mod.person("Erin", schemes.hash_password("SSHA", "erinpw"), mail="erin@example.org"),
]


@pytest.fixture(scope="module")
def ca():
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture(scope="module")
def directory(tmp_path_factory, ca):
    base = tmp_path_factory.mktemp("slapd")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = base / "cert.pem", base / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca_path = base / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    d = slapd_mod.Slapd(str(base / "d"), USERS, cert=str(cert_path), key=str(key_path))
    d.ca_path = str(ca_path)
    d.start()
    yield d
    d.stop()


def _settings(directory, **over) -> dict:
    table = {"driver": "ldap", "uris": [directory.uri], "base": slapd_mod.PEOPLE,
             "bind_dn": slapd_mod.READER_DN, "bind_password": slapd_mod.READER_PW,
             "home_attribute": "homeDirectory", "quota_attribute": "description",
             "enabled_attribute": "employeeType", "enabled_values": ["active"], "timeout": 3.0}
    table.update(over)
    return table


def _config(directory, tmp_path, **over):
    return configmod.load(None, {"server": {"state_dir": str(tmp_path)},
                                 "auth": {"passdb": [_settings(directory, **over)], "failure_delay": 0.0}})


def _passdb(directory, tmp_path, **over) -> LdapPassDB:
    cfg = _config(directory, tmp_path, **over)
    return LdapPassDB.from_config(cfg, cfg.auth.passdb[0])


def test_filter_escaping():
    assert expand_filter("(&(uid=%n)(mail=%u)(dc=%d)(x=100%%))", "a*)(uid=*@x.org") == \
        r"(&(uid=a\2a\29\28uid=\2a)(mail=a\2a\29\28uid=\2a@x.org)(dc=x.org)(x=100%))"


@pytest_twisted.ensureDeferred
async def test_password_lookup(directory, tmp_path):
    db = _passdb(directory, tmp_path)
    assert db.supports_credentials
    assert (await db.verify("alice", "alicepw")).ok
    assert (await db.verify("bob", "bobpw")).ok                 # {CRYPT}$6$...
    # no {SCHEME} prefix: default_password_scheme (CRYPT, which "carolpw" is not)
    assert not (await db.verify("carol", "carolpw")).ok
    assert (await _passdb(directory, tmp_path, default_password_scheme="PLAIN").verify("carol", "carolpw")).ok
    wrong = await db.verify("alice", "nope")
    assert not wrong.ok and not wrong.temporary and wrong.reason == "password mismatch"
    unknown = await db.verify("nobody", "x")
    assert not unknown.ok and unknown.reason == "unknown user"
    disabled = await db.verify("dave", "davepw")
    assert not disabled.ok and "disabled" in disabled.reason
    assert not (await db.verify("dave", "wrong")).ok
    record = await db.lookup("alice")
    assert record.home == "/home/alice" and record.extra["quota_rule"] == "*:storage=1G"
    assert record.password.startswith("{SSHA}")
    assert await db.lookup("nobody") is None
    # filter injection does not match anyone
    assert await db.lookup("*") is None and not (await db.verify("al*", "alicepw")).ok


@pytest_twisted.ensureDeferred
async def test_auth_bind(directory, tmp_path):
    # Anonymous search: the password attribute is not readable, the directory checks it.
    db = _passdb(directory, tmp_path, auth_bind=True, bind_dn="", bind_password="")
    assert not db.supports_credentials
    assert (await db.verify("alice", "alicepw")).ok
    assert (await db.verify("carol", "carolpw")).ok
    assert (await db.verify("alice", "nope")).reason == "password mismatch"
    assert (await db.verify("alice", "")).reason == "password mismatch"       # no anonymous "success"
    assert (await db.verify("nobody", "x")).reason == "unknown user"
    assert "disabled" in (await db.verify("dave", "davepw")).reason
    assert (await db.lookup("alice")).password == ""
    # the pooled auth connection is re-bound, not leaked: many logins, few connections
    for _ in range(10):
        assert (await db.verify("alice", "alicepw")).ok
    assert len(db._idle_auth) <= db.s["pool_size"]


@pytest_twisted.ensureDeferred
async def test_user_attribute_and_normalisation(directory, tmp_path):
    cfg = _config(directory, tmp_path, user_filter="(mail=%u)", user_attribute="uid")
    auth = build_authenticator(cfg)
    result = await auth.authenticate("ERIN@example.org", "erinpw", service="imap", peer="127.0.0.1:1")
    assert result.ok and result.username == "erin"          # uid "Erin", normalised by the one rule


@pytest_twisted.ensureDeferred
async def test_ldaps_and_starttls(directory, tmp_path):
    db = _passdb(directory, tmp_path, uris=[directory.ldaps_uri], tls_ca_file=directory.ca_path)
    assert (await db.verify("alice", "alicepw")).ok
    db = _passdb(directory, tmp_path, uris=[f"ldap://localhost:{directory.port}"], starttls=True,
                 tls_ca_file=directory.ca_path)
    assert (await db.verify("alice", "alicepw")).ok
    # an untrusted certificate is a temporary failure (the admin's problem), not a wrong password
    db = _passdb(directory, tmp_path, uris=[directory.ldaps_uri])
    result = await db.verify("alice", "alicepw")
    assert not result.ok and result.temporary


@pytest_twisted.ensureDeferred
async def test_unreachable_and_failover(directory, tmp_path):
    dead = "ldap://127.0.0.1:1"
    db = _passdb(directory, tmp_path, uris=[dead])
    result = await db.verify("alice", "alicepw")
    assert not result.ok and result.temporary
    with pytest.raises(AuthUnavailable):
        await db.lookup("alice")
    db = _passdb(directory, tmp_path, uris=[dead, directory.uri])
    assert (await db.verify("alice", "alicepw")).ok


@pytest_twisted.ensureDeferred
async def test_bad_service_bind_is_temporary(directory, tmp_path):
    db = _passdb(directory, tmp_path, bind_password="wrong")
    result = await db.verify("alice", "alicepw")
    assert not result.ok and result.temporary and "refused" in result.reason


@pytest_twisted.ensureDeferred
async def test_unknown_user_costs_what_a_wrong_password_costs(directory, tmp_path):
    for auth_bind in (False, True):
        db = _passdb(directory, tmp_path, auth_bind=auth_bind, uris=[directory.uri])
        await db.verify("alice", "warmup")
        wrong, unknown = [], []
        for _ in range(8):
            t = time.perf_counter()
            await db.verify("alice", "nope")
            wrong.append(time.perf_counter() - t)
            t = time.perf_counter()
            await db.verify("nobody", "nope")
            unknown.append(time.perf_counter() - t)
        w, u = statistics.median(wrong), statistics.median(unknown)
        # generous: same order of magnitude (a few ms each on loopback)
        assert u > w / 3 and u < w * 3 + 0.005, (auth_bind, w, u)


def test_config_errors(directory, tmp_path):
    with pytest.raises(configmod.ConfigError, match=r"\[\[auth.passdb\]\] #1 \(ldap\) base: required"):
        configmod.load(None, {"auth": {"passdb": [{"driver": "ldap"}]}})
    with pytest.raises(configmod.ConfigError, match="must start with ldap://"):
        configmod.load(None, {"auth": {"passdb": [{"driver": "ldap", "base": "o=x", "uris": ["http://x"]}]}})
    with pytest.raises(configmod.ConfigError, match="unknown key"):
        configmod.load(None, {"auth": {"passdb": [{"driver": "ldap", "base": "o=x", "filter": "x"}]}})
    with pytest.raises(configmod.ConfigError, match="no mailserver.passdbs plugin named 'nis'"):
        configmod.load(None, {"auth": {"passdb": [{"driver": "nis"}]}})
    with pytest.raises(configmod.ConfigError, match="CRAM-MD5: needs a passdb"):
        build_authenticator(configmod.load(None, {"auth": {
            "passdb": [_settings(directory, auth_bind=True)], "mechanisms": ["PLAIN", "CRAM-MD5"]}}))


# --- through the server ------------------------------------------------------------------------------

@pytest.fixture
def ldap_server(directory, tmp_path):
    passdb = "\n".join(f"{k} = {_toml(v)}" for k, v in _settings(directory).items())
    server = RunningServer(str(tmp_path), users=0, extra_config=f"[[auth.passdb]]\n{passdb}\n")
    server.start()
    yield server
    server.stop()


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def test_directory_down_is_a_temporary_failure_everywhere(directory, ldap_server):
    s = ldap_server
    imap = imaplib.IMAP4(s.host, s.imap_port)
    imap.login("alice", "alicepw")
    imap.logout()
    with smtplib.LMTP(s.host, s.lmtp_port) as lmtp:
        lmtp.ehlo("mx.test")
        lmtp.mail("<a@b>")
        assert lmtp.rcpt("<alice>")[0] == 250
        assert lmtp.rcpt("<nobody>")[0] == 550
    directory.stop()
    try:
        imap = imaplib.IMAP4(s.host, s.imap_port)
        typ, data = imap._simple_command("LOGIN", "alice", "alicepw")
        assert typ == "NO" and b"[UNAVAILABLE]" in data[0], data
        imap.logout()
        pop = poplib.POP3(s.host, s.pop3_port)
        pop.user("alice")
        with pytest.raises(poplib.error_proto) as e:
            pop.pass_("alicepw")
        assert e.value.args[0].startswith(b"-ERR [SYS/TEMP]")
        pop.quit()
        with smtplib.LMTP(s.host, s.lmtp_port) as lmtp:
            lmtp.ehlo("mx.test")
            lmtp.mail("<a@b>")
            code, text = lmtp.rcpt("<alice>")
            assert code == 451 and text.startswith(b"4.3.0"), (code, text)
        assert "directory unavailable" in s.log_text()
    finally:
        directory.start()
    imap = imaplib.IMAP4(s.host, s.imap_port)
    imap.login("alice", "alicepw")          # back without a restart
    imap.logout()


@pytest_twisted.ensureDeferred
async def test_ldap_as_userdb(directory, tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:{PLAIN}filepw\n")
    userdb = _settings(directory)
    cfg = configmod.load(None, {"server": {"state_dir": str(tmp_path)},
                                "auth": {"passwd_file": str(passwd), "userdb": [userdb]}})
    auth = build_authenticator(cfg)
    record = await auth.lookup("alice")                  # fields from the directory
    assert record.home == "/home/alice" and record.extra["quota_rule"] == "*:storage=1G"
    assert await auth.lookup("nobody") is None
    assert (await auth.authenticate("alice", "filepw", service="imap", peer="127.0.0.1:1")).ok
