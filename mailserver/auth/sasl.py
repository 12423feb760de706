"""SASL, one implementation shared by IMAP AUTHENTICATE and POP3 AUTH.

A protocol starts a mechanism with ``start(name, auth, service=..., peer=...)`` and feeds it the
client's responses, already base64-decoded (``b""`` for an empty initial response or none).
Each ``step`` returns either a challenge to send (base64-encoding and framing are the protocol's
job, as are ``*`` cancellation and malformed base64) or the final ``AuthResult``.
"""

from __future__ import annotations

import abc
import dataclasses

from mailserver.auth import AuthResult, Authenticator


@dataclasses.dataclass(frozen=True)
class Step:
    """``challenge`` to send to the client, or ``result`` when the exchange is over."""

    challenge: bytes | None = None
    result: AuthResult | None = None


class Mechanism(abc.ABC):
    name: str
    # True when the client may send its first response with the command (SASL-IR, RFC 4959).
    client_first: bool = True

    def __init__(self, auth: Authenticator, service: str, peer: str):
        self.auth = auth
        self.service = service
        self.peer = peer

    @abc.abstractmethod
    async def step(self, response: bytes | None) -> Step:
        """Process the client's response (None: the client sent no initial response)."""


class Plain(Mechanism):
    """RFC 4616: ``authzid NUL authcid NUL passwd`` in one message."""

    name = "PLAIN"

    async def step(self, response: bytes | None) -> Step:
        if response is None:
            return Step(challenge=b"")
        parts = response.split(b"\0")
        if len(parts) != 3:
            return Step(result=AuthResult(False, reason="malformed PLAIN message"))
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            return Step(result=AuthResult(False, reason="PLAIN message is not UTF-8"))
        if not authcid:
            return Step(result=AuthResult(False, reason="empty PLAIN authentication identity"))
        result = await self.auth.authenticate(authcid, password, service=self.service, peer=self.peer,
                                              mechanism=self.name)
        if result.ok and authzid and self.auth.normalize(authzid) != result.username:
            # Acting as another user needs master-user support (a later issue).
            return Step(result=AuthResult(False, reason=f"authorization identity {authzid!r} refused"))
        return Step(result=result)


MECHANISMS: dict[str, type[Mechanism]] = {"PLAIN": Plain}


def names() -> list[str]:
    """Mechanisms to advertise."""
    return list(MECHANISMS)


def start(name: str, auth: Authenticator, *, service: str, peer: str) -> Mechanism | None:
    """A new exchange for mechanism ``name`` (case-insensitive), or None if unsupported."""
    cls = MECHANISMS.get(name.upper())
    return cls(auth, service, peer) if cls else None
