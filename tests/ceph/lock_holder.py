"""A second process for the cross-process lock test: mounts the same CephFS through
CephFSIndexStore, takes ``lock(PATH)``, prints ``locked``, holds it until a line arrives on
stdin, releases it and prints ``released``.  With ``--try`` it only tries (timeout 0.5 s) and
prints ``locked`` or ``busy``.

    python -m tests.ceph.lock_holder CONF ROOT PATH [--try]
"""

import sys

from twisted.internet import defer, task, threads

from mailserver.storage.errors import StorageError
from plugins.cephfs.store import CephFSIndexStore


async def main(reactor, conf, root, path, only_try):
    store = CephFSIndexStore(ceph_conf=conf, root=root, op_timeout=5.0)
    await store.start()
    try:
        try:
            lock = await store.lock(path, timeout=0.5 if only_try else 30.0)
        except StorageError:
            print("busy", flush=True)
            return
        print("locked", flush=True)
        if not only_try:
            await threads.deferToThread(sys.stdin.readline)
        await lock.release()
        print("released", flush=True)
    finally:
        await store.stop()


if __name__ == "__main__":
    args = sys.argv[1:]
    only_try = "--try" in args
    conf, root, path = [a for a in args if a != "--try"]
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, conf, root, path, only_try)))
