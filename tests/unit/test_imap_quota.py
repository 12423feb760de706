"""IMAP QUOTA responses (RFC 9208) from storage's QuotaRoot: KiB rounded up, unlimited
resources and roots left out, capabilities only when quota is enabled."""

from mailserver.protocols.imap.commands.quota import capabilities, kib, quota_line
from mailserver.storage.api import QuotaResource, QuotaRoot


def test_kib_rounds_up():
    assert [kib(0), kib(1), kib(1024), kib(1025), kib(10 * 1024)] == [0, 1, 1, 2, 10]


def test_quota_line():
    root = QuotaRoot("User quota", (QuotaResource("STORAGE", 5000, 8192), QuotaResource("MESSAGE", 3, 100)))
    assert quota_line(root) == b'* QUOTA "User quota" (STORAGE 5 8 MESSAGE 3 100)\r\n'
    root = QuotaRoot("User quota", (QuotaResource("STORAGE", 5000, None), QuotaResource("MESSAGE", 3, None)))
    assert quota_line(root) == b""           # no limited resource: not shown (as Dovecot)
    root = QuotaRoot("quota", (QuotaResource("STORAGE", 1, None), QuotaResource("MESSAGE", 3, 10)))
    assert quota_line(root) == b"* QUOTA quota (MESSAGE 3 10)\r\n"


def test_capabilities():
    assert capabilities(False) == []
    assert capabilities(True) == ["QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE"]
