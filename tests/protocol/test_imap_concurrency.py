"""Twenty sessions on one mailbox at once over real sockets (APPEND, STORE, EXPUNGE, IDLE, NOOP).

Each session keeps its own model of the mailbox built only from what the server told it, the
way a client does: ``* n EXISTS`` grows it (the new UIDs are fetched), ``* n EXPUNGE`` removes
position n, ``* n FETCH (... UID u FLAGS (...))`` updates position n (and its UID must be the one
the model has there).  At the end, after one EXPUNGE and then a NOOP in every session, every
model must equal the mailbox as a fresh session sees it (same UIDs in the same order, same flags
apart from \\Recent, which is per session), each session's own FETCH 1:* must agree with its
model, and the messages present must be exactly those appended and not marked \\Deleted, each
once.
"""

import random
import re
import socket
import threading
import time

import imapclient

SESSIONS = 20
ROUNDS = 6
_UNTAGGED = re.compile(rb"\* (\d+) (EXISTS|EXPUNGE|FETCH \((.*)\))\Z")
_UID = re.compile(rb"UID (\d+)")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


class TrackingClient:
    """A raw-socket IMAP client that maintains its view of the selected mailbox."""

    def __init__(self, server, account, name):
        self.name = name
        self.sock = socket.create_connection((server.host, server.imap_port), timeout=30)
        self.buf = b""
        self.tag = 0
        self.model: list = []            # [uid or None, frozenset of flags or None] per position
        self.line()                       # greeting
        self.command(b"LOGIN %s %s" % (account[0].encode(), account[1].encode()))

    # --- wire ---------------------------------------------------------------------------------
    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"{self.name}: connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        assert not line.endswith(b"}"), f"{self.name}: unexpected literal in {line!r}"
        return line

    def untagged(self, line: bytes) -> None:
        m = _UNTAGGED.match(line)
        if not m:
            return
        n = int(m.group(1))
        if m.group(2) == b"EXISTS":
            assert n >= len(self.model), f"{self.name}: EXISTS {n} shrinks a view of {len(self.model)}"
            self.model.extend([None, None] for _ in range(n - len(self.model)))
        elif m.group(2) == b"EXPUNGE":
            assert 1 <= n <= len(self.model), f"{self.name}: EXPUNGE {n} of {len(self.model)}"
            del self.model[n - 1]
        else:
            assert 1 <= n <= len(self.model), f"{self.name}: FETCH {n} of {len(self.model)}"
            entry = self.model[n - 1]
            uid = _UID.search(m.group(3))
            if uid:
                if entry[0] is not None:
                    assert entry[0] == int(uid.group(1)), f"{self.name}: position {n} was UID {entry[0]}, now {uid}"
                entry[0] = int(uid.group(1))
            flags = _FLAGS.search(m.group(3))
            if flags:
                entry[1] = frozenset(f for f in flags.group(1).decode().split() if f != "\\Recent")

    def command(self, text: bytes, literal: bytes | None = None, expunge_issued_ok: bool = False) -> bytes:
        """Send a command, process the untagged answers, return the tagged line."""
        self.tag += 1
        tag = b"c%d" % self.tag
        if literal is not None:
            self.sock.sendall(tag + b" " + text + b" {%d+}\r\n" % len(literal) + literal + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + text + b"\r\n")
        while True:
            line = self.line()
            if line.startswith(tag + b" "):
                if expunge_issued_ok and line.startswith(tag + b" NO [EXPUNGEISSUED] "):
                    return line        # a new message already expunged by another session
                assert line.split()[1] == b"OK", f"{self.name}: {text!r} -> {line!r}"
                self.complete()
                return line
            self.untagged(line)

    def complete(self) -> None:
        """Fetch UIDs and flags of positions the model learnt about from EXISTS only.  One that
        another session expunged meanwhile stays unknown until this view hears the EXPUNGE."""
        unknown = [i for i, e in enumerate(self.model) if e[0] is None or e[1] is None]
        if unknown:
            self.command(b"FETCH %d:%d (UID FLAGS)" % (unknown[0] + 1, unknown[-1] + 1), expunge_issued_ok=True)

    def idle(self, seconds: float) -> None:
        self.tag += 1
        tag = b"c%d" % self.tag
        self.sock.sendall(tag + b" IDLE\r\n")
        assert self.line() == b"+ idling"
        deadline = time.monotonic() + seconds
        self.sock.settimeout(0.05)
        try:
            while time.monotonic() < deadline:
                try:
                    self.untagged(self.line())
                except (socket.timeout, TimeoutError):
                    pass
        finally:
            self.sock.settimeout(30)
        self.sock.sendall(b"DONE\r\n")
        while True:
            line = self.line()
            if line.startswith(tag + b" "):
                assert line == tag + b" OK Idle completed", line
                break
            self.untagged(line)
        self.complete()

    # --- views ------------------------------------------------------------------------------------
    def view(self) -> list:
        return [(uid, flags) for uid, flags in self.model]

    def server_view(self) -> list:
        """What the server says this session's view is (FETCH 1:* by sequence number)."""
        self.tag += 1
        tag = b"c%d" % self.tag
        self.sock.sendall(tag + b" FETCH 1:* (UID FLAGS)\r\n" if self.model else tag + b" NOOP\r\n")
        rows = {}
        while True:
            line = self.line()
            if line.startswith(tag + b" "):
                break
            m = _UNTAGGED.match(line)
            assert m and m.group(2).startswith(b"FETCH"), f"{self.name}: unexpected {line!r} in the final FETCH"
            flags = frozenset(f for f in _FLAGS.search(m.group(3)).group(1).decode().split() if f != "\\Recent")
            rows[int(m.group(1))] = (int(_UID.search(m.group(3)).group(1)), flags)
        return [rows[i] for i in sorted(rows)]


def test_twenty_sessions_on_one_mailbox_stay_consistent(mail_server, account):
    seed = imapclient.IMAPClient(mail_server.host, port=mail_server.imap_port, ssl=False, timeout=30)
    seed.login(*account)
    for i in range(5):
        seed.append("INBOX", b"From: seed@example.org\r\nMessage-ID: <seed.%d@t>\r\n\r\nseed\r\n" % i)
    clients = [TrackingClient(mail_server, account, f"s{i}") for i in range(SESSIONS)]
    for c in clients:
        c.command(b"SELECT INBOX")
        assert len(c.model) == 5 and all(e[0] for e in c.model)
    appended: dict = {}                 # uid -> Message-ID, from APPENDUID
    deleted: set = set()                # UIDs a session marked \Deleted
    lock = threading.Lock()
    errors: list = []
    start = threading.Barrier(SESSIONS)
    finish = threading.Barrier(SESSIONS)

    def work(i: int) -> None:
        c = clients[i]
        rng = random.Random(i)
        try:
            start.wait()
            for r in range(ROUNDS):
                msgid = b"<%d.%d@t>" % (i, r)
                line = c.command(b"APPEND INBOX", b"From: s%d@example.org\r\nMessage-ID: %s\r\n\r\nround %d\r\n"
                                 % (i, msgid, r))
                uid = int(re.search(rb"\[APPENDUID \d+ (\d+)\]", line).group(1))
                with lock:
                    appended[uid] = msgid
                known = [e[0] for e in c.model if e[0] is not None]
                action = rng.choice(("store", "store", "delete", "expunge", "idle", "noop"))
                if action == "store" and known:
                    c.command(b"UID STORE %d +FLAGS ($k%d \\Flagged)" % (rng.choice(known), i))
                elif action == "delete":
                    c.command(b"UID STORE %d +FLAGS (\\Deleted)" % uid)
                    with lock:
                        deleted.add(uid)
                elif action == "expunge":
                    c.command(b"EXPUNGE")
                elif action == "idle":
                    c.idle(rng.uniform(0.05, 0.3))
                else:
                    c.command(b"NOOP")
                if rng.random() < 0.3 and known:
                    c.command(b"UID STORE %d -FLAGS (\\Flagged)" % rng.choice(known))
            finish.wait()
            if i == 0:
                c.command(b"EXPUNGE")
            finish.wait()
            c.command(b"NOOP")
        except Exception as e:   # reported by the main thread
            errors.append(f"s{i}: {e!r}")
            start.abort()
            finish.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    # The truth, from a session that saw none of it happen.
    seed.select_folder("INBOX")
    truth = seed.fetch(seed.search("ALL"), ["UID", "FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    final = [(uid, frozenset(f.decode() for f in truth[uid][b"FLAGS"] if f != b"\\Recent"))
             for uid in sorted(truth)]
    for c in clients:
        assert c.view() == final, f"{c.name}: model differs from the mailbox"
        assert c.server_view() == final, f"{c.name}: the server's view differs from the mailbox"
    # Every appended message not marked \Deleted is there once; nothing else is.
    present = {uid: truth[uid][b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].split(b": ", 1)[1].strip()
               for uid in truth}
    expected = {uid: msgid for uid, msgid in appended.items() if uid not in deleted}
    assert {u: v for u, v in present.items() if not v.startswith(b"<seed.")} == expected
    assert len(expected) == SESSIONS * ROUNDS - len(deleted) and len(present) == len(expected) + 5
    assert all("\\Deleted" not in flags for _, flags in final)
    for c in clients:
        c.sock.close()
    seed.logout()
