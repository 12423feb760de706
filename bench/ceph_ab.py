"""LMTP delivery on rbox over Ceph: two servers on one throwaway cluster, differing only in the
settings given, measured in alternating runs (A B, B A, ...) so the host's drift hits both.

    .venv/bin/python -m bench.ceph_ab [--rounds 6] [--messages 1000] [--connections 10]
        [--set-a SECTION.KEY=JSON ...] [--set-b SECTION.KEY=JSON ...]

e.g. ``--set-a cephfs.lock_lease=0.2`` (B keeps the default).  Each run delivers ``--messages``
20 KB mails to 100 users.  Prints per round both rates and server CPU ms per mail, then the
medians and the median of the per-round ratios B/A (the figure to quote: on this shared
machine whole runs drift by up to 2x, rounds side by side much less).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import corpus, cpu_seconds, deliver, settings_from  # noqa: E402
from mailserver.devceph import DevCeph  # noqa: E402
from tests.harness import RunningServer, ceph_config  # noqa: E402

POOL = "benchmail"
STORAGE_SECTIONS = ("rbox", "cephfs")     # passed through ceph_config; the rest as server options


def settings(items: list[str]) -> tuple[dict, dict]:
    """(server options, {storage section: TOML lines}) from SECTION.KEY=JSON items."""
    options = settings_from(items, {"server": {"log_level": "info"}})     # production logging
    storage = {s: "".join(f"{k} = {json.dumps(v)}\n" for k, v in options.pop(s, {}).items())
               for s in STORAGE_SECTIONS}
    return options, storage


def start_server(cluster, base: str, items: list[str]) -> RunningServer:
    options, storage = settings(items)
    server = RunningServer(os.path.join(base, uuid.uuid4().hex[:6]), users=101,
                           extra_config=ceph_config(cluster.conf_path, uuid.uuid4().hex[:8], pool=POOL,
                                                    **storage),
                           options=options)
    server.start()
    return server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--set-a", action="append", default=[], metavar="SECTION.KEY=JSON")
    ap.add_argument("--set-b", action="append", default=[], metavar="SECTION.KEY=JSON")
    args = ap.parse_args()
    print(f"A: {' '.join(args.set_a) or 'defaults'}; B: {' '.join(args.set_b) or 'defaults'}; "
          f"{args.messages} mails x {args.rounds} rounds, {args.connections} connections", flush=True)
    rates: dict[str, list[float]] = {"A": [], "B": []}
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as base:
        cluster = DevCeph(os.path.join(base, "ceph"))
        cluster.start()
        servers: dict[str, RunningServer] = {}
        try:
            import rados
            c = rados.Rados(conffile=cluster.conf_path)
            c.connect()
            c.create_pool(POOL)
            c.shutdown()
            servers["A"] = start_server(cluster, base, args.set_a)
            servers["B"] = start_server(cluster, base, args.set_b)
            users = {k: [s.new_user()[0] for _ in range(100)] for k, s in servers.items()}
            mails = corpus(args.messages, size=20000, seed=2)
            for k, s in servers.items():    # first deliveries create the mailboxes: not measured
                deliver(s.host, s.lmtp_port, [([u], mails[0]) for u in users[k]], args.connections)
            for r in range(args.rounds):
                for k in ("AB" if r % 2 == 0 else "BA"):
                    s = servers[k]
                    c0 = cpu_seconds([s.proc.pid])
                    st = deliver(s.host, s.lmtp_port,
                                 [([users[k][i % 100]], m) for i, m in enumerate(mails)], args.connections)
                    rates[k].append(st["messages"] / st["seconds"])
                    cpu[k].append(1000 * (cpu_seconds([s.proc.pid]) - c0) / st["messages"])
                print(f"round {r + 1}: A {rates['A'][-1]:.0f}/s ({cpu['A'][-1]:.2f} ms)  "
                      f"B {rates['B'][-1]:.0f}/s ({cpu['B'][-1]:.2f} ms)", flush=True)
        finally:
            for s in servers.values():
                s.stop()
            cluster.stop()
    ratio = statistics.median(b / a for a, b in zip(rates["A"], rates["B"]))
    print(f"medians: A {statistics.median(rates['A']):.0f}/s ({statistics.median(cpu['A']):.2f} ms/mail)  "
          f"B {statistics.median(rates['B']):.0f}/s ({statistics.median(cpu['B']):.2f} ms/mail)  B/A {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
