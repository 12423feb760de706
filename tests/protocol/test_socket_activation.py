"""systemd socket activation (systemd/mailserver.socket): the server serves IMAP, POP3 and LMTP
on sockets it inherits, started by Debian's ``systemd-socket-activate`` as systemd would start
it, and shares the LMTP connections with its worker as on its own sockets."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import subprocess
import sys

from tests.protocol.test_lmtp_workers import alive, children, sockets, wait_for, workers_ready


def free_ports(n: int) -> list[int]:
    holders = [socket.create_server(("127.0.0.1", 0)) for _ in range(n)]
    ports = [h.getsockname()[1] for h in holders]
    for h in holders:
        h.close()
    return ports


class _Log:
    def __init__(self, path):
        self.path = path

    def log_text(self) -> str:
        return self.path.read_text(errors="replace")


def test_imap_pop3_and_lmtp_on_inherited_sockets_with_a_worker(tmp_path):
    imap, pop3, lmtp = free_ports(3)
    (tmp_path / "passwd").write_text("u@example.org:{PLAIN}pw::::::\n")
    conf = tmp_path / "mailserver.toml"
    conf.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\nlog_format = "json"\n\n'
                    '[imap]\nlisten = ["systemd:domain=INET:name=imap"]\n\n'
                    '[pop3]\nlisten = ["systemd:domain=INET:name=pop3"]\n\n'
                    '[lmtp]\nlisten = ["systemd:domain=INET:name=lmtp"]\nprocesses = 2\n\n'
                    f'[auth]\npasswd_file = "{tmp_path / "passwd"}"\n')
    log_path = tmp_path / "server.log"
    # Like systemd: the sockets are bound first; the server starts at the first connection.
    proc = subprocess.Popen(["systemd-socket-activate", "--fdname=imap:pop3:lmtp",
                             "-l", f"127.0.0.1:{imap}", "-l", f"127.0.0.1:{pop3}", "-l", f"127.0.0.1:{lmtp}",
                             sys.executable, "-m", "mailserver", "serve", "--config", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
    worker = None
    try:
        with wait_for(lambda: _connect(imap)) as m:      # the first connection starts the server
            assert m.login("u@example.org", "pw")[0] == "OK"
            m.logout()
        workers_ready(_Log(log_path), 1)
        [worker] = children(proc.pid)                   # systemd-socket-activate exec'd the server
        before = {p: sockets(p) for p in (proc.pid, worker)}
        conns = [smtplib.LMTP("127.0.0.1", lmtp, timeout=20) for _ in range(4)]
        for c in conns:
            c.ehlo("test")
        assert {p: sockets(p) - n for p, n in before.items()} == {proc.pid: 2, worker: 2}
        for n, c in enumerate(conns):
            assert c.sendmail("s@example.net", ["u@example.org"], f"Subject: {n}\r\n\r\nhi\r\n") == {}
            c.quit()
        p = poplib.POP3("127.0.0.1", pop3, timeout=20)
        p.user("u@example.org")
        p.pass_("pw")
        assert p.stat()[0] == 4
        p.quit()
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log_path.read_text()[-3000:]
        if worker is not None:
            wait_for(lambda: not alive(worker))


def _connect(port: int) -> imaplib.IMAP4 | None:
    """An IMAP connection once systemd-socket-activate listens (None before)."""
    try:
        return imaplib.IMAP4("127.0.0.1", port, timeout=30)
    except ConnectionRefusedError:
        return None
