"""LOGIN and AUTHENTICATE (SASL, with SASL-IR initial responses)."""

from __future__ import annotations

import base64
import binascii

from mailserver.auth import AuthResult
from mailserver.auth import sasl

from ..errors import CommandError, bad, no
from ..parser import Args
from ..response import CRLF
from . import AUTH, NOT_AUTH, Done, State, Sync, command

SERVICE = "imap"
PLAINTEXT_REFUSED = "Plaintext authentication disallowed on non-secure (SSL/TLS) connections"


@command("LOGIN", NOT_AUTH, sync=Sync.NONE)
async def login(session, tag: str, args: Args):
    user = args.astring("user name")
    password = args.astring("password")
    args.end()
    if not session.plaintext_ok:
        raise no(PLAINTEXT_REFUSED, "PRIVACYREQUIRED")
    try:
        username, secret = user.decode("utf-8"), password.decode("utf-8")
    except UnicodeDecodeError:
        return await _finish(session, AuthResult(False, reason="user name or password not UTF-8"))
    result = await session.ctx.auth.authenticate(username, secret, service=SERVICE, peer=session.peer,
                                                 mechanism="LOGIN")
    return await _finish(session, result)


@command("AUTHENTICATE", NOT_AUTH, sync=Sync.NONE, takes_input=True)
async def authenticate(session, tag: str, args: Args):
    mech_name = args.atom("SASL mechanism")
    initial = None
    if args.more():
        initial = _decode(args.astring("initial response"), initial=True)
    args.end()
    plaintext_ok = session.plaintext_ok
    mech = sasl.start(mech_name, session.ctx.auth, service=SERVICE, peer=session.peer,
                      plaintext_ok=plaintext_ok)
    if mech is None:
        if not plaintext_ok and mech_name.upper() in sasl.PLAINTEXT:
            raise no(PLAINTEXT_REFUSED, "PRIVACYREQUIRED")
        raise no("Unsupported authentication mechanism", "CANNOT")
    response = initial
    while True:
        step = await mech.step(response)
        if step.result is not None:
            return await _finish(session, step.result)
        session.writer.write(b"+ " + base64.b64encode(step.challenge or b"") + CRLF)
        session.writer.flush()
        line = await session.read_line()
        if line is None:
            return None
        if line.strip() == b"*":
            raise bad("Authentication cancelled")
        response = _decode(line, initial=False)


def _decode(data: bytes, initial: bool) -> bytes:
    """A client SASL response: base64 (``=`` alone is an empty initial response, RFC 4959)."""
    data = data.strip()
    if initial and data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad("Invalid base64 in SASL response") from None


async def _finish(session, result: AuthResult):
    """Enter the authenticated state, or count the failure (and close after too many)."""
    if result.ok:
        user = await session.ctx.storage.open_user(result.username)
        session.username = result.username
        session.user = user
        session.state = State.AUTHENTICATED
        session.auth_failures = 0
        session.info("logged in")
        alert = session.config.alert
        if alert:
            # An admin's notice (RFC 3501 7.1: the client must show ALERT text to the user).
            session.writer.untagged("OK [ALERT] " + "".join(c if c >= " " else " " for c in alert))
        return Done("Logged in", "CAPABILITY " + " ".join(session.capabilities()))
    if result.temporary:
        raise no("Authentication service unavailable, try again later", "UNAVAILABLE")
    session.auth_failures += 1
    if session.auth_failures >= session.config.max_auth_failures:
        session.close_after_reply = b"* BYE Too many authentication failures\r\n"
    raise CommandError("NO", "Authentication failed", "AUTHENTICATIONFAILED")


@command("UNAUTHENTICATE", AUTH, sync=Sync.NONE)
async def unauthenticate(session, tag: str, args: Args):
    """RFC 8437: end the login (the selected mailbox is closed without expunging) and go back
    to the not-authenticated state; the connection, TLS and COMPRESS stay."""
    args.end()
    session.info("unauthenticated")
    await session.unauthenticate()
    return Done("Unauthenticate completed", "CAPABILITY " + " ".join(session.capabilities()))
