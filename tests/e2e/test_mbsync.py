"""mbsync (isync) keeps a local Maildir and the server in step both ways: new mail, flag changes,
deletions and a folder tree; a run after a complete sync changes nothing on either side."""

import os
import shutil
import subprocess
import time

import imapclient
import pytest

pytestmark = pytest.mark.e2e


def mail(n: int, subject: str = "Hello") -> bytes:
    return (f"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: {subject} {n}\r\n"
            f"Date: Mon, 23 Nov 2026 10:00:{n % 60:02d} +0000\r\nMessage-ID: <{n}.{subject}@example.org>\r\n"
            f"\r\nBody {n}\r\n").encode()


def write_config(path: str, mail_server, account, maildir: str) -> None:
    user, password = account
    with open(path, "w") as f:
        f.write(f"""IMAPAccount test
Host {mail_server.host}
Port {mail_server.imap_port}
User {user}
Pass {password}
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account test

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Both
Remove None
Expunge Both
SyncState *
""")


def run_mbsync(config: str) -> str:
    proc = subprocess.run(["mbsync", "-c", config, "-a"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def local_state(maildir: str) -> dict:
    """folder -> sorted list of (message file name without the flags part, flags)."""
    out = {}
    for root, dirs, files in os.walk(maildir):
        if os.path.basename(root) in ("cur", "new"):
            folder = os.path.relpath(os.path.dirname(root), maildir)
            for name in files:
                base, _, flags = name.partition(":2,")
                out.setdefault(folder, []).append((os.path.basename(root), base, flags))
    return {k: sorted(v) for k, v in out.items()}


def server_state(c: imapclient.IMAPClient) -> dict:
    """folder -> (HIGHESTMODSEQ, sorted (uid, flags, subject))."""
    out = {}
    for _, _, name in c.list_folders():
        c.select_folder(name, readonly=True)
        data = fetch_all(c, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
        # (\Recent is per session, not state: the last session to select took it.)
        msgs = sorted((uid, tuple(sorted(set(d[b"FLAGS"]) - {b"\\Recent"})), subject_text(d))
                      for uid, d in data.items())
        status = c.folder_status(name, [b"HIGHESTMODSEQ", b"UIDNEXT"])
        out[name] = (status[b"HIGHESTMODSEQ"], status[b"UIDNEXT"], msgs)
    return out


def subjects(c, folder):
    c.select_folder(folder, readonly=True)
    return sorted(subject_text(d) for d in fetch_all(c, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]).values())


def fetch_all(c, items) -> dict:
    uids = c.search(["ALL"])
    return c.fetch(uids, items) if uids else {}


def test_mbsync_two_way_sync(mail_server, account, tmp_path):
    if not shutil.which("mbsync"):
        pytest.fail("mbsync is not installed (scripts/install --test installs isync)")
    maildir = str(tmp_path / "Mail")
    os.makedirs(maildir)
    config = str(tmp_path / "mbsyncrc")
    write_config(config, mail_server, account, maildir)
    c = imapclient.IMAPClient(mail_server.host, port=mail_server.imap_port, ssl=False, timeout=30)
    c.login(*account)
    for i in range(1, 4):
        c.append("INBOX", mail(i))
    c.create_folder("Projects/Alpha")
    c.append("Projects/Alpha", mail(10, "Alpha"), flags=[b"\\Flagged"])

    # 1. First sync: the server's mail arrives locally, folder tree included.
    run_mbsync(config)
    local = local_state(maildir)
    assert len(local["INBOX"]) == 3 and len(local["Projects/Alpha"]) == 1
    assert local["Projects/Alpha"][0][2] == "F"

    # 2. Changes on both sides.
    inbox = os.path.join(maildir, "INBOX")
    first, second, third = sorted(os.path.join(inbox, sub, name) for sub in ("cur", "new")
                                  for name in os.listdir(os.path.join(inbox, sub)))
    s_first, s_third = subject_of(first), subject_of(third)
    # Flag one message (seen, flagged) and delete another (trashed) locally.
    os.rename(first, os.path.join(inbox, "cur", os.path.basename(first).split(":2,")[0] + ":2,FS"))
    os.rename(second, os.path.join(inbox, "cur", os.path.basename(second).split(":2,")[0] + ":2,ST"))
    with open(os.path.join(maildir, "INBOX", "new", f"{int(time.time())}.local1.host"), "wb") as f:
        f.write(mail(20, "Local"))
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, "Local", "Sub", sub))
    with open(os.path.join(maildir, "Local", "Sub", "new", f"{int(time.time())}.local2.host"), "wb") as f:
        f.write(mail(21, "Nested"))
    c.select_folder("INBOX")
    c.add_flags(c.search(["SUBJECT", s_third]), [b"\\Answered"])
    c.append("INBOX", mail(30, "Remote"))
    c.select_folder("Projects/Alpha")
    c.delete_messages(c.search(["ALL"]))
    c.expunge()

    # 3. Second sync: each side gets the other's changes.
    run_mbsync(config)
    assert subjects(c, "INBOX") == sorted([s_first, s_third, "Local 20", "Remote 30"])
    c.select_folder("INBOX", readonly=True)
    flags = {subject_text(d): set(d[b"FLAGS"])
             for d in fetch_all(c, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]).values()}
    assert {b"\\Flagged", b"\\Seen"} <= flags[s_first]
    assert b"\\Answered" in flags[s_third]
    assert subjects(c, "Local/Sub") == ["Nested 21"]
    assert subjects(c, "Projects/Alpha") == []
    local = local_state(maildir)
    assert len(local["INBOX"]) == 4 and not local.get("Projects/Alpha")
    by_subject = {}
    for sub in ("cur", "new"):
        d = os.path.join(maildir, "INBOX", sub)
        for name in os.listdir(d):
            by_subject[subject_of(os.path.join(d, name))] = name.partition(":2,")[2]
    assert "R" in by_subject[s_third] and set("FS") <= set(by_subject[s_first])

    # 4. Nothing left to do: another run changes neither side.
    before_local, before_server = local_state(maildir), server_state(c)
    run_mbsync(config)
    assert local_state(maildir) == before_local
    assert server_state(c) == before_server
    c.logout()


def subject_of(path: str) -> str:
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"Subject: "):
                return line[9:].decode().strip()
    return ""


def subject_text(d) -> str:
    return d[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().strip()[len("Subject: "):]
