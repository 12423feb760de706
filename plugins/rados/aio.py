"""librados asynchronous operations as Deferreds, each with a deadline.

librados runs completion callbacks on its own threads; ``AioBridge.submit`` hands the result
to the reactor with ``reactor.callFromThread`` and fires a Deferred there.  Every operation
gets a deadline: if librados has not answered within ``timeout`` seconds the Deferred fails
with StorageError(TEMPORARY) and a late answer is ignored.  (librados is configured with the
same ``rados_osd_op_timeout``, so the abandoned operation is also ended on its side and never
holds memory for ever.)
"""

from __future__ import annotations

import collections
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


class _Op:
    """One operation in flight: its Deferred, deadline and what to do when librados answers."""

    __slots__ = ("d", "what", "deadline", "ok_errnos", "cleanup")

    def __init__(self, d, what, deadline, ok_errnos, cleanup):
        self.d, self.what, self.deadline, self.ok_errnos, self.cleanup = d, what, deadline, ok_errnos, cleanup


class AioBridge:
    """Submits librados aio calls and turns their completions into Deferreds on the reactor.

    Two costs dominate at high rates and are kept low: waking the reactor from a librados
    thread (completions are queued and one ``callFromThread`` drains every completion that
    arrived meanwhile) and per-operation timers (one sweep every ``SWEEP`` seconds expires
    overdue operations, so a deadline is honoured within ``timeout + SWEEP``).
    """

    SWEEP = 0.25

    def __init__(self, reactor, timeout: float):
        self.reactor = reactor
        self.timeout = timeout
        self.in_flight: dict[Deferred, _Op] = {}
        self._completed: collections.deque = collections.deque()
        self._drain_pending = False
        self._sweeper = None

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
        op = _Op(d, what, self.reactor.seconds() + self.timeout, ok_errnos, cleanup)
        completed = self._completed

        def on_complete(completion, *payload):      # librados thread
            completed.append((op, completion.get_return_value(), payload))
            if not self._drain_pending:
                self._drain_pending = True
                self.reactor.callFromThread(self._drain)

        try:
            start(on_complete)
        except Exception as e:   # rados.Error raised at submission (shut down, bad argument)
            if cleanup is not None:
                cleanup()
            code = getattr(e, "errno", None)
            if isinstance(code, int) and code > 0:
                raise storage_error(code, what) from e
            raise StorageError(ErrorKind.TEMPORARY, f"{what}: {e}") from e
        self.in_flight[d] = op
        if self._sweeper is None:
            self._sweeper = self.reactor.callLater(self.SWEEP, self._sweep)
        return d

    def _drain(self) -> None:
        """Reactor thread: fire the Deferreds of every completion queued so far."""
        self._drain_pending = False            # before popping: a later append schedules anew
        completed = self._completed
        while completed:
            op, rv, payload = completed.popleft()
            if op.cleanup is not None:
                op.cleanup()
            if self.in_flight.pop(op.d, None) is None:
                continue                       # the deadline passed first; late answer dropped
            if rv < 0 and -rv not in op.ok_errnos:
                op.d.errback(storage_error(-rv, op.what))
            else:
                op.d.callback((rv, payload))

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.reactor.seconds()
        overdue = [op for op in self.in_flight.values() if op.deadline <= now]
        for op in overdue:
            del self.in_flight[op.d]
            op.d.errback(StorageError(ErrorKind.TEMPORARY,
                                      f"{op.what}: no answer from Ceph within {self.timeout:g} s"))
        if self.in_flight:
            self._sweeper = self.reactor.callLater(self.SWEEP, self._sweep)

    async def finish(self, *also: Deferred) -> None:
        """Wait for ``also`` (a driver's own queued work) and every operation in flight (each
        ends by its deadline at the latest), ignoring their failures -- each caller reports its
        own -- then ``stop``."""
        for d in list(also) + list(self.in_flight):
            try:
                await d
            except Exception:
                pass
        self.stop()

    def stop(self) -> None:
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
