"""TLS over real sockets: implicit TLS (IMAPS, POP3S), STARTTLS/STLS in IMAP, POP3 and LMTP,
plaintext pipelined before STARTTLS never executed, LOGINDISABLED and no plaintext login without
TLS, certificate reload on SIGHUP, start-up errors for a missing or mismatched key."""

from __future__ import annotations

import imaplib
import poplib
import signal
import smtplib
import socket
import ssl
import time

import pytest

from tests.authtls_support import Certificates, ConfiguredServer

pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, certs):
    server = ConfiguredServer(str(tmp_path_factory.mktemp("tls")), {
        "tls": certs.tls_section(),
        "imap": {"listen_tls": ["127.0.0.1:0"]},
        "pop3": {"listen_tls": ["127.0.0.1:0"]},
    })
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory, certs):
    """No network may log in without TLS (loopback included)."""
    server = ConfiguredServer(str(tmp_path_factory.mktemp("strict")), {
        "tls": certs.tls_section(), "auth": {"plaintext_networks": []}})
    server.start()
    yield server
    server.stop()


def _user(server, n: int):
    return f"user{n:04d}@example.org", f"pw-{n:04d}"


# --- implicit TLS and STARTTLS ------------------------------------------------------------------------

def test_imaps(tls_server, certs):
    user, pw = _user(tls_server, 0)
    with imaplib.IMAP4_SSL(tls_server.host, tls_server.ports["imaps"], ssl_context=certs.client_context()) as m:
        caps = m.capabilities
        assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps and "AUTH=PLAIN" in caps
        m.login(user, pw)
        assert m.select("INBOX")[0] == "OK"


def test_imap_starttls(tls_server, certs):
    user, pw = _user(tls_server, 1)
    m = imaplib.IMAP4(tls_server.host, tls_server.imap_port)
    assert "STARTTLS" in m.capabilities
    m.starttls(ssl_context=certs.client_context())
    assert "STARTTLS" not in m.capabilities         # imaplib asks again after the handshake
    with pytest.raises(imaplib.IMAP4.error, match="TLS is already active"):
        m._simple_command("STARTTLS")
    m.login(user, pw)
    m.logout()


def test_imapclient_with_ssl_context(tls_server, certs):
    imapclient = pytest.importorskip("imapclient")
    user, pw = _user(tls_server, 2)
    with imapclient.IMAPClient(tls_server.host, port=tls_server.ports["imaps"], ssl=True,
                               ssl_context=certs.client_context()) as c:
        c.login(user, pw)
        assert c.select_folder("INBOX")[b"EXISTS"] == 0
    with imapclient.IMAPClient(tls_server.host, port=tls_server.imap_port, ssl=False) as c:
        c.starttls(certs.client_context())
        c.login(user, pw)


def test_pop3s_and_stls(tls_server, certs):
    user, pw = _user(tls_server, 3)
    p = poplib.POP3_SSL(tls_server.host, tls_server.ports["pop3s"], context=certs.client_context())
    assert "STLS" not in p.capa()
    p.user(user)
    p.pass_(pw)
    p.quit()
    p = poplib.POP3(tls_server.host, tls_server.pop3_port)
    assert "STLS" in p.capa()
    p.stls(context=certs.client_context())
    assert "STLS" not in p.capa()
    p.user(user)
    p.pass_(pw)
    assert p.stat() == (0, 0)
    p.quit()


def test_lmtp_starttls(tls_server, certs):
    user, _ = _user(tls_server, 4)
    with smtplib.LMTP(tls_server.host, tls_server.lmtp_port) as lmtp:
        lmtp.ehlo("mx.test")
        assert lmtp.has_extn("starttls")
        lmtp.starttls(context=certs.client_context())
        lmtp.ehlo("mx.test")                          # the session started over
        assert not lmtp.has_extn("starttls")
        assert lmtp.sendmail("a@example.org", [user], b"Subject: over TLS\r\n\r\nhi\r\n") == {}
    with imaplib.IMAP4(tls_server.host, tls_server.imap_port) as m:
        m.login(*_user(tls_server, 4))
        assert m.select("INBOX")[1] == [b"1"]


def test_no_starttls_without_certificate(mail_server):
    m = imaplib.IMAP4(mail_server.host, mail_server.imap_port)
    assert "STARTTLS" not in m.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="TLS support isn't enabled"):
        m._simple_command("STARTTLS")
    m.logout()
    p = poplib.POP3(mail_server.host, mail_server.pop3_port)
    assert "STLS" not in p.capa()
    with pytest.raises(poplib.error_proto):
        p._shortcmd("STLS")
    p.quit()


# --- plaintext buffered before STARTTLS is discarded (CVE-2011-0411 class) --------------------------

def _read_until(sock, marker: bytes, limit: float = 5.0) -> bytes:
    sock.settimeout(limit)
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _nothing_more(sock, wait: float = 0.5) -> bytes:
    sock.settimeout(wait)
    try:
        return sock.recv(4096)
    except (socket.timeout, ssl.SSLWantReadError, TimeoutError):
        return b""


def test_imap_starttls_injection(tls_server, certs):
    raw = socket.create_connection((tls_server.host, tls_server.imap_port))
    _read_until(raw, b"\r\n")
    raw.sendall(b"a STARTTLS\r\nb NOOP\r\n")              # one segment
    reply = _read_until(raw, b"a OK")
    assert b"a OK" in reply and b"b " not in reply
    tls = certs.client_context().wrap_socket(raw, server_hostname="localhost")
    assert _nothing_more(tls) == b""                     # the injected NOOP was never run
    tls.sendall(b"c NOOP\r\n")
    assert _read_until(tls, b"c OK").startswith(b"c OK")
    assert b"discarded" in tls_server.log_text().encode()
    tls.close()


def test_pop3_stls_injection(tls_server, certs):
    raw = socket.create_connection((tls_server.host, tls_server.pop3_port))
    _read_until(raw, b"\r\n")
    user, pw = _user(tls_server, 5)
    raw.sendall(f"STLS\r\nUSER {user}\r\nPASS {pw}\r\n".encode())
    assert _read_until(raw, b"\r\n") == b"+OK Begin TLS negotiation now.\r\n"
    tls = certs.client_context().wrap_socket(raw, server_hostname="localhost")
    assert _nothing_more(tls) == b""
    tls.sendall(b"STAT\r\n")
    assert _read_until(tls, b"\r\n").startswith(b"-ERR")   # not logged in: USER/PASS were dropped
    tls.close()


def test_lmtp_starttls_injection(tls_server, certs):
    raw = socket.create_connection((tls_server.host, tls_server.lmtp_port))
    _read_until(raw, b"\r\n")
    raw.sendall(b"LHLO mx\r\n")
    _read_until(raw, b"\r\n250 ")                  # the last LHLO line
    raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
    assert _read_until(raw, b"\r\n").startswith(b"220 2.0.0")
    tls = certs.client_context().wrap_socket(raw, server_hostname="localhost")
    assert _nothing_more(tls) == b""
    tls.sendall(b"MAIL FROM:<a@example.org>\r\n")
    assert _read_until(tls, b"\r\n").startswith(b"503")     # LHLO needed again, no sender kept
    tls.close()


# --- no plaintext login without TLS -------------------------------------------------------------------

def test_logindisabled_until_starttls(strict_server, certs):
    user, pw = _user(strict_server, 0)
    m = imaplib.IMAP4(strict_server.host, strict_server.imap_port)
    assert "LOGINDISABLED" in m.capabilities and "STARTTLS" in m.capabilities
    assert not any(c.startswith("AUTH=PLAIN") for c in m.capabilities)
    typ, data = m._simple_command("LOGIN", user, pw)
    assert typ == "NO" and b"[PRIVACYREQUIRED]" in data[0]
    typ, data = m._simple_command("AUTHENTICATE", "PLAIN", "AHVzZXIAcHc=")
    assert typ == "NO" and b"[PRIVACYREQUIRED]" in data[0]
    m.starttls(ssl_context=certs.client_context())
    assert "LOGINDISABLED" not in m.capabilities and "AUTH=PLAIN" in m.capabilities
    m.login(user, pw)
    m.logout()


def test_pop3_plaintext_refused_until_stls(strict_server, certs):
    user, pw = _user(strict_server, 1)
    p = poplib.POP3(strict_server.host, strict_server.pop3_port)
    capa = p.capa()
    assert "USER" not in capa and capa["SASL"] == [] and "STLS" in capa
    with pytest.raises(poplib.error_proto, match="Plaintext authentication disallowed"):
        p.user(user)
    with pytest.raises(poplib.error_proto, match="Plaintext authentication disallowed"):
        p._shortcmd("AUTH PLAIN AHVzZXIAcHc=")
    p.stls(context=certs.client_context())
    assert "USER" in p.capa()
    p.user(user)
    p.pass_(pw)
    p.quit()


# --- reload on SIGHUP, start-up errors -----------------------------------------------------------------

def _peer_cert(host, port, ctx) -> bytes:
    with socket.create_connection((host, port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


def test_sighup_reloads_certificate_without_dropping_sessions(tmp_path, certs):
    own = Certificates(str(tmp_path))
    server = ConfiguredServer(str(tmp_path / "srv"), {"tls": own.tls_section(),
                                                      "imap": {"listen_tls": ["127.0.0.1:0"]}})
    server.start()
    try:
        ctx = own.client_context()
        before = _peer_cert(server.host, server.ports["imaps"], ctx)
        session = imaplib.IMAP4_SSL(server.host, server.ports["imaps"], ssl_context=ctx)
        session.login(*_user(server, 0))
        own.issue()
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS certificate reloaded" not in server.log_text():
            assert time.monotonic() < deadline, server.log_text()[-2000:]
            time.sleep(0.05)
        after = _peer_cert(server.host, server.ports["imaps"], ctx)
        assert after != before                                 # new connections: the new certificate
        assert session.noop()[0] == "OK"                       # the old session goes on
        assert session.select("INBOX")[0] == "OK"
        session.logout()
        # A broken file on reload keeps the working certificate.
        with open(own.key_path, "w") as f:
            f.write("not a key\n")
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS reload failed" not in server.log_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _peer_cert(server.host, server.ports["imaps"], ctx) == after
    finally:
        server.stop()


@pytest.mark.parametrize("problem", ["missing", "mismatched", "garbage"])
def test_startup_fails_clearly_on_bad_key(tmp_path, certs, problem):
    key = str(tmp_path / "key.pem")
    if problem == "mismatched":
        Certificates(str(tmp_path), name="other")                  # another key pair
        key = str(tmp_path / "other-key.pem")
    elif problem == "garbage":
        with open(key, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    server = ConfiguredServer(str(tmp_path / "srv"), {"tls": {"cert": certs.cert_path, "key": key}})
    with pytest.raises(RuntimeError, match="server exited with 1"):
        server.start(timeout=20)
    log = server.log_text()
    assert "cannot start" in log and key in log
    if problem == "mismatched":
        assert "does not match the certificate" in log
    assert "Traceback" not in log


def test_listen_tls_needs_a_certificate(tmp_path):
    server = ConfiguredServer(str(tmp_path), {"imap": {"listen_tls": ["127.0.0.1:0"]}})
    with pytest.raises(RuntimeError, match="server exited with 1"):
        server.start(timeout=20)
    assert "[imap] listen_tls: needs [tls] cert and key" in server.log_text()
