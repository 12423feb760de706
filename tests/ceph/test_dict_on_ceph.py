"""The server on Ceph keeps IMAP METADATA entries and quota counters in the RADOS dictionary:
set over the wire, read back with the `rados` CLI from the user's `dict` object's omap."""

from __future__ import annotations

import imaplib
import re
import smtplib
import subprocess
import uuid

import pytest

from tests.harness import RunningServer, ceph_config

pytestmark = pytest.mark.ceph

for _name in ("GETMETADATA", "SETMETADATA", "GETQUOTAROOT"):   # imaplib only sends commands it knows
    imaplib.Commands.setdefault(_name, ("AUTH", "SELECTED"))

MAIL = b"From: a@example.org\r\nSubject: counted\r\n\r\n" + b"x" * 998 + b"\r\n"


def test_metadata_and_quota_counters_are_omap_entries_of_the_users_dict_object(ceph_cluster, tmp_path):
    tag = uuid.uuid4().hex[:8]
    server = RunningServer(str(tmp_path), users=1, extra_config=ceph_config(
        ceph_cluster.conf_path, tag, pool="dictserver") + '\n[quota]\nenabled = true\nrule = "*:storage=1M"\n')
    server.start()
    try:
        user, password = server.new_user()
        with smtplib.LMTP(server.host, server.lmtp_port) as lmtp:
            assert lmtp.sendmail("a@example.org", [user], MAIL) == {}
        c = imaplib.IMAP4(server.host, server.imap_port, timeout=30)
        c.login(user, password)
        c.create("Projects")
        typ, data = c.status("Projects", "(MAILBOXID)")
        guid = re.search(rb"MAILBOXID \(([^)]+)\)", data[0]).group(1).decode()
        typ, _ = c._simple_command("SETMETADATA", "Projects", '(/private/comment "in omap")')
        assert typ == "OK"
        typ, _ = c._simple_command("SETMETADATA", '""', '(/shared/vendor/example "server entry")')
        assert typ == "OK"
        typ, data = c._simple_command("GETMETADATA", "Projects", "/private/comment")
        assert typ == "OK" and b'"in omap"' in c.untagged_responses["METADATA"][-1]
        c.select("INBOX", readonly=True)
        typ, data = c.fetch("1", "(RFC822.SIZE)")
        size = int(re.search(rb"RFC822.SIZE (\d+)", data[0]).group(1))
        c.logout()
    finally:
        server.stop()
    out = subprocess.run(["rados", "-c", ceph_cluster.conf_path, "-p", "dictserver", "-N", f"{user}_{tag}",
                          "listomapvals", "dict"], capture_output=True, text=True, check=True).stdout
    entries = omap_values(out)
    assert entries[f"priv/metadata/mailbox/{guid}/private/comment"] == b"tin omap"   # t: stored as text
    assert entries["priv/metadata/server/shared/vendor/example"] == b"tserver entry"
    assert entries["priv/quota/messages"] == b"1"
    assert entries["priv/quota/storage"] == str(size).encode()


def omap_values(listing: str) -> dict[str, bytes]:
    """``rados listomapvals`` output (a key line, ``value (n bytes) :``, a hex dump) as a dict."""
    out: dict[str, bytes] = {}
    key = None
    for line in listing.splitlines():
        if re.match(r"value \(\d+ bytes\) :", line):
            continue
        dump = re.match(r"[0-9a-f]{8}  ((?:[0-9a-f]{2} {1,2})+)", line)
        if dump and key is not None:
            out[key] += bytes.fromhex(dump.group(1).replace(" ", ""))
        elif line and not re.fullmatch(r"[0-9a-f]{8}", line):
            key = line
            out[key] = b""
    return out
