"""Deliver N realistic messages over LMTP with K connections, then read them back over IMAP;
the same steps against Dovecot (Maildir) in the same run.

    .venv/bin/python bench/deliver_fetch.py [--messages 2000] [--connections 10] [--users 20]
        [--rounds 3] [--no-dovecot]

Prints, per server and round: LMTP messages/s, IMAP metadata FETCH and body FETCH messages/s,
and the server's peak RSS (for Dovecot: CPU seconds of all its processes instead).
"""

from __future__ import annotations

import argparse
import imaplib
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import corpus, cpu_seconds, deliver, peak_rss_mb  # noqa: E402

from tests.harness import RunningServer  # noqa: E402


def imap_read(host: str, port: int, users: list[tuple[str, str]]) -> tuple[float, float, int]:
    """Seconds for metadata FETCH and for body FETCH over every user's INBOX; messages read."""
    meta = body = 0.0
    count = 0
    for user, pw in users:
        m = imaplib.IMAP4(host, port)
        m.login(user, pw)
        typ, data = m.select("INBOX")
        n = int(data[0])
        t0 = time.perf_counter()
        typ, _ = m.fetch("1:*", "(UID FLAGS RFC822.SIZE ENVELOPE)")
        t1 = time.perf_counter()
        typ2, _ = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
        t2 = time.perf_counter()
        assert typ == typ2 == "OK"
        meta += t1 - t0
        body += t2 - t1
        count += n
        m.logout()
    return meta, body, count


def run_round(name, host, ports, users, mails, connections, pids_fn):
    jobs = [([users[i % len(users)][0]], data) for i, data in enumerate(mails)]
    cpu0 = cpu_seconds(pids_fn())
    stats = deliver(host, ports["lmtp"], jobs, connections)
    cpu1 = cpu_seconds(pids_fn())
    meta, body, count = imap_read(host, ports["imap"], users)
    return {"server": name, "lmtp_msgs_per_s": stats["messages"] / stats["seconds"],
            "lmtp_cpu_ms_per_msg": (cpu1 - cpu0) * 1000 / stats["messages"],
            "fetch_meta_msgs_per_s": count / meta, "fetch_body_msgs_per_s": count / body,
            "messages_read": count}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-dovecot", action="store_true")
    args = ap.parse_args()
    mails = corpus(args.messages)
    mb = sum(map(len, mails)) / 1e6
    print(f"corpus: {len(mails)} messages, {mb:.1f} MB, median {statistics.median(map(len, mails)) / 1000:.1f} KB; "
          f"{args.connections} LMTP connections, {args.users} users, {args.rounds} rounds interleaved")
    results = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            ours = RunningServer(os.path.join(tmp, "ours"), users=args.users,
                                 options={"server": {"log_level": "info"}})
            ours.start()
            users = [ours.new_user() for _ in range(args.users)]
            try:
                res = run_round("mailserver", "127.0.0.1", ours.ports, users, mails, args.connections,
                                lambda: [ours.proc.pid])
                res["peak_rss_mb"] = peak_rss_mb(ours.proc.pid)
                results.append(res)
            finally:
                ours.stop()
            if not args.no_dovecot:
                from dovecot import Dovecot
                dc = Dovecot(os.path.join(tmp, "dovecot"), users)
                dc.start()
                try:
                    results.append(run_round("dovecot", "127.0.0.1", dc.ports, users, mails, args.connections,
                                             dc.pids))
                finally:
                    dc.stop()
        for res in results[-2:] if not args.no_dovecot else results[-1:]:
            print(f"round {r + 1} {res['server']:>10}: LMTP {res['lmtp_msgs_per_s']:7.0f} msg/s "
                  f"({res['lmtp_cpu_ms_per_msg']:.2f} ms CPU/msg)  FETCH meta {res['fetch_meta_msgs_per_s']:8.0f} msg/s  "
                  f"FETCH body {res['fetch_body_msgs_per_s']:7.0f} msg/s"
                  + (f"  peak RSS {res['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in res else ""))
    print("medians:")
    for server in ("mailserver", "dovecot"):
        rs = [r for r in results if r["server"] == server]
        if rs:
            med = {k: statistics.median(r[k] for r in rs) for k in
                   ("lmtp_msgs_per_s", "fetch_meta_msgs_per_s", "fetch_body_msgs_per_s")}
            print(f"  {server:>10}: LMTP {med['lmtp_msgs_per_s']:.0f} msg/s, FETCH meta "
                  f"{med['fetch_meta_msgs_per_s']:.0f} msg/s, FETCH body {med['fetch_body_msgs_per_s']:.0f} msg/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
