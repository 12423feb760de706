"""Login policy: which client networks may log in without TLS, and the brute-force penalty.

The penalty works like Dovecot's auth penalty: every failed login from an address counts; once an
address has ``threshold`` failures, its next login is held back ``initial`` seconds, doubling with
each further failure up to ``max`` -- counted from its last failure, so a person retyping a
password slowly is not held back at all.  An address is forgiven ``forget`` seconds after its
last failure, and at once by a successful login.  A user with ``user_max_failures`` failures
(from any address) is refused without checking the password until ``forget`` seconds pass
without a failure: this bounds distributed guessing at the price that an attacker can keep one
account locked (exempt networks still get in).  State is per process and bounded in size.
"""

from __future__ import annotations

import collections
import ipaddress
import time
from typing import Callable

MAX_TRACKED = 100_000          # addresses and users remembered at most (oldest dropped first)


def host_of(peer: str) -> str:
    """The address part of ``host:port`` / ``[v6]:port`` (the peer strings protocols log)."""
    if peer.startswith("["):
        return peer[1:].partition("]")[0]
    if peer.count(":") == 1:
        return peer.partition(":")[0]
    return peer


class NetworkList:
    """A list of networks (``127.0.0.0/8``, ``::1``, ``192.0.2.7``); IPv4-mapped IPv6 addresses
    match their IPv4 networks."""

    def __init__(self, specs: list[str]):
        self.networks = [ipaddress.ip_network(s, strict=False) for s in specs]

    def __contains__(self, host: str) -> bool:
        if not host or not self.networks:
            return False
        try:
            addr = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False            # UNIX socket or unknown transport: not a listed network
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == n.version and addr in n for n in self.networks)


class _Record:
    __slots__ = ("failures", "last")

    def __init__(self):
        self.failures = 0
        self.last = 0.0


class Penalty:
    """Failure counts per address and per user (see the module docstring)."""

    def __init__(self, *, threshold: int = 3, initial: float = 2.0, maximum: float = 15.0,
                 forget: float = 3600.0, user_max_failures: int = 30, exempt: NetworkList | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.initial = initial
        self.maximum = maximum
        self.forget = forget
        self.user_max_failures = user_max_failures
        self.exempt = exempt or NetworkList([])
        self._clock = clock
        self._hosts: collections.OrderedDict[str, _Record] = collections.OrderedDict()
        self._users: collections.OrderedDict[str, _Record] = collections.OrderedDict()

    @classmethod
    def from_config(cls, config) -> "Penalty":
        a = config.auth
        return cls(threshold=a.penalty_threshold, initial=a.penalty_initial, maximum=a.penalty_max,
                   forget=a.penalty_forget, user_max_failures=a.user_max_failures,
                   exempt=NetworkList(a.penalty_exempt_networks))

    def _get(self, table: collections.OrderedDict, key: str) -> _Record | None:
        record = table.get(key)
        if record is not None and self._clock() - record.last > self.forget:
            del table[key]
            return None
        return record

    def delay(self, host: str) -> float:
        """Seconds to hold back the next login from ``host`` (0: none)."""
        if host in self.exempt:
            return 0.0
        record = self._get(self._hosts, host)
        if record is None or record.failures < self.threshold:
            return 0.0
        full = min(self.maximum, self.initial * 2 ** (record.failures - self.threshold))
        return max(0.0, full - (self._clock() - record.last))

    def user_locked(self, user: str, host: str) -> bool:
        """Too many failures for ``user``: refuse it unchecked (not from exempt networks)."""
        if host in self.exempt:
            return False
        record = self._get(self._users, user)
        return record is not None and record.failures >= self.user_max_failures

    def failures(self, host: str) -> int:
        record = self._get(self._hosts, host)
        return record.failures if record else 0

    def failed(self, host: str, user: str) -> None:
        """Count a failed login of ``user`` (normalised; "" when unusable) from ``host``."""
        now = self._clock()
        for table, key in ((self._hosts, host), (self._users, user)):
            if not key:
                continue
            record = self._get(table, key) or _Record()
            record.failures += 1
            record.last = now
            table[key] = record
            table.move_to_end(key)
            self._prune(table, now)

    def succeeded(self, host: str) -> None:
        """A login from ``host`` succeeded: its failures are forgiven (the user's are not: an
        attacker's own account must not unlock a victim's)."""
        self._hosts.pop(host, None)

    def _prune(self, table: collections.OrderedDict, now: float) -> None:
        # Entries are in order of their last failure: stale ones are at the front.
        while table:
            key, record = next(iter(table.items()))
            if len(table) <= MAX_TRACKED and now - record.last <= self.forget:
                break
            del table[key]
