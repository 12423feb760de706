"""librados asynchronous operations as Deferreds, each with a deadline.

librados runs completion callbacks on its own threads; ``AioBridge.submit`` hands the result
to the reactor with ``reactor.callFromThread`` and fires a Deferred there.  Every operation
gets a deadline: if librados has not answered within ``timeout`` seconds the Deferred fails
with StorageError(TEMPORARY) and a late answer is ignored.  (librados is configured with the
same ``rados_osd_op_timeout``, so the abandoned operation is also ended on its side and never
holds memory for ever.)
"""

from __future__ import annotations

import errno
import os

from twisted.internet.defer import Deferred

from mailserver.storage.errors import ErrorKind, StorageError


def storage_error(code: int, what: str) -> StorageError:
    """StorageError for a positive errno returned by librados about ``what``."""
    text = f"{what}: {os.strerror(code)} (errno {code})"
    if code == errno.ENOENT:
        return StorageError(ErrorKind.NOT_FOUND, text)
    if code in (errno.EFBIG, errno.E2BIG, errno.EMSGSIZE):
        return StorageError(ErrorKind.TOO_BIG, text)
    if code == errno.EEXIST:
        return StorageError(ErrorKind.EXISTS, text)
    if code in (errno.EINVAL, errno.EBADF, errno.ENAMETOOLONG):
        return StorageError(ErrorKind.INTERNAL, text)
    # ETIMEDOUT, ENOSPC/EDQUOT (pool full or over quota), EIO, ESHUTDOWN, EBLOCKLISTED...: retry later
    return StorageError(ErrorKind.TEMPORARY, text)


class AioBridge:
    """Submits librados aio calls and turns their completions into Deferreds on the reactor."""

    def __init__(self, reactor, timeout: float):
        self.reactor = reactor
        self.timeout = timeout
        self.in_flight: set[Deferred] = set()

    def submit(self, what: str, start, ok_errnos=frozenset(), cleanup=None) -> Deferred:
        """Start one aio operation and return a Deferred of its outcome.

        ``start(on_complete)`` must issue the call (``ioctx.aio_read(..., on_complete)``...)
        on the reactor thread.  The Deferred fires with ``(return_value, payload)`` where
        payload is what librados passed after the completion (read data, stat size...).
        Errors fail it with StorageError, except those in ``ok_errnos``, which fire it
        normally with a negative return value for the caller to interpret.

        ``cleanup()`` (releasing a ReadOp/WriteOp) runs on the reactor thread once librados is
        done with the operation -- even after the deadline, never before: librados may still
        write into an operation's buffers until it completes.
        """
        d = Deferred()
        call_from_thread = self.reactor.callFromThread

        def on_complete(completion, *payload):      # librados thread
            call_from_thread(finish, completion.get_return_value(), payload)

        def finish(rv, payload):                    # reactor thread
            if cleanup is not None:
                cleanup()
            if d.called:                            # deadline passed first
                return
            timer.cancel()
            self.in_flight.discard(d)
            if rv < 0 and -rv not in ok_errnos:
                d.errback(storage_error(-rv, what))
            else:
                d.callback((rv, payload))

        def expire():
            self.in_flight.discard(d)
            d.errback(StorageError(ErrorKind.TEMPORARY,
                                   f"{what}: no answer from Ceph within {self.timeout:g} s"))

        timer = self.reactor.callLater(self.timeout, expire)
        try:
            start(on_complete)
        except Exception as e:   # rados.Error raised at submission (shut down, bad argument)
            timer.cancel()
            if cleanup is not None:
                cleanup()
            code = getattr(e, "errno", None)
            if isinstance(code, int) and code > 0:
                raise storage_error(code, what) from e
            raise StorageError(ErrorKind.TEMPORARY, f"{what}: {e}") from e
        self.in_flight.add(d)
        return d
