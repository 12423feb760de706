"""[rbox] body_cache_dir over the wire, on RADOS: after a restart (memory cache empty) a FETCH
of bodies read before is served from the directory without a single RADOS read."""

from __future__ import annotations

import imaplib
import smtplib
import uuid

import pytest

from tests.harness import RunningServer, ceph_config, pool_read_ops

pytestmark = pytest.mark.ceph

POOL = "cachedirtest"


def fetch_bodies(server, user, pw) -> list[bytes]:
    imap = imaplib.IMAP4(server.host, server.imap_port)
    imap.login(user, pw)
    imap.select("INBOX", readonly=True)
    typ, data = imap.fetch("1:*", "(BODY.PEEK[])")
    assert typ == "OK", data
    imap.logout()
    return [part[1] for part in data if isinstance(part, tuple)]


def test_bodies_come_from_the_directory_after_a_restart(ceph_cluster, tmp_path):
    cache_dir = tmp_path / "bodies"
    server = RunningServer(str(tmp_path / "server"), users=2, extra_config=ceph_config(
        ceph_cluster.conf_path, uuid.uuid4().hex[:8], pool=POOL,
        rbox=f'body_cache_dir = "{cache_dir}"\nbody_cache_dir_bytes = 10000000\n'))
    server.start()
    try:
        user, pw = server.new_user()
        sent = [(f"From: a@example.org\r\nSubject: cached {n}\r\n\r\n" + f"line {n}\r\n" * 200).encode()
                for n in range(20)]
        with smtplib.LMTP(server.host, server.lmtp_port) as lmtp:
            for m in sent:
                assert lmtp.sendmail("a@example.org", [user], m) == {}
        server.restart()                          # memory cache empty: this FETCH reads RADOS
        before = pool_read_ops(ceph_cluster.conf_path, POOL)
        first = fetch_bodies(server, user, pw)
        assert len(first) == 20 and all(b"line" in body for body in first)
        server.restart()                          # stop waits for the cache files being written
        read = pool_read_ops(ceph_cluster.conf_path, POOL)
        assert read - before >= 20                # the counter sees reads (so 0 below means 0)
        assert fetch_bodies(server, user, pw) == first
        assert pool_read_ops(ceph_cluster.conf_path, POOL) - read == 0
        assert sum(1 for f in cache_dir.rglob("*") if f.is_file()) == 20
    finally:
        server.stop()
