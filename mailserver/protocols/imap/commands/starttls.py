"""STARTTLS (RFC 3501 6.2.1, RFC 2595).

Input the client pipelined after STARTTLS arrived in plaintext: it is discarded, never run inside
the TLS session (the CVE-2011-0411 class).  Parsing stops behind STARTTLS (it takes the input);
the switch runs once the tagged OK is handed to the transport, and drops both the unparsed bytes
and anything parsed meanwhile (while the OK waited for a slow client).
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
    if session.compression is not None:
        raise bad("STARTTLS is not possible after COMPRESS")

    def switch():
        dropped = session.parser.discard_buffer()
        queued = len(session._queue)
        session._queue.clear()
        if dropped or queued:
            session.warn("discarded {n} bytes and {q} commands pipelined after STARTTLS", n=dropped, q=queued)
        if not session.closed:
            tls.start_tls(session.transport, session.ctx.tls)

    session.after_reply(switch)
    return Done("Begin TLS negotiation now")
