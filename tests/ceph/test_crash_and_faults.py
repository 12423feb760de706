"""Crash and fault behaviour, on the embedded default and on rbox over RADOS + CephFS:
kill -9 during parallel deliveries and APPENDs; two server processes on one storage; Ceph
stalling mid-session."""

from __future__ import annotations

import imaplib
import itertools
import json
import poplib
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.harness import RunningServer, ceph_config

MSG = ("From: crash@example.org\r\nTo: u@example.org\r\nSubject: crash {n}\r\n"
       "Message-ID: <crash-{n}@example.org>\r\n\r\n" + "body line\r\n" * 40)


def make_server(tmp_path, backend, request, name="server", root_tag=None, users=4):
    extra = ""
    if backend == "ceph":
        cluster = request.getfixturevalue("ceph_cluster")
        extra = ceph_config(cluster.conf_path, root_tag or uuid.uuid4().hex[:8], pool="crashtest")
    return RunningServer(str(tmp_path / name), extra_config=extra, users=users, name=name)


def login_when_available(server, user, pw, wait: float = 90.0) -> imaplib.IMAP4:
    """Log in, retrying while storage answers UNAVAILABLE: after a kill -9 on CephFS the dead
    client's capabilities block the user's index until the MDS times its session out."""
    deadline = time.monotonic() + wait
    while True:
        imap = imaplib.IMAP4(server.host, server.imap_port)
        try:
            imap.login(user, pw)
            typ, data = imap.select("INBOX")
            if typ == "OK":
                return imap
        except imaplib.IMAP4.error as e:
            if b"[UNAVAILABLE]" not in e.args[0] or time.monotonic() > deadline:
                raise
        imap.logout()
        time.sleep(1)


def message_ids(server, user, pw, mailbox="INBOX") -> list[bytes]:
    imap = login_when_available(server, user, pw)
    typ, data = imap.select(mailbox)
    ids = []
    if int(data[0]):
        typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        ids = [re.search(rb"<crash-(\d+)@", part[1]).group(1) for part in data if isinstance(part, tuple)]
    imap.logout()
    return ids


def mailserver_cli(server, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailserver", *args, "--config", server.config_path],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("backend", ["local", "ceph"])
def test_kill_9_during_parallel_deliveries_and_appends(tmp_path, backend, request):
    server = make_server(tmp_path, backend, request)
    server.start()
    user, pw = server.new_user()
    numbers = itertools.count(1)
    acked: list[int] = []
    stop = threading.Event()

    def lmtp_worker():
        try:
            with smtplib.LMTP(server.host, server.lmtp_port) as lmtp:
                while not stop.is_set():
                    n = next(numbers)
                    if n > 500:
                        return
                    lmtp.sendmail("crash@example.org", [user], MSG.format(n=n).encode())
                    acked.append(n)
        except (smtplib.SMTPException, OSError):
            pass

    def append_worker():
        try:
            imap = imaplib.IMAP4(server.host, server.imap_port)
            imap.login(user, pw)
            while not stop.is_set():
                n = next(numbers)
                if n > 500:
                    return
                typ, _ = imap.append("INBOX", None, None, MSG.format(n=n).encode())
                if typ == "OK":
                    acked.append(n)
        except (imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError):
            pass

    workers = [threading.Thread(target=lmtp_worker) for _ in range(10)] + \
              [threading.Thread(target=append_worker) for _ in range(5)]
    for w in workers:
        w.start()
    while len(acked) < 150 and any(w.is_alive() for w in workers):
        time.sleep(0.005)
    server.stop(signal.SIGKILL)          # kill -9 with writes in flight
    stop.set()
    for w in workers:
        w.join(30)
    assert len(acked) >= 150

    server.start()
    ids = message_ids(server, user, pw)
    counts = {int(i): ids.count(i) for i in set(ids)}
    missing = [n for n in acked if n not in counts]
    assert not missing, f"acknowledged but lost: {missing[:10]}"
    assert all(c == 1 for c in counts.values()), "a message is there twice"
    server.stop()

    # force-resync links the objects written but never committed; then nothing is orphaned.
    resync = mailserver_cli(server, "force-resync", user)
    assert resync.returncode == 0, resync.stderr
    linked = json.loads(resync.stdout)["linked"]
    gc = mailserver_cli(server, "rbox", "gc", "--dry-run", "--grace", "0")
    assert gc.returncode == 0, gc.stderr
    assert json.loads(gc.stdout)["removed"] == 0
    server.start()
    after = message_ids(server, user, pw)
    assert len(after) == len(ids) + linked
    assert all(after.count(i) == 1 for i in set(after))
    server.stop()


@pytest.mark.ceph
def test_two_servers_on_one_cluster_stay_consistent(tmp_path, request):
    tag = uuid.uuid4().hex[:8]
    one = make_server(tmp_path, "ceph", request, "one", root_tag=tag)
    two = make_server(tmp_path, "ceph", request, "two", root_tag=tag)
    one.start()
    two.start()
    try:
        user, pw = one.new_user()
        a = imaplib.IMAP4(one.host, one.imap_port)
        b = imaplib.IMAP4(two.host, two.imap_port)
        for imap in (a, b):
            imap.login(user, pw)
            imap.select("INBOX")
        with smtplib.LMTP(one.host, one.lmtp_port) as lmtp:
            for n in range(1, 11):
                lmtp.sendmail("crash@example.org", [user], MSG.format(n=n).encode())
        b.append("INBOX", r"(\Flagged)", None, MSG.format(n=11).encode())
        for imap in (a, b):   # a client learns of new messages (EXISTS) before using their numbers
            deadline = time.monotonic() + 10
            while int(imap.noop()[1][0] and imap.response("EXISTS")[1][0] or 0) < 11:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.3)
        a.store("1:3", "+FLAGS", r"(\Seen)")
        b.store("4", "+FLAGS", r"(\Deleted)")
        b.expunge()
        a.store("5", "+FLAGS", "(Work)")
        deadline = time.monotonic() + 20
        while True:
            views = []
            for imap in (a, b):
                imap.noop()
                typ, data = imap.fetch("1:*", "(UID FLAGS)")
                views.append(sorted(d for d in data if d))
            if views[0] == views[1] and len(views[0]) == 10 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert views[0] == views[1]
        assert len(views[0]) == 10
        text = b" ".join(views[0])
        assert text.count(b"\\Seen") == 3 and b"Work" in text and b"\\Flagged" in text
        for imap in (a, b):
            imap.logout()
    finally:
        one.stop()
        two.stop()


@pytest.mark.ceph
def test_stalled_osd_gives_temporary_answers_then_recovers(tmp_path, request):
    cluster = request.getfixturevalue("ceph_cluster")
    extra = (ceph_config(cluster.conf_path, uuid.uuid4().hex[:8], pool="faulttest")
             .replace("op_timeout = 5.0", "op_timeout = 2.0")
             .replace('index_store = "cephfs"\n', 'index_store = "cephfs"\nbody_cache_bytes = 0\n'))
    server = RunningServer(str(tmp_path / "s"), users=2, extra_config=extra)
    server.start()
    user, pw = server.new_user()
    try:
        with smtplib.LMTP(server.host, server.lmtp_port) as lmtp:
            lmtp.sendmail("crash@example.org", [user], MSG.format(n=1).encode())
        imap = imaplib.IMAP4(server.host, server.imap_port)
        imap.login(user, pw)
        imap.select("INBOX")
        cluster.signal_daemon("osd.0", signal.SIGSTOP)
        try:
            t = time.monotonic()
            typ, data = imap.fetch("1", "(BODY.PEEK[TEXT])")
            assert typ == "NO" and b"[UNAVAILABLE]" in data[0], (typ, data)
            assert time.monotonic() - t < 15
            lmtp = smtplib.LMTP(server.host, server.lmtp_port)
            code, reply = lmtp.docmd("LHLO", "x")
            lmtp.docmd("MAIL", "FROM:<crash@example.org>")
            lmtp.docmd("RCPT", f"TO:<{user}>")
            code, _ = lmtp.docmd("DATA")
            assert code == 354
            lmtp.send(MSG.format(n=2).encode() + b".\r\n")
            code, reply = lmtp.getreply()
            assert code == 451 and reply.startswith(b"4.3.0"), (code, reply)
            lmtp.close()
            pop = poplib.POP3(server.host, server.pop3_port, timeout=30)
            pop.user(user)
            try:
                pop.pass_(pw)           # opening the mailbox may already need Ceph
                pop.retr(1)
                pytest.fail("RETR succeeded with the OSD stopped")
            except poplib.error_proto as e:
                assert b"[SYS/TEMP]" in e.args[0], e.args
            pop.close()
        finally:
            cluster.signal_daemon("osd.0", signal.SIGCONT)
        deadline = time.monotonic() + 30
        while True:          # service resumes by itself
            typ, data = imap.fetch("1", "(BODY.PEEK[TEXT])")
            if typ == "OK" or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert typ == "OK" and data[0][1].startswith(b"body line")
        imap.logout()
        with smtplib.LMTP(server.host, server.lmtp_port) as lmtp:
            assert lmtp.sendmail("crash@example.org", [user], MSG.format(n=3).encode()) == {}
        # With parallel commit, the refused delivery's index record may land once the OSD
        # answers again (its commit timed out, not failed); the server withdraws it.
        deadline = time.monotonic() + 30
        while (ids := sorted(message_ids(server, user, pw))) != [b"1", b"3"] and time.monotonic() < deadline:
            time.sleep(1)
        assert ids == [b"1", b"3"]
    finally:
        server.stop()


@pytest.mark.ceph
def test_record_whose_object_is_gone_is_unavailable_until_force_resync(tmp_path, request):
    """What a crash between a durable index record and its object's write leaves (possible
    with [rbox] parallel_commit): FETCH answers NO [UNAVAILABLE] for that message alone, and
    force-resync drops the record."""
    import rados
    cluster = request.getfixturevalue("ceph_cluster")
    tag = uuid.uuid4().hex[:8]
    server = make_server(tmp_path, "ceph", request, root_tag=tag)
    server.start()
    try:
        user, pw = server.new_user()
        conn = rados.Rados(conffile=cluster.conf_path)
        conn.connect()
        try:
            io = conn.open_ioctx("crashtest")
            io.set_namespace(f"{user}_{tag}")     # ceph_config: the namespace suffix is the tag

            def mail_objects():
                return {o.key for o in io.list_objects() if len(o.key) == 32}
            before = mail_objects()
            with smtplib.LMTP(server.host, server.lmtp_port) as lmtp:
                for n in (1, 2):
                    assert lmtp.sendmail("crash@example.org", [user], MSG.format(n=n).encode()) == {}
            server.stop()                               # nothing cached in memory any more
            mails = mail_objects() - before
            assert len(mails) == 2
            io.remove_object(mails.pop())
            io.close()
        finally:
            conn.shutdown()
        server.start()
        imap = login_when_available(server, user, pw)
        typ, data = imap.fetch("1:2", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert typ == "NO" and b"[UNAVAILABLE]" in data[0], (typ, data)
        _, fetched = imap.response("FETCH")               # the other message still came
        assert len([part for part in fetched if isinstance(part, tuple)]) == 1, fetched
        imap.logout()
        server.stop()
        resync = mailserver_cli(server, "force-resync", user)
        assert resync.returncode == 0, resync.stderr
        assert json.loads(resync.stdout)["dropped"] == 1
        server.start()
        assert len(message_ids(server, user, pw)) == 1
    finally:
        server.stop()


@pytest.mark.ceph
def test_gc_removes_what_a_crashed_write_in_parts_left_after_grace(tmp_path, request):
    """A crash between the parts of a big message's write leaves an object with data and no
    metadata: never a mail, and `rbox gc` removes it once it is older than the grace period."""
    import rados
    cluster = request.getfixturevalue("ceph_cluster")
    tag = uuid.uuid4().hex[:8]
    server = RunningServer(str(tmp_path / "server"), users=2, extra_config=ceph_config(
        cluster.conf_path, tag, pool="gctest"))
    server.start()
    try:
        user, pw = server.new_user()
        with smtplib.LMTP(server.host, server.lmtp_port) as lmtp:
            assert lmtp.sendmail("crash@example.org", [user], MSG.format(n=1).encode()) == {}
        server.stop()
        conn = rados.Rados(conffile=cluster.conf_path)
        conn.connect()
        try:
            io = conn.open_ioctx("gctest")
            io.set_namespace(f"{user}_{tag}")
            partial = uuid.uuid4().hex
            io.write_full(partial, b"From: big@example.org\r\n\r\nthe first part only")

            young = mailserver_cli(server, "rbox", "gc", "--grace", "3600")
            assert young.returncode == 0, young.stderr
            report = json.loads(young.stdout)
            assert report["incomplete_removed"] == 0 and report["young"] == 1, report
            assert partial in {o.key for o in io.list_objects()}

            gc = mailserver_cli(server, "rbox", "gc", "--grace", "0")
            assert gc.returncode == 0, gc.stderr
            report = json.loads(gc.stdout)
            assert report["incomplete_removed"] == 1 and report["removed"] == 0, report
            assert partial not in {o.key for o in io.list_objects()}
            io.close()
        finally:
            conn.shutdown()
        server.start()
        assert message_ids(server, user, pw) == [b"1"]
    finally:
        server.stop()
