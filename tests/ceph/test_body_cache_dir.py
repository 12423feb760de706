"""[rbox] body_cache_dir over the wire, on RADOS: after a restart (memory cache empty) a FETCH
of bodies read before is served from the directory without a single RADOS read.

Reads are counted by the OSD itself (its admin socket), which counts every read as it is served;
the index is kept on a local path here so that no CephFS read is counted with the mail reads."""

from __future__ import annotations

import imaplib
import smtplib

import pytest

from tests.harness import RunningServer, osd_read_ops

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
    server = RunningServer(str(tmp_path / "server"), users=2, extra_config=(
        f'[rbox]\nobject_store = "rados"\nindex_store = "local"\n'
        f'body_cache_dir = "{cache_dir}"\nbody_cache_dir_bytes = 10000000\n\n'
        f'[rados]\nceph_conf = "{ceph_cluster.conf_path}"\npool = "{POOL}"\nop_timeout = 5.0\n'))
    server.start()
    try:
        user, pw = server.new_user()
        sent = [(f"From: a@example.org\r\nSubject: cached {n}\r\n\r\n" + f"line {n}\r\n" * 200).encode()
                for n in range(20)]
        with smtplib.LMTP(server.host, server.lmtp_port) as lmtp:
            for m in sent:
                assert lmtp.sendmail("a@example.org", [user], m) == {}
        server.restart()                          # memory cache empty: this FETCH reads RADOS
        before = osd_read_ops(ceph_cluster.directory)
        first = fetch_bodies(server, user, pw)
        assert len(first) == 20 and all(b"line" in body for body in first)
        assert osd_read_ops(ceph_cluster.directory) - before >= 20    # the counter sees these reads
        server.restart()                          # stop waits for the cache files being written
        before = osd_read_ops(ceph_cluster.directory)
        assert fetch_bodies(server, user, pw) == first
        assert osd_read_ops(ceph_cluster.directory) - before == 0
        assert sum(1 for f in cache_dir.rglob("*") if f.is_file()) == 20
    finally:
        server.stop()
