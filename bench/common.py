"""Shared pieces of the benchmarks: a realistic mail corpus, a light LMTP client, process memory.

Run benchmarks from the repository root with the project's venv, e.g.
``.venv/bin/python bench/deliver_fetch.py``.  Each prints its own figures beside a baseline
measured in the same run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

WORDS = ("the quick brown fox jumps over lazy dog meeting report budget quarter review project "
         "deadline schedule customer invoice shipment contract proposal update thanks regards "
         "tomorrow please attached find draft final version comments question answer").split()


def _text(rng: random.Random, size: int) -> str:
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        out.append(line)
        n += len(line) + 2
    return "\r\n".join(out)


def make_mail(rng: random.Random, size: int, n: int) -> bytes:
    """A message of about ``size`` bytes: a realistic header, text, and above 12 KB a
    multipart/mixed with an HTML alternative and a base64 attachment."""
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
    header = (f"Return-Path: <sender{n % 97}@example.net>\r\n"
              f"Received: from mx{n % 5}.example.net (mx{n % 5}.example.net [192.0.2.{n % 250}])\r\n"
              f"\tby mail.example.org with ESMTPS id {n:08x}\r\n\tfor <user@example.org>; Mon, 23 Nov 2026 10:00:00 +0000\r\n"
              f"From: Sender {n % 97} <sender{n % 97}@example.net>\r\nTo: User <user@example.org>\r\n"
              f"Cc: team{n % 7}@example.org\r\nSubject: {subject} #{n}\r\n"
              f"Date: Mon, 23 Nov 2026 {n % 24:02d}:{n % 60:02d}:00 +0000\r\n"
              f"Message-ID: <{n}.{rng.randrange(10**9)}@example.net>\r\nMIME-Version: 1.0\r\n"
              f"X-Mailer: bench\r\nX-Spam-Score: {rng.random():.2f}\r\n")
    if size < 12000:
        body = _text(rng, max(200, size - len(header)))
        return (header + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n").encode()
    boundary = f"=_b{n}_{rng.randrange(10**6)}"
    text = _text(rng, 1500)
    attach_raw = rng.randbytes(max(1000, (size - len(header) - 4000) * 3 // 4))
    attach = base64.encodebytes(attach_raw).decode().replace("\n", "\r\n")
    body = (f"--{boundary}\r\nContent-Type: multipart/alternative; boundary=\"alt{boundary}\"\r\n\r\n"
            f"--alt{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
            f"--alt{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>{text}</p></body></html>\r\n"
            f"--alt{boundary}--\r\n"
            f"--{boundary}\r\nContent-Type: application/pdf; name=\"doc{n}.pdf\"\r\n"
            f"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"doc{n}.pdf\"\r\n\r\n"
            f"{attach}--{boundary}--\r\n")
    return (header + f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n" + body).encode()


def realistic_sizes(rng: random.Random, count: int) -> list[int]:
    """Sizes with a long tail: most mail a few KB, some tens of KB, a few hundreds of KB."""
    out = []
    for _ in range(count):
        r = rng.random()
        if r < 0.70:
            out.append(rng.randint(2000, 12000))
        elif r < 0.95:
            out.append(rng.randint(12000, 80000))
        else:
            out.append(rng.randint(80000, 400000))
    return out


def corpus(count: int, seed: int = 1, size: int | None = None) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [size] * count if size else realistic_sizes(rng, count)
    return [make_mail(rng, s, i) for i, s in enumerate(sizes)]


# --- LMTP load ----------------------------------------------------------------------------------

class LMTPError(Exception):
    pass


async def _reply(reader) -> list[bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise LMTPError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            return lines


def _stuff(data: bytes) -> bytes:
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data.replace(b"\r\n.", b"\r\n..") if b"\r\n." in data else data


async def lmtp_connection(host: str, port: int, jobs: asyncio.Queue, stats: dict) -> None:
    """One LMTP connection delivering (recipients, data) jobs from a queue until it is empty."""
    reader, writer = await asyncio.open_connection(host, port)
    await _reply(reader)
    writer.write(b"LHLO bench.example.org\r\n")
    await _reply(reader)
    while True:
        try:
            rcpts, data = jobs.get_nowait()
        except asyncio.QueueEmpty:
            break
        cmds = [b"MAIL FROM:<bench@example.net>\r\n"] + [b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts]
        writer.write(b"".join(cmds) + b"DATA\r\n")          # PIPELINING
        for _ in cmds:
            r = await _reply(reader)
            if not r[-1].startswith(b"250"):
                raise LMTPError(r[-1].decode().strip())
        r = await _reply(reader)
        if not r[-1].startswith(b"354"):
            raise LMTPError(r[-1].decode().strip())
        writer.write(_stuff(data) + b".\r\n")
        for _ in rcpts:
            r = await _reply(reader)
            if not r[-1].startswith(b"250"):
                raise LMTPError(r[-1].decode().strip())
        stats["messages"] += 1
        stats["deliveries"] += len(rcpts)
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()


def deliver(host: str, port: int, jobs: list, connections: int) -> dict:
    """Deliver every (recipients, data) job over ``connections`` parallel LMTP connections."""
    async def run():
        q: asyncio.Queue = asyncio.Queue()
        for j in jobs:
            q.put_nowait(j)
        stats = {"messages": 0, "deliveries": 0}
        t0 = time.perf_counter()
        await asyncio.gather(*(lmtp_connection(host, port, q, stats) for _ in range(connections)))
        stats["seconds"] = time.perf_counter() - t0
        return stats
    return asyncio.run(run())


# --- process accounting -------------------------------------------------------------------------

def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process, MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def settings_from(items: list[str], options: dict | None = None) -> dict:
    """``--set SECTION.KEY=JSON`` items as ``{section: {key: value}}``, added to ``options``."""
    options = options if options is not None else {}
    for item in items:
        name, _, value = item.partition("=")
        section, _, key = name.partition(".")
        options.setdefault(section, {})[key] = json.loads(value)
    return options


def with_children(pid: int) -> list[int]:
    """``pid`` and its live child processes (our LMTP workers, Dovecot's service processes)."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def cpu_seconds(pids) -> float:
    """User + system CPU seconds used so far by processes and their reaped children (Dovecot's
    short-lived workers show up in the master's cutime/cstime once they exit)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / tick
        except (FileNotFoundError, IndexError):
            pass
    return total


def react_on_cluster(conf: str | None, prefix: str, bench) -> None:
    """Run ``bench(reactor, conf)`` (a coroutine function) in a reactor, on the cluster whose
    ceph.conf is ``conf``, or on a throwaway DevCeph cluster started and stopped around it."""
    import tempfile
    from twisted.internet import defer, task
    cluster = None
    if conf is None:
        from mailserver.devceph import DevCeph
        cluster = DevCeph(tempfile.mkdtemp(prefix=prefix))
        cluster.start()
        conf = cluster.conf_path
    try:
        task.react(lambda reactor: defer.ensureDeferred(bench(reactor, conf)))
    finally:
        if cluster is not None:
            cluster.stop()
