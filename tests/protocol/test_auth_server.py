"""Authentication through the server over sockets: SASL in IMAP AUTHENTICATE and POP3 AUTH
(CRAM-MD5, SCRAM, cancellation, malformed base64), master logins, the failure log line, the
brute-force penalty (timed, with generous bounds) and connection limits.  Servers of their own:
the penalty must not slow down the rest of the suite."""

from __future__ import annotations

import base64
import hashlib
import hmac
import imaplib
import json
import poplib
import socket
import time

import pytest

from tests.authtls_support import ConfiguredServer

MECHS = ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"]


@pytest.fixture(scope="module")
def sasl_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("sasl")
    masters = base / "masters"
    masters.write_text("admin:{PLAIN}adminpw\n")
    server = ConfiguredServer(str(base), {"auth": {
        "mechanisms": MECHS, "penalty_exempt_networks": ["127.0.0.0/8"], "master_user_separator": "*",
        "passdb": [{"driver": "passwd-file", "path": str(masters), "master": True}]}})
    server.start()
    yield server
    server.stop()


def _user(n: int):
    return f"user{n:04d}@example.org", f"pw-{n:04d}"


def _scram_callback(user, password, name="SCRAM-SHA-256"):
    import scramp
    client = scramp.ScramClient([name], user, password)
    state = {"n": 0}

    def answer(challenge: bytes):
        state["n"] += 1
        if state["n"] == 1:
            return client.get_client_first().encode()
        if state["n"] == 2:
            client.set_server_first(challenge.decode())
            return client.get_client_final().encode()
        client.set_server_final(challenge.decode())       # verifies the server knew the key
        return b""
    return answer


def test_imap_capabilities_list_the_mechanisms(sasl_server):
    m = imaplib.IMAP4(sasl_server.host, sasl_server.imap_port)
    assert [c for c in m.capabilities if c.startswith("AUTH=")] == ["AUTH=" + x for x in MECHS]
    m.logout()


def test_imap_cram_md5_and_scram(sasl_server):
    user, pw = _user(0)
    m = imaplib.IMAP4(sasl_server.host, sasl_server.imap_port)
    assert m.login_cram_md5(user, pw)[0] == "OK"
    m.logout()
    for name in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
        m = imaplib.IMAP4(sasl_server.host, sasl_server.imap_port)
        assert m.authenticate(name, _scram_callback(user, pw, name))[0] == "OK"
        assert m.select("INBOX")[0] == "OK"
        m.logout()
    m = imaplib.IMAP4(sasl_server.host, sasl_server.imap_port)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.authenticate("SCRAM-SHA-256", _scram_callback(user, "wrong"))
    m.logout()


def test_imap_cancel_and_malformed_base64(sasl_server):
    m = imaplib.IMAP4(sasl_server.host, sasl_server.imap_port)
    with pytest.raises(imaplib.IMAP4.error, match="BAD.*cancel"):
        m.authenticate("LOGIN", lambda challenge: None)            # imaplib sends "*"
    sock = socket.create_connection((sasl_server.host, sasl_server.imap_port))
    f = sock.makefile("rwb")
    f.readline()
    f.write(b"a AUTHENTICATE PLAIN\r\n")
    f.flush()
    assert f.readline() == b"+ \r\n"
    f.write(b"not*base64!\r\n")
    f.flush()
    assert f.readline().startswith(b"a BAD")
    f.write(b"b AUTHENTICATE PLAIN %%%\r\n")                      # bad SASL-IR initial response
    f.flush()
    assert f.readline().startswith(b"b BAD")
    user, pw = _user(1)
    f.write(b"c AUTHENTICATE PLAIN " + base64.b64encode(f"\0{user}\0{pw}".encode()) + b"\r\n")
    f.flush()
    assert f.readline().startswith(b"c OK")
    sock.close()


def _pop3_line(f) -> bytes:
    return f.readline().rstrip(b"\r\n")


def test_pop3_sasl(sasl_server):
    user, pw = _user(2)
    sock = socket.create_connection((sasl_server.host, sasl_server.pop3_port))
    f = sock.makefile("rwb")
    _pop3_line(f)
    f.write(b"AUTH\r\n")
    f.flush()
    names = []
    while (line := _pop3_line(f)) != b".":
        names.append(line)
    assert names[1:] == [m.encode() for m in MECHS]
    # cancellation and bad base64
    f.write(b"AUTH LOGIN\r\n")
    f.flush()
    assert _pop3_line(f) == b"+ " + base64.b64encode(b"Username:")
    f.write(b"*\r\n")
    f.flush()
    assert _pop3_line(f).startswith(b"-ERR")
    f.write(b"AUTH PLAIN\r\n")
    f.flush()
    assert _pop3_line(f) == b"+ "
    f.write(b"@@@\r\n")
    f.flush()
    assert _pop3_line(f).startswith(b"-ERR")
    # CRAM-MD5
    f.write(b"AUTH CRAM-MD5\r\n")
    f.flush()
    challenge = base64.b64decode(_pop3_line(f)[2:])
    digest = hmac.new(pw.encode(), challenge, hashlib.md5).hexdigest()
    f.write(base64.b64encode(f"{user} {digest}".encode()) + b"\r\n")
    f.flush()
    assert _pop3_line(f).startswith(b"+OK")
    sock.close()


def test_pop3_scram(sasl_server):
    import scramp
    user, pw = _user(3)
    client = scramp.ScramClient(["SCRAM-SHA-256"], user, pw)
    sock = socket.create_connection((sasl_server.host, sasl_server.pop3_port))
    f = sock.makefile("rwb")
    _pop3_line(f)
    f.write(b"AUTH SCRAM-SHA-256 " + base64.b64encode(client.get_client_first().encode()) + b"\r\n")
    f.flush()
    client.set_server_first(base64.b64decode(_pop3_line(f)[2:]).decode())
    f.write(base64.b64encode(client.get_client_final().encode()) + b"\r\n")
    f.flush()
    client.set_server_final(base64.b64decode(_pop3_line(f)[2:]).decode())
    f.write(b"\r\n")
    f.flush()
    assert _pop3_line(f).startswith(b"+OK")
    sock.close()


def test_master_login_over_imap(sasl_server):
    user, _ = _user(4)
    m = imaplib.IMAP4(sasl_server.host, sasl_server.imap_port)
    m.login(f"{user}*admin", "adminpw")
    assert m.select("INBOX")[0] == "OK"
    m.logout()
    assert '"master": "admin"' in sasl_server.log_text() or "master user admin logs in as" in sasl_server.log_text()


def _log_events(server) -> list[dict]:
    events = []
    for line in server.log_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return events


def test_failure_log_line_has_address_user_mechanism_and_no_password(sasl_server):
    user, _ = _user(5)
    m = imaplib.IMAP4(sasl_server.host, sasl_server.imap_port)
    with pytest.raises(imaplib.IMAP4.error):
        m.login(user, "Sup3r-Secret-Guess")
    m.logout()
    failures = [e for e in _log_events(sasl_server) if e.get("log_format", "").startswith("{service} login failed")
                and e.get("user") == user]
    assert failures
    event = failures[-1]
    assert event["service"] == "imap" and event["mechanism"] == "LOGIN" and event["peer"].startswith("127.0.0.1:")
    assert "Sup3r-Secret-Guess" not in sasl_server.log_text()


# --- the penalty -------------------------------------------------------------------------------------------

@pytest.fixture
def penalty_server(tmp_path):
    server = ConfiguredServer(str(tmp_path), {"auth": {
        "penalty_threshold": 2, "penalty_initial": 0.4, "penalty_max": 0.8, "user_max_failures": 6}})
    server.start()
    yield server
    server.stop()


def _timed_login(server, user, password) -> tuple[bool, float]:
    m = imaplib.IMAP4(server.host, server.imap_port)
    t = time.monotonic()
    try:
        m.login(user, password)
        ok = True
    except imaplib.IMAP4.error:
        ok = False
    elapsed = time.monotonic() - t
    m.logout()
    return ok, elapsed


def test_penalty_grows_per_address_and_resets_on_success(penalty_server):
    user, pw = _user(0)
    times = [_timed_login(penalty_server, user, "wrong")[1] for _ in range(5)]
    # failures 1 and 2 are free; then 0.4 s, 0.8 s, 0.8 s (capped)
    assert times[0] < 0.3 and times[1] < 0.3, times
    assert 0.3 < times[2] < 2.0 and 0.6 < times[3] < 2.5 and 0.6 < times[4] < 2.5, times
    ok, elapsed = _timed_login(penalty_server, user, pw)       # held back too, then forgiven
    assert ok and elapsed > 0.6
    assert _timed_login(penalty_server, user, "wrong")[1] < 0.3
    held = [e for e in _log_events(penalty_server) if e.get("log_format", "").startswith("holding back a login")]
    assert held and held[0]["host"] == "127.0.0.1"


def test_per_user_limit_refuses_unchecked(penalty_server):
    user, pw = _user(1)
    other, other_pw = _user(2)
    for _ in range(6):
        _timed_login(penalty_server, user, "wrong")
        assert _timed_login(penalty_server, other, other_pw)[0]    # keeps the address penalty at 0
    ok, _ = _timed_login(penalty_server, user, pw)
    assert not ok                                                  # locked, even with the password
    assert "refused unchecked" in penalty_server.log_text()


def test_exempt_networks_are_never_held_back(tmp_path):
    server = ConfiguredServer(str(tmp_path), {"auth": {
        "penalty_threshold": 1, "penalty_initial": 2.0, "penalty_exempt_networks": ["127.0.0.0/8"]}})
    server.start()
    try:
        user, pw = _user(0)
        t = time.monotonic()
        for _ in range(4):
            assert not _timed_login(server, user, "wrong")[0]
        assert _timed_login(server, user, pw)[0]
        assert time.monotonic() - t < 3.0
    finally:
        server.stop()


# --- connection limits -------------------------------------------------------------------------------------

def test_connection_limits(tmp_path):
    server = ConfiguredServer(str(tmp_path), {"server": {"max_connections_per_ip": 3, "max_connections": 5}})
    server.start()
    try:
        imaps = [imaplib.IMAP4(server.host, server.imap_port) for _ in range(3)]
        with socket.create_connection((server.host, server.imap_port)) as extra:
            assert extra.makefile("rb").readline().startswith(b"* BYE [UNAVAILABLE] Too many connections")
        with socket.create_connection((server.host, server.pop3_port)) as extra:
            assert extra.makefile("rb").readline().startswith(b"-ERR [SYS/TEMP] Too many connections")
        # LMTP has only the global cap: 3 + 2 = 5 open, the sixth is refused
        lmtp1 = socket.create_connection((server.host, server.lmtp_port))
        lmtp2 = socket.create_connection((server.host, server.lmtp_port))
        assert lmtp2.makefile("rb").readline().startswith(b"220 ")
        with socket.create_connection((server.host, server.lmtp_port)) as extra:
            assert extra.makefile("rb").readline().startswith(b"421 4.7.0")
        lmtp1.close()
        lmtp2.close()
        imaps.pop().logout()
        deadline = time.monotonic() + 5
        while True:                  # the server sees the close a moment later
            m = imaplib.IMAP4(server.host, server.imap_port) if time.monotonic() < deadline else None
            assert m is not None, "the freed slot was not given back"
            if m.welcome.startswith(b"* OK"):
                break
            time.sleep(0.05)
        m.logout()
        for m in imaps:
            m.logout()
        assert "max_connections_per_ip" in server.log_text()
    finally:
        server.stop()


# --- OAUTHBEARER / XOAUTH2 over IMAP and POP3 -----------------------------------------------------------

def test_oauth_over_imap_and_pop3(tmp_path):
    import http.server
    import threading

    from tests.unit.test_sasl import _Introspection

    endpoint = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Introspection)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    user, _ = _user(0)
    _Introspection.tokens = dict(_Introspection.tokens, **{"user-token": user})
    server = ConfiguredServer(str(tmp_path), {"auth": {
        "mechanisms": ["PLAIN", "OAUTHBEARER", "XOAUTH2"], "penalty_exempt_networks": ["127.0.0.0/8"],
        "oauth2": {"introspection_url": f"http://127.0.0.1:{endpoint.server_address[1]}/"}}})
    server.start()
    try:
        m = imaplib.IMAP4(server.host, server.imap_port)
        assert "AUTH=OAUTHBEARER" in m.capabilities and "AUTH=XOAUTH2" in m.capabilities
        message = f"n,a={user},\x01auth=Bearer user-token\x01\x01".encode()
        assert m.authenticate("OAUTHBEARER", lambda challenge: message)[0] == "OK"
        m.logout()
        m = imaplib.IMAP4(server.host, server.imap_port)
        replies = []

        def bad_token(challenge):
            replies.append(challenge)
            return b"n,,\x01auth=Bearer nope\x01\x01" if len(replies) == 1 else b"\x01"
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            m.authenticate("OAUTHBEARER", bad_token)
        assert json.loads(replies[1])["status"] == "invalid_token"   # the error challenge
        m.logout()
        p = poplib.POP3(server.host, server.pop3_port)
        xoauth = base64.b64encode(f"user={user}\x01auth=Bearer user-token\x01\x01".encode()).decode()
        assert p._shortcmd(f"AUTH XOAUTH2 {xoauth}").startswith(b"+OK")
        p.quit()
    finally:
        server.stop()
        endpoint.shutdown()
        endpoint.server_close()
