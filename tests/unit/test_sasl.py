"""SASL mechanisms against the real authenticator (passwd-file), with the RFC examples: RFC 4616
(PLAIN), RFC 2195 (CRAM-MD5), RFC 5802 (SCRAM-SHA-1), RFC 7677 (SCRAM-SHA-256), RFC 7628
(OAUTHBEARER, against a small introspection endpoint started by the test); and master users."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading

import pytest
import pytest_twisted

from mailserver import config as configmod
from mailserver.auth import sasl, schemes
from mailserver.auth.service import build_authenticator


def _scram_field(name: str, password: str, salt_b64: str) -> str:
    keys = schemes.scram_keys({"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}[name], password.encode(),
                              base64.b64decode(salt_b64), 4096)
    b64 = [base64.b64encode(x).decode() for x in (keys.salt, keys.stored_key, keys.server_key)]
    return "{%s}4096,%s,%s,%s" % (name, *b64)


def make_auth(tmp_path, lines: list[str], **auth):
    passwd = tmp_path / "passwd"
    passwd.write_text("".join(line + "\n" for line in lines))
    section = {"passwd_file": str(passwd), "failure_delay": 0.0,
               "penalty_exempt_networks": ["127.0.0.0/8"],      # these tests fail on purpose, often
               "mechanisms": ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"]}
    section.update(auth)
    return build_authenticator(configmod.load(None, {"server": {"state_dir": str(tmp_path)}, "auth": section}))


@pytest.fixture
def auth(tmp_path):
    return make_auth(tmp_path, [
        "tim:{PLAIN}tanstaaftanstaaf",
        "cram:" + schemes.hash_password("CRAM-MD5", "crampw"),
        "hashed:" + schemes.hash_password("SHA512-CRYPT", "hashedpw"),
        "scram256:" + schemes.hash_password("SCRAM-SHA-256", "scrampw"),
        "kurt:{PLAIN}xipj3plmq",
    ])


def start(auth, name, peer="127.0.0.1:4000"):
    mech = sasl.start(name, auth, service="imap", peer=peer)
    assert mech is not None, name
    return mech


# --- PLAIN and LOGIN ---------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_plain_rfc4616(auth):
    step = await start(auth, "PLAIN").step(b"\0tim\0tanstaaftanstaaf")
    assert step.result.ok and step.result.username == "tim"
    # "Kurt" acting as "Ursel": an authorization identity needs a master passdb
    step = await start(auth, "PLAIN").step(b"Ursel\0Kurt\0xipj3plmq")
    assert not step.result.ok
    step = await start(auth, "PLAIN").step(b"tim\0tim\0tanstaaftanstaaf")     # own authzid is fine
    assert step.result.ok
    mech = start(auth, "plain")
    assert (await mech.step(None)).challenge == b""                          # no initial response
    assert (await mech.step(b"\0tim\0wrong")).result.ok is False
    assert not (await start(auth, "PLAIN").step(b"\0tim")).result.ok         # malformed


@pytest_twisted.ensureDeferred
async def test_login(auth):
    mech = start(auth, "LOGIN")
    assert (await mech.step(None)).challenge == b"Username:"
    assert (await mech.step(b"tim")).challenge == b"Password:"
    assert (await mech.step(b"tanstaaftanstaaf")).result.ok
    mech = start(auth, "LOGIN")
    assert (await mech.step(b"tim")).challenge == b"Password:"              # initial response: the user
    assert not (await mech.step(b"nope")).result.ok


# --- CRAM-MD5 ---------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_cram_md5_rfc2195(auth):
    mech = start(auth, "CRAM-MD5")
    challenge = (await mech.step(None)).challenge
    assert challenge.startswith(b"<") and challenge.endswith(b">")
    mech._challenge = b"<1896.697170952@postoffice.reston.mci.net>"      # the RFC's example
    step = await mech.step(b"tim b913a602c7eda7a495b4e6e7334d3890")
    assert step.result.ok and step.result.username == "tim"


@pytest_twisted.ensureDeferred
async def test_cram_md5_stored_schemes(auth):
    async def attempt(user, password):
        mech = start(auth, "CRAM-MD5")
        challenge = (await mech.step(b"")).challenge
        digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
        return (await mech.step(f"{user} {digest}".encode())).result

    assert (await attempt("cram", "crampw")).ok                  # {CRAM-MD5} context, Dovecot's format
    assert not (await attempt("cram", "wrong")).ok
    bad = await attempt("hashed", "hashedpw")                    # SHA512-CRYPT cannot serve CRAM-MD5
    assert not bad.ok and "cannot serve CRAM-MD5" in bad.reason
    assert not (await attempt("nobody", "x")).ok
    assert not (await start(auth, "CRAM-MD5").step(b"tim 00")).result.ok     # initial response refused


# --- SCRAM ------------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_scram_sha1_rfc5802(tmp_path, monkeypatch):
    auth = make_auth(tmp_path, ["user:" + _scram_field("SCRAM-SHA-1", "pencil", "QSXCR+Q6sek8bf92")])
    monkeypatch.setattr(sasl.Scram, "fixed_server_nonce", "3rfcNHYJY1ZVvWVs7j")
    mech = start(auth, "SCRAM-SHA-1")
    first = await mech.step(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
    assert first.challenge == b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    final = await mech.step(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
    assert final.challenge == b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="
    done = await mech.step(b"")
    assert done.result.ok and done.result.username == "user"


@pytest_twisted.ensureDeferred
async def test_scram_sha256_rfc7677(tmp_path, monkeypatch):
    auth = make_auth(tmp_path, ["user:" + _scram_field("SCRAM-SHA-256", "pencil", "W22ZaJ0SNY7soEsUEjb6gQ==")])
    monkeypatch.setattr(sasl.Scram, "fixed_server_nonce", "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    mech = start(auth, "SCRAM-SHA-256")
    first = await mech.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert first.challenge == (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                               b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    final = await mech.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                            b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert final.challenge == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert (await mech.step(b"")).result.ok


async def _scram_client(auth, name, user, password):
    import scramp
    client = scramp.ScramClient([name], user, password)
    mech = start(auth, name)
    first = await mech.step(client.get_client_first().encode())
    if first.result is not None:
        return first.result, None
    client.set_server_first(first.challenge.decode())
    final = await mech.step(client.get_client_final().encode())
    if final.result is not None:
        return final.result, first.challenge
    client.set_server_final(final.challenge.decode())           # checks the server's signature
    return (await mech.step(b"")).result, first.challenge


@pytest_twisted.ensureDeferred
async def test_scram_with_plaintext_and_stored_keys(auth):
    assert (await _scram_client(auth, "SCRAM-SHA-1", "tim", "tanstaaftanstaaf"))[0].ok
    assert (await _scram_client(auth, "SCRAM-SHA-256", "tim", "tanstaaftanstaaf"))[0].ok
    assert (await _scram_client(auth, "SCRAM-SHA-256", "scram256", "scrampw"))[0].ok
    assert not (await _scram_client(auth, "SCRAM-SHA-256", "scram256", "wrong"))[0].ok
    # SHA-256 keys cannot serve SCRAM-SHA-1; a bcrypt/sha-crypt user cannot use SCRAM at all
    result, _ = await _scram_client(auth, "SCRAM-SHA-1", "scram256", "scrampw")
    assert not result.ok and "cannot serve" in result.reason
    # an unknown user gets a salt like anyone else, the same one each time
    r1, first1 = await _scram_client(auth, "SCRAM-SHA-256", "nobody", "x")
    r2, first2 = await _scram_client(auth, "SCRAM-SHA-256", "nobody", "x")
    assert not r1.ok and not r2.ok
    salt = [f.split(b",")[1] for f in (first1, first2)]
    assert salt[0] == salt[1] and salt[0].startswith(b"s=")


@pytest_twisted.ensureDeferred
async def test_scram_malformed(auth):
    assert not (await start(auth, "SCRAM-SHA-256").step(b"garbage")).result.ok
    assert not (await start(auth, "SCRAM-SHA-256").step(b"p=tls-unique,,n=tim,r=abc")).result.ok
    mech = start(auth, "SCRAM-SHA-256")
    await mech.step(b"n,,n=tim,r=abcdefgh")
    assert not (await mech.step(b"c=biws,r=wrongnonce,p=AAAA")).result.ok


# --- advertising ----------------------------------------------------------------------------------------

def test_mechanisms_offered(auth):
    assert auth.mechanisms(True) == ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"]
    assert auth.mechanisms(False) == ["CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"]
    assert sasl.start("PLAIN", auth, service="imap", peer="x", plaintext_ok=False) is None
    assert sasl.start("XOAUTH2", auth, service="imap", peer="x") is None        # not configured


def test_unusable_mechanisms_are_config_errors(tmp_path):
    with pytest.raises(configmod.ConfigError, match="OAUTHBEARER: needs \\[auth.oauth2\\]"):
        make_auth(tmp_path, [], mechanisms=["PLAIN", "OAUTHBEARER"])
    with pytest.raises(configmod.ConfigError, match="unknown SASL mechanism"):
        make_auth(tmp_path, [], mechanisms=["DIGEST-MD5"])


# --- master users ---------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_master_users(tmp_path):
    masters = tmp_path / "masters"
    masters.write_text("admin:{PLAIN}adminpw\n")
    auth = make_auth(tmp_path, ["tim:{PLAIN}timpw"], master_user_separator="*",
                     passdb=[{"driver": "passwd-file", "path": str(masters), "master": True}])
    ok = await auth.authenticate("tim*admin", "adminpw", service="imap", peer="127.0.0.1:1")
    assert ok.ok and ok.username == "tim"
    assert not (await auth.authenticate("tim*admin", "timpw", service="imap", peer="127.0.0.1:1")).ok
    assert not (await auth.authenticate("nobody*admin", "adminpw", service="imap", peer="127.0.0.1:1")).ok
    assert not (await auth.authenticate("admin", "adminpw", service="imap", peer="127.0.0.1:1")).ok
    # SASL PLAIN: authcid admin, authzid tim
    step = await start(auth, "PLAIN").step(b"tim\0admin\0adminpw")
    assert step.result.ok and step.result.username == "tim"
    # a user who is not a master cannot act as another
    assert not (await start(auth, "PLAIN").step(b"admin\0tim\0timpw")).result.ok


def test_master_needs_separator(tmp_path):
    with pytest.raises(configmod.ConfigError, match="master_user_separator: required"):
        configmod.load(None, {"auth": {"passdb": [{"driver": "passwd-file", "path": "/x", "master": True}]}})


@pytest_twisted.ensureDeferred
async def test_static_userdb(tmp_path):
    auth = make_auth(tmp_path, ["tim:{PLAIN}timpw"],
                     userdb=[{"driver": "static", "home": "/srv/mail/%u", "quota_rule": "*:storage=2G"}])
    record = await auth.lookup("Tim")
    assert record.home == "/srv/mail/tim" and record.extra["quota_rule"] == "*:storage=2G"
    assert await auth.lookup("nobody") is None                      # checked against the passdb
    everyone = make_auth(tmp_path, [], userdb=[{"driver": "static", "allow_all_users": True}])
    assert (await everyone.lookup("anyone")).username == "anyone"


# --- OAUTHBEARER / XOAUTH2 ------------------------------------------------------------------------------

class _Introspection(http.server.BaseHTTPRequestHandler):
    tokens = {"good-token": "tim", "kurts-token": "kurt", "stranger": "nobody"}
    seen: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        fields = dict(p.split("=", 1) for p in body.split("&"))
        type(self).seen.append((self.headers.get("Authorization"), fields))
        user = self.tokens.get(fields.get("token"))
        answer = {"active": True, "username": user} if user else {"active": False}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def introspection():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Introspection)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/introspect"
    server.shutdown()
    server.server_close()


@pytest_twisted.ensureDeferred
async def test_oauthbearer_rfc7628(tmp_path, introspection):
    auth = make_auth(tmp_path, ["tim:{PLAIN}timpw", "kurt:{PLAIN}x"],
                     mechanisms=["PLAIN", "OAUTHBEARER", "XOAUTH2"],
                     oauth2={"introspection_url": introspection, "client_id": "mail", "client_secret": "s3cret"})
    good = b"n,a=tim,\x01host=server.example.com\x01port=143\x01auth=Bearer good-token\x01\x01"
    step = await start(auth, "OAUTHBEARER").step(good)
    assert step.result.ok and step.result.username == "tim"
    basic = "Basic " + base64.b64encode(b"mail:s3cret").decode()
    assert _Introspection.seen[-1] == (basic, {"token": "good-token", "token_type_hint": "access_token"})
    # no authzid: the token's user
    step = await start(auth, "OAUTHBEARER").step(b"n,,\x01auth=Bearer kurts-token\x01\x01")
    assert step.result.ok and step.result.username == "kurt"
    # another user's token, an inactive token, a token for nobody known: error challenge, then NO
    for message in (b"n,a=tim,\x01auth=Bearer kurts-token\x01\x01", b"n,a=tim,\x01auth=Bearer bad\x01\x01",
                    b"n,,\x01auth=Bearer stranger\x01\x01"):
        mech = start(auth, "OAUTHBEARER")
        step = await mech.step(message)
        assert json.loads(step.challenge)["status"] == "invalid_token"
        assert not (await mech.step(b"\x01")).result.ok
    assert not (await start(auth, "OAUTHBEARER").step(b"n,a=tim,auth=Bearer x")).result.ok   # malformed
    step = await start(auth, "XOAUTH2").step(b"user=tim\x01auth=Bearer good-token\x01\x01")
    assert step.result.ok
    mech = start(auth, "XOAUTH2")
    assert (await mech.step(b"user=tim\x01auth=Bearer bad\x01\x01")).challenge
    assert not (await mech.step(b"")).result.ok


@pytest_twisted.ensureDeferred
async def test_oauth_endpoint_down_is_temporary(tmp_path):
    auth = make_auth(tmp_path, ["tim:{PLAIN}timpw"], mechanisms=["OAUTHBEARER"],
                     oauth2={"introspection_url": "http://127.0.0.1:1/introspect", "timeout": 2.0})
    step = await start(auth, "OAUTHBEARER").step(b"n,a=tim,\x01auth=Bearer good-token\x01\x01")
    assert not step.result.ok and step.result.temporary
