"""RadosDict against raw librados omap operations, on a throwaway cluster, in the same run.

    .venv/bin/python -m bench.dict [--conf CEPH_CONF] [--count N] [--in-flight K] [--rounds R]

Each operation targets the ``dict`` object of one of USERS users (op i: user i mod USERS, so
the K operations in flight hit different objects), with a 16-byte value:
- raw set: an aio WriteOp with one set_omap entry (what our set sends);
- raw get: an aio ReadOp reading one omap key by name;
- raw increment: K threads, each with its own Ioctx, on its own user's counter: a synchronous
  omap read by key, ``get_last_version()``, then a WriteOp with ``assert_version`` and the new
  value (the textbook read-then-conditional-write);
- ours: RadosDict set / get / increment (K coroutines on the reactor, each increment its own
  transaction, counter per user).
Rounds are interleaved (this machine's speed drifts); medians and our/raw ratios are printed
(target: 50% or more).  Without --conf a DevCeph cluster is started and stopped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import react_on_cluster  # noqa: E402

POOL = "benchdict"
USERS = 256
VALUE = "v" * 16


def _ioctx(conf: str):
    import rados
    cluster = rados.Rados(conffile=conf)
    cluster.connect()
    return cluster, cluster.open_ioctx(POOL)


def raw_aio(conf: str, suffix: str, count: int, in_flight: int, write: bool) -> float:
    """ops/s of one-key omap writes (or reads by key), ``in_flight`` at once, from one thread."""
    cluster, io = _ioctx(conf)
    slots = threading.Semaphore(in_flight)
    ops, bad, keep = [], [], []

    def done(completion):
        if completion.get_return_value() < 0:
            bad.append(completion.get_return_value())
        slots.release()
    t = time.perf_counter()
    for i in range(count):
        slots.acquire()
        io.set_namespace(f"u{i % USERS}{suffix}")
        if write:
            op = io.create_write_op()
            io.set_omap(op, (f"priv/bench/k{i}",), (VALUE.encode(),))
            io.operate_aio_write_op(op, "dict", oncomplete=done)
        else:
            op = io.create_read_op()
            # the iterator must outlive the operation: librados fills it on completion
            keep.append(io.get_omap_vals_by_keys(op, (f"priv/bench/k{i}",))[0])
            io.operate_aio_read_op(op, "dict", oncomplete=done)
        ops.append(op)
    for _ in range(in_flight):
        slots.acquire()
    elapsed = time.perf_counter() - t
    for op in ops:
        op.release()
    io.close()
    cluster.shutdown()
    assert not bad, bad[:5]
    return count / elapsed


def raw_increments(conf: str, suffix: str, count: int, in_flight: int) -> float:
    """ops/s of read + assert_version-write increments, ``in_flight`` threads, one counter each."""
    import rados
    cluster, first = _ioctx(conf)
    ioctxs = [first] + [cluster.open_ioctx(POOL) for _ in range(in_flight - 1)]
    per_thread = count // in_flight
    conflicts = []

    def worker(n: int) -> None:
        io = ioctxs[n]                      # get_last_version() is per-Ioctx state
        io.set_namespace(f"u{n}{suffix}")
        key = "priv/bench/c"
        done = 0
        while done < per_thread:
            with rados.ReadOpCtx() as op:
                it, _ = io.get_omap_vals_by_keys(op, (key,))
                try:
                    io.operate_read_op(op, "dict")
                    values = dict(it)
                    version = io.get_last_version()
                except rados.ObjectNotFound:
                    values, version = {}, None
            new = str(int(values.get(key) or b"0") + 1).encode()
            with rados.WriteOpCtx() as op:
                if version is None:
                    op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
                else:
                    op.assert_version(version)
                io.set_omap(op, (key,), (new,))
                try:
                    io.operate_write_op(op, "dict")
                    done += 1
                except (rados.Error, OSError):
                    conflicts.append(n)     # not expected: every thread has its own counter
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(in_flight)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    for io in ioctxs:
        io.close()
    cluster.shutdown()
    return per_thread * in_flight / elapsed


async def ours(d, kind: str, count: int, in_flight: int) -> float:
    """ops/s of RadosDict set / get / increment with ``in_flight`` coroutines."""
    from twisted.internet import defer
    per_worker = count // in_flight

    async def worker(n: int):
        for j in range(per_worker):
            i = j * in_flight + n
            if kind == "set":
                await d.set(f"u{i % USERS}", f"priv/bench/k{i}", VALUE)
            elif kind == "get":
                assert await d.get(f"u{i % USERS}", f"priv/bench/k{i}") == VALUE
            else:
                await d.increment(f"u{n}", "priv/bench/c", 1)
    t = time.perf_counter()
    await defer.gatherResults([defer.Deferred.fromCoroutine(worker(n)) for n in range(in_flight)])
    return per_worker * in_flight / (time.perf_counter() - t)


async def bench(reactor, conf: str, count: int, in_flight: int, rounds: int) -> None:
    """Interleaved rounds of every measurement; print medians and ratios."""
    from twisted.internet import threads
    from plugins.rados.dict import RadosDict
    results: dict[str, list[float]] = {}
    for r in range(rounds):
        raw_sfx, our_sfx = f"_raw{r}{uuid.uuid4().hex[:6]}", f"_our{r}{uuid.uuid4().hex[:6]}"
        d = RadosDict(ceph_conf=conf, pool=POOL, namespace_suffix=our_sfx)
        await d.start()
        for name, raw, kind in (("set", lambda: raw_aio(conf, raw_sfx, count, in_flight, True), "set"),
                                ("get", lambda: raw_aio(conf, raw_sfx, count, in_flight, False), "get"),
                                ("increment", lambda: raw_increments(conf, raw_sfx, count, in_flight), "inc")):
            results.setdefault(f"raw {name}", []).append(await threads.deferToThread(raw))
            results.setdefault(f"ours {name}", []).append(await ours(d, kind, count, in_flight))
        await d.stop()
    print(f"omap, {in_flight} in flight, {count} ops per run, median of {rounds} interleaved rounds:")
    for name, values in results.items():
        print(f"  {name:15s} {statistics.median(values):8.0f} ops/s   (runs: "
              + ", ".join(f"{v:.0f}" for v in values) + ")")
    for name in ("set", "get", "increment"):
        ratio = statistics.median(results[f"ours {name}"]) / statistics.median(results[f"raw {name}"])
        print(f"  ours/raw {name:10s} {ratio:6.0%}")


def main() -> None:
    """Parse arguments, start a cluster unless given one, run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", help="ceph.conf of a running cluster (default: start a DevCeph)")
    parser.add_argument("--count", type=int, default=3000, help="operations per measurement")
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    react_on_cluster(args.conf, "bench-dict-",
                     lambda reactor, conf: bench(reactor, conf, args.count, args.in_flight, args.rounds))


if __name__ == "__main__":
    main()
