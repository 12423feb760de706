"""LMTP delivery rate of our server against Dovecot's LMTP (Maildir) in the same run.

    .venv/bin/python bench/lmtp.py [--rounds 5] [--size 20000] [--messages 400] [--users 100]
        [--fanout-messages 20] [--no-dovecot]

Three scenarios, each run on both servers in every round, the order alternating from round to
round (the machine is shared and its speed drifts: only interleaved figures compare):

  1conn    ``--messages`` mails of ``--size`` bytes over 1 pipelined connection, one recipient each
  10conn   the same over 10 connections
  fanout   ``--fanout-messages`` mails to 100 recipients each, over 1 connection (deliveries/s)

Both servers run for the whole benchmark with production-like settings (our log level info; both
fsync every delivery).  Prints each round and the medians: deliveries/s and server CPU ms per
delivery (Dovecot: all its processes), and the median of the rounds' ratios ours/Dovecot.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import corpus, cpu_seconds, deliver, settings_from, with_children  # noqa: E402

from tests.harness import RunningServer  # noqa: E402

SCENARIOS = ("1conn", "10conn", "fanout")


def jobs_for(scenario: str, users: list[str], mails: list[bytes], fanout_mails: list[bytes]):
    if scenario == "fanout":
        return [(users[:100], m) for m in fanout_mails], 1
    return [([users[i % len(users)]], m) for i, m in enumerate(mails)], (1 if scenario == "1conn" else 10)


def run(port: int, pids, jobs, connections: int) -> dict:
    cpu0 = cpu_seconds(pids())
    stats = deliver("127.0.0.1", port, jobs, connections)
    cpu1 = cpu_seconds(pids())
    return {"per_s": stats["deliveries"] / stats["seconds"],
            "cpu_ms": (cpu1 - cpu0) * 1000 / stats["deliveries"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--fanout-messages", type=int, default=20)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument("--only", choices=SCENARIOS, action="append", help="run only these scenarios")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                    help="a configuration value for our server, e.g. server.io_threads=4")
    args = ap.parse_args()
    options = settings_from(args.set, {"server": {"log_level": "info"}})
    scenarios = args.only or SCENARIOS
    mails = corpus(args.messages, seed=1, size=args.size)
    fanout_mails = corpus(args.fanout_messages, seed=2, size=args.size)
    print(f"{args.messages} mails of ~{args.size // 1000} KB per round, fan-out {args.fanout_messages} mails x 100 "
          f"recipients, {args.users} users, {args.rounds} rounds interleaved", flush=True)
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ours = RunningServer(os.path.join(tmp, "ours"), users=max(args.users, 100), options=options)
        ours.start()
        users = [ours.new_user() for _ in range(max(args.users, 100))]
        servers = [("mailserver", ours.lmtp_port, lambda: with_children(ours.proc.pid))]
        dc = None
        try:
            if not args.no_dovecot:
                from dovecot import Dovecot
                dc = Dovecot(os.path.join(tmp, "dovecot"), users)
                dc.start()
                servers.append(("dovecot", dc.ports["lmtp"], dc.pids))
            names = [u for u, _ in users]
            for r in range(args.rounds):
                order = servers if r % 2 == 0 else servers[::-1]
                for scenario in scenarios:
                    jobs, conns = jobs_for(scenario, names[:args.users] if scenario != "fanout" else names,
                                           mails, fanout_mails)
                    for name, port, pids in order:
                        res = run(port, pids, jobs, conns)
                        results.setdefault((name, scenario), []).append(res)
                        print(f"round {r + 1} {scenario:>7} {name:>10}: {res['per_s']:7.0f} deliveries/s  "
                              f"{res['cpu_ms']:.2f} ms CPU/delivery", flush=True)
        finally:
            ours.stop()
            if dc is not None:
                dc.stop()
    print("medians (deliveries/s, server CPU ms per delivery):")
    for scenario in scenarios:
        line = [f"  {scenario:>7}"]
        for name, _, _ in servers:
            rs = results[(name, scenario)]
            line.append(f"{name} {statistics.median(r['per_s'] for r in rs):6.0f}/s "
                        f"{statistics.median(r['cpu_ms'] for r in rs):.2f} ms")
        if len(servers) == 2:
            # The machine's speed drifts between rounds: the ratio within each round is steadier.
            pairs = zip(results[("mailserver", scenario)], results[("dovecot", scenario)])
            line.append(f"ours/dovecot {statistics.median(a['per_s'] / b['per_s'] for a, b in pairs):.2f}")
        print("   ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
