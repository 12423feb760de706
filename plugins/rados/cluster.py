"""Connecting to Ceph: the one place that builds a librados client handle.

Shared by the RADOS object store and the RADOS dictionary, so both connect with the same
timeouts, create their pool the same way and tag it with the ``mailserver`` application.
Blocking: call it in a thread pool, never on the reactor.
"""

from __future__ import annotations

import math

from twisted.logger import Logger

from mailserver.storage.errors import ErrorKind, StorageError

log = Logger()


def librados_seconds(op_timeout: float) -> int:
    """``op_timeout`` as librados applies it: whole seconds, at least 1."""
    return max(1, math.ceil(op_timeout))


def connect(ceph_conf: str, client_name: str, pool: str, op_timeout: float, on_connected=None):
    """Connect, create ``pool`` if missing and open it: ``(cluster, ioctx)``.

    ``on_connected(cluster)`` runs before the handle is returned (reading cluster settings) and
    may raise ``rados.Error``.  Any failure is StorageError(TEMPORARY) naming ``ceph_conf``,
    and the half-built client is shut down (a live client thread keeps a process from exiting)."""
    import rados
    t = str(librados_seconds(op_timeout))
    what = f"cannot connect to Ceph at {ceph_conf} as {client_name}"
    try:
        cluster = rados.Rados(conffile=ceph_conf, name=client_name,
                              conf={"client_mount_timeout": t, "rados_mon_op_timeout": t,
                                    "rados_osd_op_timeout": t})
    except rados.Error as e:
        raise StorageError(ErrorKind.TEMPORARY, f"{what}: {e}") from None
    try:
        cluster.connect(timeout=int(t))
        if not cluster.pool_exists(pool):
            try:
                cluster.create_pool(pool)
                log.info("rados: created pool {pool}", pool=pool)
            except rados.ObjectExists:      # another server created it meanwhile
                pass
        ioctx = cluster.open_ioctx(pool)
        if "mailserver" not in ioctx.application_list():
            try:
                ioctx.application_enable("mailserver", force=True)
            except rados.Error as e:    # a client with read-only mon caps: the admin's job
                log.warn("rados: cannot tag pool {pool} with application 'mailserver': {e}",
                         pool=pool, e=e)
        if on_connected is not None:
            on_connected(cluster)
    except rados.Error as e:
        cluster.shutdown()
        raise StorageError(ErrorKind.TEMPORARY, f"{what}: {e}") from None
    return cluster, ioctx
