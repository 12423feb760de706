"""``[lmtp] processes``: LMTP worker processes serving the connections the server accepts, on the
embedded default.  Connections are shared evenly between the processes, every delivery lands exactly once and is
read over IMAP from the server process, a dead worker is started again, and no worker
outlives the server, whether it stops or is killed."""

from __future__ import annotations

import imaplib
import os
import re
import signal
import smtplib
import time

import pytest

from mailserver import config
from tests.harness import RunningServer


def children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def sockets(pid: int) -> int:
    """Open sockets of a process."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def workers_ready(server, n: int) -> None:
    """Wait until the server heard ``n`` times (in all) that a worker is ready for connections."""
    wait_for(lambda: len(re.findall(r"LMTP worker \d+ ready", server.log_text())) >= n)


@pytest.fixture
def two_process_server(tmp_path):
    server = RunningServer(str(tmp_path / "srv"), users=20, options={"lmtp": {"processes": 2}})
    server.start()
    try:
        workers_ready(server, 1)
        yield server
    finally:                        # also when the worker never got ready: no server left behind
        server.stop()


def message(n: int) -> bytes:
    return (f"From: a@example.net\r\nSubject: worker test {n}\r\nMessage-ID: <w{n}@example.net>\r\n\r\n"
            f"body {n}\r\n").encode()


def test_connections_are_shared_evenly_and_every_delivery_lands_once(two_process_server):
    """The server gives each new connection to the process serving the fewest: 10 open at once
    are 5 and 5 (with a shared listening socket, one process took all 10 in half the runs)."""
    server = two_process_server
    worker = wait_for(lambda: children(server.proc.pid))
    assert len(worker) == 1
    user, pw = server.new_user()
    before = {p: sockets(p) for p in (server.proc.pid, worker[0])}
    conns = []
    try:
        for _ in range(10):
            c = smtplib.LMTP(server.host, server.lmtp_port, timeout=20)
            c.ehlo("test")                      # answered: the process serving it has it
            conns.append(c)
        assert {p: sockets(p) - n for p, n in before.items()} == {server.proc.pid: 5, worker[0]: 5}
        for n, c in enumerate(conns):
            assert c.sendmail("s@example.net", [user], message(n)) == {}
    finally:
        for c in conns:
            c.quit()
    # Closed connections are counted off: the next ones are shared evenly again.
    wait_for(lambda: all(sockets(p) == n for p, n in before.items()))
    more = [smtplib.LMTP(server.host, server.lmtp_port, timeout=20) for _ in range(4)]
    for c in more:
        c.ehlo("test")
    assert {p: sockets(p) - n for p, n in before.items()} == {server.proc.pid: 2, worker[0]: 2}
    for n, c in enumerate(more, len(conns)):
        assert c.sendmail("s@example.net", [user], message(n)) == {}
        c.quit()
    conns += more
    m = imaplib.IMAP4(server.host, server.imap_port)
    m.login(user, pw)
    total = len(conns)
    assert m.select("INBOX") == ("OK", [str(total).encode()])
    typ, data = m.uid("SEARCH", "ALL")
    assert sorted(map(int, data[0].split())) == list(range(1, total + 1))
    typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = sorted(part[1].strip() for part in data if isinstance(part, tuple))
    assert subjects == sorted(f"Subject: worker test {n}".encode() for n in range(total))
    m.logout()


def test_idle_in_the_server_sees_what_either_process_delivered(tmp_path):
    """IDLE sessions live in the server process; a worker's deliveries reach them through the
    index store's watch of the mailbox directory (inotify), not only its poll, which is made
    too slow here to matter."""
    import imapclient
    server = RunningServer(str(tmp_path / "srv"), users=5,
                           options={"lmtp": {"processes": 2}, "imap": {"idle_check_interval": 60.0}})
    server.start()
    try:
        workers_ready(server, 1)
        _idle_sees_ten_deliveries(server)
    finally:
        server.stop()


def _idle_sees_ten_deliveries(server):
    import imapclient
    user, pw = server.new_user()
    c = imapclient.IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=20)
    c.login(user, pw)
    c.select_folder("INBOX")
    c.idle()
    for n in range(10):                         # separate connections: both processes take some
        with smtplib.LMTP(server.host, server.lmtp_port, timeout=20) as lmtp:
            assert lmtp.sendmail("s@example.net", [user], message(n)) == {}
    seen = 0
    deadline = time.monotonic() + 10
    while seen < 10 and time.monotonic() < deadline:
        for count, what in c.idle_check(timeout=1):
            if what == b"EXISTS":
                seen = max(seen, count)
    c.idle_done()
    c.logout()
    assert seen == 10


def test_a_dead_worker_is_started_again(two_process_server):
    server = two_process_server
    first = wait_for(lambda: children(server.proc.pid))[0]
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: [p for p in children(server.proc.pid) if p != first and alive(p)])[0]
    assert "ended unexpectedly" in server.log_text()
    workers_ready(server, 2)
    user, _ = server.new_user()
    for n in range(6):                          # whoever takes them, they are delivered
        with smtplib.LMTP(server.host, server.lmtp_port, timeout=20) as c:
            assert c.sendmail("s@example.net", [user], message(n)) == {}
    assert alive(second)


def test_sighup_reaches_the_workers(two_process_server):
    """A reload (SIGHUP, systemd's ExecReload) is passed on: each worker re-reads its TLS
    certificate (here: says it has none) and keeps serving."""
    server = two_process_server
    worker = wait_for(lambda: children(server.proc.pid))[0]
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_for(lambda: server.log_text().count("SIGHUP: no TLS certificate to reload") >= 2)
    assert alive(worker) and children(server.proc.pid) == [worker]


def test_no_worker_outlives_the_server(tmp_path):
    server = RunningServer(str(tmp_path / "srv"), users=5, options={"lmtp": {"processes": 3}})
    server.start()
    workers = wait_for(lambda: (lambda c: c if len(c) == 2 else None)(children(server.proc.pid)))
    server.stop()                               # SIGTERM: the server stops its workers first
    assert not any(alive(p) for p in workers)
    server.start()
    workers = wait_for(lambda: (lambda c: c if len(c) == 2 else None)(children(server.proc.pid)))
    server.stop(sig=signal.SIGKILL)             # killed: the workers see their stdin close
    wait_for(lambda: not any(alive(p) for p in workers))


def test_several_processes_need_the_local_index():
    with pytest.raises(config.ConfigError, match=r'\[lmtp\] processes: more than 1 needs \[rbox\] index_store = "local"'):
        config.validate({"lmtp": {"processes": 2}, "rbox": {"index_store": "cephfs"}}, "m.toml")
    with pytest.raises(config.ConfigError, match=r'\[lmtp\] processes: must be 1 to 64, or "auto"'):
        config.validate({"lmtp": {"processes": 0}}, "m.toml")
    with pytest.raises(config.ConfigError, match=r"\[lmtp\] processes: expected an integer"):
        config.validate({"lmtp": {"processes": "four"}}, "m.toml")
    assert config.validate({"lmtp": {"processes": 4}}, "m.toml").lmtp.processes == 4


def test_auto_is_one_process_per_core_with_the_local_index_and_one_with_cephfs():
    cores = min(len(os.sched_getaffinity(0)), config.AUTO_LMTP_PROCESSES_MAX)
    assert config.validate({}, "m.toml").lmtp.processes == cores          # the default
    assert config.validate({"lmtp": {"processes": "auto"}}, "m.toml").lmtp.processes == cores
    assert config.validate({"lmtp": {"processes": "auto"}, "rbox": {"index_store": "cephfs"}},
                           "m.toml").lmtp.processes == 1


def test_no_lmtp_listener_means_no_worker_and_no_error(tmp_path):
    """Regression: with LMTP not listening ([lmtp] listen = []), "auto" processes must not stop
    the server from starting (it looked for the LMTP factory of the listener loop)."""
    import json
    import subprocess
    import sys
    state = tmp_path / "state"
    conf = tmp_path / "m.toml"
    (tmp_path / "passwd").write_text("u@example.org:{PLAIN}pw::::::\n")
    conf.write_text(f'[server]\nstate_dir = "{state}"\nlog_format = "json"\n\n'
                    '[imap]\nlisten = ["127.0.0.1:0"]\n\n[pop3]\nlisten = []\n\n'
                    '[lmtp]\nlisten = []\nprocesses = 2\n\n'
                    f'[auth]\npasswd_file = "{tmp_path / "passwd"}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "mailserver", "serve", "--config", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "wb"))
    try:
        listeners = wait_for(lambda: (state / "listeners.json").exists() and
                             json.loads((state / "listeners.json").read_text()))
        assert list(listeners) == ["imap"] and proc.poll() is None
        assert children(proc.pid) == []
        with imaplib.IMAP4(*listeners["imap"][0].rsplit(":", 1)) as m:
            assert m.login("u@example.org", "pw")[0] == "OK"
    finally:
        proc.terminate()
        assert proc.wait(20) == 0, (tmp_path / "log").read_text()[-2000:]
