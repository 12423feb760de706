"""CAPABILITY, NOOP, CHECK, LOGOUT, ID, ENABLE, NAMESPACE and IDLE."""

from __future__ import annotations

from ..errors import bad, no
from ..extensions import ENABLEABLE
from ..parser import Args, Atom
from ..response import CRLF, nstring, string
from . import ANY, AUTH, SELECTED, Done, Sync, command

SERVER_ID = (("name", "mailserver"), ("vendor", "mailserver"))
ID_MAX_PAIRS = 30
ID_MAX_FIELD = 30
ID_MAX_VALUE = 1024


@command("CAPABILITY", ANY, sync=Sync.NONE)
async def capability(session, tag: str, args: Args):
    args.end()
    session.writer.untagged("CAPABILITY " + " ".join(session.capabilities()))


@command("NOOP", ANY, sync=Sync.FORCE)
async def noop(session, tag: str, args: Args):
    args.end()


@command("CHECK", SELECTED, sync=Sync.FORCE)
async def check(session, tag: str, args: Args):
    args.end()


@command("LOGOUT", ANY, sync=Sync.NONE)
async def logout(session, tag: str, args: Args):
    args.end()
    session.writer.untagged("BYE Logging out")
    session.close_after_reply = b""
    session.info("logged out")
    return "Logout completed"


@command("ID", ANY, sync=Sync.NONE)
async def id_(session, tag: str, args: Args):
    """RFC 2971: log what the client says about itself (bounded), say who we are."""
    item = args.next("ID parameter list")
    args.end()
    if isinstance(item, list):
        if len(item) % 2 or len(item) > 2 * ID_MAX_PAIRS:
            raise bad("ID list must hold at most 30 field/value pairs")
        pairs = []
        fields = Args(item)
        while fields.more():
            field = fields.string("ID field")
            value = fields.nstring("ID value")
            if len(field) > ID_MAX_FIELD or (value is not None and len(value) > ID_MAX_VALUE):
                raise bad("ID field or value too long")
            pairs.append(f"{field.decode('utf-8', 'replace')}={(value or b'').decode('utf-8', 'replace')!r}")
        if pairs:
            session.info("client id: {client}", client=" ".join(pairs))
    elif not (isinstance(item, Atom) and item.upper() == "NIL"):
        raise bad("Expected a parenthesised list or NIL")
    body = b" ".join(string(k) + b" " + nstring(v) for k, v in SERVER_ID)
    session.writer.write(b"* ID (" + body + b")" + CRLF)


@command("ENABLE", AUTH, sync=Sync.NONE)
async def enable(session, tag: str, args: Args):
    """RFC 5161: switch on what ``extensions.ENABLEABLE`` knows, and UTF8=ACCEPT (RFC 6855),
    which sets ``session.utf8``: mailbox names in UTF-8 both ways, UTF8 (~{n}) in APPEND.
    ``* ENABLED`` lists what this command switched on; unknown names are ignored (RFC 5161)."""
    if not args.more():
        raise bad("Missing capability")
    done = []
    while args.more():
        name = args.atom("capability")
        key = name.upper()
        if key == "UTF8=ACCEPT":
            if not session.utf8 or key not in session.enabled:
                session.utf8 = True
                session.enabled.add(key)
                done.append(key)
            continue
        switch = ENABLEABLE.get(key)
        if switch is not None and key not in session.enabled and name not in done:
            switch(session)
            session.enabled.add(key)
            done.append(name)
    session.writer.untagged(" ".join(["ENABLED"] + done))


@command("NAMESPACE", AUTH, sync=Sync.NONE)
async def namespace(session, tag: str, args: Args):
    args.end()
    session.writer.untagged('NAMESPACE (("" "/")) NIL NIL')


@command("IDLE", AUTH, sync=Sync.NONE, takes_input=True)
async def idle(session, tag: str, args: Args):
    """RFC 2177: report changes as they happen until the client sends DONE.

    Storage signals every change (its index polls for other processes' writes every
    ``idle_check_interval``), so IDLE only waits: for a client line or a signal.
    """
    args.end()
    limit = session.config.max_idle_per_user
    idling = sum(1 for c in session.ctx.connections
                 if getattr(c, "idling", False) and c.username == session.username)
    if idling >= limit:
        raise no(f"Too many IDLE sessions for this user (at most {limit})", "LIMIT")
    session.idling = True           # the server clears it when the command ends
    writer = session.writer
    writer.write(b"+ idling" + CRLF)
    writer.flush()
    force = True
    while True:
        line = session.try_read_line()
        if line is not None:
            if line.strip().upper() == b"DONE":
                return Done("Idle completed")
            raise bad("Expected DONE to end IDLE")
        if session.closed:
            return None
        if session.selected is not None:
            await session.selected.sync(writer, expunges=True, force=force)
            writer.flush()
        force = False
        await session.wait_event()
