"""getmail6 (Debian's package), a real POP3 client, retrieves over POP3: keeping mail on the
server (its UIDL memory then skips what it already has), then deleting; the retrieved bytes equal
what was delivered."""

import poplib
import shutil
import smtplib
import subprocess

import pytest

pytestmark = pytest.mark.e2e

GETMAIL = shutil.which("getmail")

MESSAGES = [
    b"From: a@ext.example\r\nSubject: dots\r\n\r\n.one leading dot\r\n..two\r\n.\r\nend\r\n",
    b"From: a@ext.example\r\nSubject: no final newline\r\n\r\nlast line without CRLF",
    b"From: a@ext.example\r\nSubject: big\r\n\r\n" + b"".join(b".%05d " % i + b"x" * 70 + b"\r\n" for i in range(3000)),
    b"From: a@ext.example\r\nSubject: bare LF\n\nline one\nline two\r\n",   # smtplib would add CRLF after a bare LF
]


def getmail(tmp_path, server, user, password, *, delete: bool, read_all: bool) -> list[bytes]:
    """Run getmail once; the messages it handed to its delivery command, in order."""
    if GETMAIL is None:
        raise RuntimeError("getmail6 is not installed: run scripts/install --test (apt-get install getmail6)")
    state = tmp_path / "getmail"
    out = tmp_path / "out"
    state.mkdir(exist_ok=True)
    out.mkdir(exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    rc = state / "getmailrc"
    # MDA_external rather than Maildir: getmail refuses Maildir delivery as root.  No headers of
    # its own (Delivered-To, Received, X-getmail...), so what it writes is what it retrieved.
    rc.write_text(f"""[retriever]
type = SimplePOP3Retriever
server = {server.host}
port = {server.pop3_port}
username = {user}
password = {password}

[destination]
type = MDA_external
path = /bin/sh
arguments = ("-c", "cat > {out}/$(date +%s%N)")
allow_root_commands = true

[options]
verbose = 1
read_all = {str(read_all).lower()}
delete = {str(delete).lower()}
delivered_to = false
received = false
record_mailbox = false
""")
    done = subprocess.run([GETMAIL, f"--rcfile={rc}", f"--getmaildir={state}"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return [f.read_bytes() for f in sorted(out.iterdir(), key=lambda p: int(p.name))]


def stored(server, user, password) -> list[bytes]:
    """The messages as the server holds them (POP3 RETR with poplib, which undoes dot-stuffing)."""
    p = poplib.POP3(server.host, server.pop3_port, timeout=20)
    p.user(user)
    p.pass_(password)
    out = [b"\r\n".join(p.retr(n)[1]) + b"\r\n" for n in range(1, p.stat()[0] + 1)]
    p.quit()
    return out


def as_written(message: bytes) -> bytes:
    """A message as getmail writes it on this platform: LF line endings."""
    return message.replace(b"\r\n", b"\n")


def test_getmail_keeps_then_deletes(tmp_path, mail_server, account):
    user, password = account
    with smtplib.LMTP(mail_server.host, mail_server.lmtp_port) as lmtp:
        for m in MESSAGES[:3]:
            assert lmtp.sendmail("a@ext.example", [user], m) == {}
    on_server = stored(mail_server, user, password)

    # 1. keep on the server: everything is retrieved, byte for byte
    got = getmail(tmp_path, mail_server, user, password, delete=False, read_all=False)
    assert got == [as_written(m) for m in on_server]
    for sent, fetched in zip(MESSAGES, got):
        # the message as delivered, after our trace headers; a missing final newline is added by
        # POP3's framing (RFC 1939 needs CRLF before the terminating dot)
        body = as_written(sent)
        assert fetched.endswith(body if body.endswith(b"\n") else body + b"\n")

    # 2. again: getmail remembers the UIDLs and takes nothing (UIDLs are stable)
    assert getmail(tmp_path, mail_server, user, password, delete=False, read_all=False) == []

    # 3. a new message arrives; only it is retrieved
    with smtplib.LMTP(mail_server.host, mail_server.lmtp_port) as lmtp:
        lmtp.sendmail("a@ext.example", [user], MESSAGES[3])
    got = getmail(tmp_path, mail_server, user, password, delete=False, read_all=False)
    assert len(got) == 1 and got[0].endswith(b"\nSubject: bare LF\n\nline one\nline two\n")
    assert len(stored(mail_server, user, password)) == 4

    # 4. retrieve everything and delete it: the maildrop ends empty
    on_server = stored(mail_server, user, password)
    got = getmail(tmp_path, mail_server, user, password, delete=True, read_all=True)
    assert got == [as_written(m) for m in on_server]
    assert stored(mail_server, user, password) == []
