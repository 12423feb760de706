"""STARTTLS (RFC 3501 6.2.1, RFC 2595).

Input the client pipelined after STARTTLS arrived in plaintext: it is discarded, never run inside
the TLS session (the CVE-2011-0411 class).  Parsing already stops behind STARTTLS (it takes the
input), and the TLS switch happens after the tagged OK is flushed, before anything more is parsed.
"""

from __future__ import annotations

from mailserver import tls

from ..errors import bad
from ..parser import Args
from . import NOT_AUTH, Done, Sync, command


@command("STARTTLS", NOT_AUTH, sync=Sync.NONE, takes_input=True)
async def starttls(session, tag: str, args: Args):
    args.end()
    if session.ctx.tls is None:
        raise bad("TLS support isn't enabled")
    if tls.is_secure(session.transport):
        raise bad("TLS is already active")

    def switch():
        dropped = session.parser.discard_buffer()
        if dropped:
            session.warn("discarded {n} bytes pipelined after STARTTLS", n=dropped)
        if not session.closed:
            tls.start_tls(session.transport, session.ctx.tls)

    session.after_reply = switch
    return Done("Begin TLS negotiation now")
