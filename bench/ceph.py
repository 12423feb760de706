"""rbox on Ceph, on a throwaway cluster, beside the raw librados ceiling measured in the same run.

    .venv/bin/python -m bench.ceph [--deliveries 2000] [--big-mailbox 10000] [--rounds 3] [--baseline]

Prints, per round (medians at the end):
- raw librados: aio WriteOp (write_full + xattrs + omap ref) and aio reads of 20 KB objects,
  64 in flight (the ceiling);
- LMTP delivery of 20 KB mails to 100 users with 1 and 10 connections (rados + cephfs);
- `UID FETCH 1:1000 BODY.PEEK[]` on a cold server (body caches empty) as messages/s and as a
  fraction of the raw read rate, then again after a restart, from the directory body cache
  (`[rbox] body_cache_dir`) the first FETCH filled;
- SELECT plus `FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)` on a 10,000-message mailbox after a
  restart, with the number of RADOS reads it caused in the mail pool (target: zero), from the
  pool statistics once settled, and the OSD's own count of client reads over all pools (exact,
  and an upper bound: it includes the CephFS reads of the index itself); then the mail-pool
  reads of the LOGOUT, which writes the mailbox's checkpoint after reading the old one.
With --baseline, the LMTP deliveries are also run, in the same round, against a second server
with the serial commit path (`[rbox] parallel_commit = false`, `[cephfs] lock_lease = 0`:
object first, then a flock, append, fsync and unlock per commit), as `base_lmtp_*`.
A small untimed round runs first: a cluster just started is far slower for a minute or so.
Targets (issue 4): LMTP >= 900 msg/s with 10 connections; body FETCH >= 50% of raw reads.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import corpus, deliver  # noqa: E402
from bench.rados_store import SIZE, raw_reads, raw_writes  # noqa: E402
from mailserver.devceph import DevCeph  # noqa: E402
from tests.harness import RunningServer, ceph_config, osd_read_ops, pool_read_ops  # noqa: E402

POOL = "benchmail"


def imap_timed(server, user, pw, command: str, args: str, uid: bool = False,
               before_logout=None) -> tuple[float, float, int]:
    """(SELECT seconds, command seconds, messages); ``before_logout()`` is called while the
    session is still open (a LOGOUT writes the mailbox's checkpoint, reading the old one)."""
    m = imaplib.IMAP4(server.host, server.imap_port)
    m.login(user, pw)
    t0 = time.perf_counter()
    typ, data = m.select("INBOX")
    count = int(data[0])
    t_select = time.perf_counter() - t0
    t0 = time.perf_counter()
    typ, data = (m.uid(command, *args.split(" ", 1)) if uid else m.fetch(*args.split(" ", 1)))
    elapsed = time.perf_counter() - t0
    assert typ == "OK", data
    if before_logout:
        before_logout()
    m.logout()
    return t_select, elapsed, count


def lmtp_rates(server, args) -> dict:
    """LMTP deliveries/s of 20 KB mails to 100 users, with 1 and with 10 connections."""
    res = {}
    users = [server.new_user() for _ in range(100)]
    mails = corpus(args.deliveries, size=20000, seed=2)
    # Warm up: a user's first delivery creates their mailboxes; measure steady state.
    deliver(server.host, server.lmtp_port, [([u], mails[0]) for u, _ in users], 10)
    for conns in (1, 10):
        n = args.deliveries if conns == 10 else args.deliveries // 4
        jobs = [([users[i % 100][0]], m) for i, m in enumerate(mails[:n])]
        st = deliver(server.host, server.lmtp_port, jobs, conns)
        res[f"lmtp_{conns}"] = st["messages"] / st["seconds"]
    return res


def run_round(cluster, base: str, args) -> dict:
    res = {}
    data20 = corpus(1, size=SIZE + 1000)[0][:SIZE]     # raw_reads checks for exactly SIZE bytes
    ns = "bench-" + uuid.uuid4().hex[:8]
    oids = [uuid.uuid4().hex for _ in range(2000)]
    res["raw_write_ops"] = raw_writes(cluster.conf_path, POOL, ns, oids, data20)
    res["raw_read_ops"] = raw_reads(cluster.conf_path, POOL, ns, oids)

    if args.baseline:
        serial = RunningServer(os.path.join(base, uuid.uuid4().hex[:6]), users=101,
                               extra_config=ceph_config(cluster.conf_path, uuid.uuid4().hex[:8], pool=POOL,
                                                        rbox="parallel_commit = false\n",
                                                        cephfs="lock_lease = 0.0\n"),
                               options={"server": {"log_level": "info"}})
        serial.start()
        try:
            res.update({"base_" + k: v for k, v in lmtp_rates(serial, args).items()})
        finally:
            serial.stop()
    server_dir = os.path.join(base, uuid.uuid4().hex[:6])
    server = RunningServer(server_dir, users=101,
                           extra_config=ceph_config(cluster.conf_path, uuid.uuid4().hex[:8], pool=POOL,
                                                    rbox=f'body_cache_dir = "{server_dir}/bodies"\n'),
                           options={"server": {"log_level": "info"}})   # production logging, not the tests' debug
    server.start()
    try:
        res.update(lmtp_rates(server, args))
        big_user, big_pw = server.new_user()
        big = corpus(args.big_mailbox, seed=3)
        st = deliver(server.host, server.lmtp_port, [([big_user], m) for m in big], 10)
        res["big_delivery"] = st["messages"] / st["seconds"]
        server.restart()                       # cold: nothing loaded, body cache empty
        before = pool_read_ops(cluster.conf_path, POOL)
        osd_before = osd_read_ops(cluster.directory)
        during = {}

        def reads_so_far():
            during["osd"] = osd_read_ops(cluster.directory)
            during["pool"] = pool_read_ops(cluster.conf_path, POOL)
        t_select, t_meta, count = imap_timed(server, big_user, big_pw, "FETCH", "1:* (UID FLAGS RFC822.SIZE ENVELOPE)",
                                             before_logout=reads_so_far)
        res["select_ms"] = t_select * 1000
        res["meta_fetch_ms"] = t_meta * 1000
        res["meta_osd_reads"] = during["osd"] - osd_before
        res["meta_rados_reads"] = during["pool"] - before
        res["logout_rados_reads"] = pool_read_ops(cluster.conf_path, POOL) - during["pool"]
        assert count == args.big_mailbox
        server.restart()
        _, t_body, _ = imap_timed(server, big_user, big_pw, "FETCH", "1:1000 (BODY.PEEK[])", uid=True)
        res["body_fetch_msgs"] = 1000 / t_body
        res["body_vs_raw_read"] = res["body_fetch_msgs"] / res["raw_read_ops"]
        server.restart()                       # memory cache empty, the directory cache filled
        _, t_body, _ = imap_timed(server, big_user, big_pw, "FETCH", "1:1000 (BODY.PEEK[])", uid=True)
        res["body_fetch_dircache_msgs"] = 1000 / t_body
    finally:
        server.stop()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deliveries", type=int, default=2000)
    ap.add_argument("--big-mailbox", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", action="store_true",
                    help="also measure LMTP on a server with the serial commit path")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as base:
        cluster = DevCeph(os.path.join(base, "ceph"))
        cluster.start()
        try:
            import rados
            c = rados.Rados(conffile=cluster.conf_path)
            c.connect()
            if not c.pool_exists(POOL):
                c.create_pool(POOL)
            c.shutdown()
            # A fresh cluster is slow for its first minute or so (the first round's raw writes
            # ran at a third of later rounds'): one small untimed round first.
            run_round(cluster, base, argparse.Namespace(**{**vars(args), "deliveries": 400,
                                                           "big_mailbox": 200, "baseline": False}))
            results = []
            for r in range(args.rounds):
                res = run_round(cluster, base, args)
                results.append(res)
                print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in res.items()), flush=True)
        finally:
            cluster.stop()
    print("medians:")
    for key in results[0]:
        print(f"  {key:>20}: {statistics.median(r[key] for r in results):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
