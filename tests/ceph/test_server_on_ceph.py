"""`mailserver serve` on the rados object store and the cephfs index store: a refusal to start
when Ceph is unreachable, and a mail delivered over LMTP read back over IMAP and POP3, also
after a restart."""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib
import time

import pytest

from tests.ceph.test_rados_store import _dead_cluster_conf
from tests.harness import RunningServer, ceph_config

pytestmark = pytest.mark.ceph

MAIL = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: stored in Ceph\r\n"
        b"Message-ID: <ceph-1@example.org>\r\n\r\nThe body.\r\n")


def test_serve_refuses_to_start_without_ceph(tmp_path):
    server = RunningServer(str(tmp_path), extra_config=ceph_config(_dead_cluster_conf(tmp_path), "dead"),
                           users=1)
    t = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        server.start(timeout=30)
    assert time.monotonic() - t < 15
    assert "server exited with 1" in str(info.value)
    assert "cannot connect to Ceph at" in server.log_text()


def test_lmtp_delivery_read_over_imap_and_pop3_survives_restart(ceph_cluster, tmp_path):
    server = RunningServer(str(tmp_path), users=2,
                           extra_config=ceph_config(ceph_cluster.conf_path, os.urandom(4).hex()))
    server.start()
    try:
        user, password = server.new_user()
        with smtplib.LMTP("127.0.0.1", server.lmtp_port) as lmtp:
            lmtp.sendmail("a@example.org", [user], MAIL)
        for round_ in ("first", "after restart"):
            imap = imaplib.IMAP4("127.0.0.1", server.imap_port)
            try:
                imap.login(user, password)
                typ, data = imap.select("INBOX")
                assert (typ, data) == ("OK", [b"1"]), round_
                typ, data = imap.fetch("1", "(BODY.PEEK[])")
                stored = data[0][1]                 # the server prepends Return-Path/Received
                assert typ == "OK" and stored.endswith(MAIL), round_
                imap.logout()
            finally:
                imap.shutdown() if imap.state != "LOGOUT" else None
            pop = poplib.POP3("127.0.0.1", server.pop3_port)
            try:
                pop.user(user)
                pop.pass_(password)
                _, lines, _ = pop.retr(1)
                assert b"\r\n".join(lines) + b"\r\n" == stored, round_
            finally:
                pop.quit()
            if round_ == "first":
                server.restart()
    finally:
        assert server.stop() == 0, server.log_text()[-3000:]
