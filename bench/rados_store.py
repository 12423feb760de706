"""Throughput of RadosObjectStore against raw librados, on a throwaway cluster.

    .venv/bin/python -m bench.rados_store [--conf CEPH_CONF] [--count N] [--rounds R]

Writes and reads 20 KB objects with 64 operations in flight: raw librados (aio WriteOp /
aio_read driven from a plain thread, the same operation contents as the driver) and the
driver (coroutines on the Twisted reactor).  Rounds are interleaved (this machine's speed
drifts); medians are printed.  Without --conf a DevCeph cluster is started and stopped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import uuid

from bench.common import react_on_cluster

SIZE = 20 * 1024
IN_FLIGHT = 64
META = {"M": "0" * 32, "G": "1" * 32, "R": "1700000000", "S": "1700000001", "Z": str(SIZE),
        "V": str(SIZE + 400), "B": "INBOX", "I": "1"}


def raw_writes(conf: str, pool: str, ns: str, oids: list[str], data: bytes) -> float:
    import rados
    cluster = rados.Rados(conffile=conf)
    cluster.connect()
    io = cluster.open_ioctx(pool)
    io.set_namespace(ns)
    slots = threading.Semaphore(IN_FLIGHT)
    ops = []

    def done(completion):
        slots.release()
    t = time.perf_counter()
    for oid in oids:
        slots.acquire()
        op = io.create_write_op()
        op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
        op.write_full(data)
        for k, v in META.items():
            op.set_xattr(k, v.encode())
        io.set_omap(op, ("ref.",), (b"",))
        io.operate_aio_write_op(op, oid, oncomplete=done)
        ops.append(op)
    for _ in range(IN_FLIGHT):
        slots.acquire()
    elapsed = time.perf_counter() - t
    for op in ops:
        op.release()
    io.close()
    cluster.shutdown()
    return len(oids) / elapsed


def raw_reads(conf: str, pool: str, ns: str, oids: list[str]) -> float:
    import rados
    cluster = rados.Rados(conffile=conf)
    cluster.connect()
    io = cluster.open_ioctx(pool)
    io.set_namespace(ns)
    slots = threading.Semaphore(IN_FLIGHT)
    bad = []

    def done(completion, data):
        if completion.get_return_value() != SIZE:
            bad.append(completion.get_return_value())
        slots.release()
    t = time.perf_counter()
    for oid in oids:
        slots.acquire()
        io.aio_read(oid, 64 * 1024, 0, done)        # same first-read size as the driver
    for _ in range(IN_FLIGHT):
        slots.acquire()
    elapsed = time.perf_counter() - t
    io.close()
    cluster.shutdown()
    assert not bad, bad[:5]
    return len(oids) / elapsed


async def driver_run(store, ns, oids, data, write: bool) -> float:
    from twisted.internet import defer
    queue = list(oids)

    async def worker():
        while queue:
            oid = queue.pop()
            if write:
                await store.put(ns, oid, data, META)
            else:
                got = await store.get(ns, oid)
                assert len(got) == SIZE
    t = time.perf_counter()
    await defer.gatherResults([defer.Deferred.fromCoroutine(worker()) for _ in range(IN_FLIGHT)])
    return len(oids) / (time.perf_counter() - t)


async def bench(reactor, conf: str, count: int, rounds: int) -> None:
    from twisted.internet import threads
    from plugins.rados.store import RadosObjectStore
    pool = "bench"
    store = RadosObjectStore(ceph_conf=conf, pool=pool)
    await store.start()
    data = os.urandom(SIZE)
    results: dict[str, list[float]] = {}
    for r in range(rounds):
        ns_raw, ns_drv = f"raw{r}{uuid.uuid4().hex[:6]}", f"drv{r}{uuid.uuid4().hex[:6]}"
        oids = [uuid.uuid4().hex for _ in range(count)]
        results.setdefault("raw librados write", []).append(
            await threads.deferToThread(raw_writes, conf, pool, ns_raw, oids, data))
        results.setdefault("driver put", []).append(await driver_run(store, ns_drv, oids, data, True))
        results.setdefault("raw librados read", []).append(
            await threads.deferToThread(raw_reads, conf, pool, ns_raw, oids))
        results.setdefault("driver get", []).append(await driver_run(store, ns_drv, oids, data, False))
    await store.stop()
    print(f"20 KB objects, {IN_FLIGHT} in flight, {count} per run, median of {rounds} interleaved rounds:")
    for name, values in results.items():
        print(f"  {name:20s} {statistics.median(values):8.0f} ops/s   (runs: "
              + ", ".join(f"{v:.0f}" for v in values) + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", help="ceph.conf of a running cluster (default: start a DevCeph)")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    react_on_cluster(args.conf, "bench-ceph-", lambda reactor, conf: bench(reactor, conf, args.count, args.rounds))


if __name__ == "__main__":
    main()
