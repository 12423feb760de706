"""URLAUTH (RFC 4467): GENURLAUTH, RESETKEY, URLFETCH; and reading the message data an IMAP
URL names (shared with CATENATE).

Each user has one mailbox access key per mailbox, created by the first GENURLAUTH for it and
kept in the dictionary (``ctx.dict``) under ``priv/urlauth/<mailbox GUID>`` (the GUID, not the
name, so a key follows its mailbox through RENAME and dies with it).  RESETKEY removes keys,
which revokes every URL signed with them.  Only mechanism INTERNAL exists.

URLFETCH reads another user's message only after the URL's token verifies under that user's
key: the owner's storage is opened only if the owner has ever generated a URLAUTH URL (a key
exists) and the passdb knows them, so a made-up URL never creates anything.
"""

from __future__ import annotations

import time

from twisted.internet import defer

from mailserver.storage import mime
from mailserver.storage.api import FetchItem
from mailserver.storage.errors import ErrorKind, StorageError

from .. import names, urls
from ..errors import CommandError, bad, no
from ..parser import Args
from ..response import CRLF, string
from . import AUTH, Done, Sync, command

KEY_PREFIX = "priv/urlauth/"
MAX_URLS = 100                   # per GENURLAUTH / URLFETCH command
_locks: dict = {}                # username -> DeferredLock (one key creator at a time)
now = time.time                  # the clock ;EXPIRE= is compared with


def _dict(session):
    if session.ctx.dict is None:
        raise no("URLAUTH is not available (no dictionary configured)", "UNAVAILABLE")
    return session.ctx.dict


def _lock(username: str) -> defer.DeferredLock:
    lock = _locks.get(username)
    if lock is None:
        lock = _locks[username] = defer.DeferredLock()
    return lock


async def mailbox_key(session, guid: str, create: bool) -> str | None:
    """The session user's access key of a mailbox (created when ``create``)."""
    d = _dict(session)
    key_name = KEY_PREFIX + guid
    key = await d.get(session.username, key_name)
    if key is not None or not create:
        return key
    lock = _lock(session.username)
    await lock.acquire()
    try:
        key = await d.get(session.username, key_name)
        if key is None:
            key = urls.new_key()
            await d.transaction(session.username, sets={key_name: key})
        return key
    finally:
        lock.release()
        if not lock.locked and not lock.waiting:
            _locks.pop(session.username, None)


# --- reading what a URL names ------------------------------------------------------------------

async def message_part(user, name: str, url: urls.ImapUrl, selected=None,
                       check_only: bool = False) -> bytes | None:
    """The bytes ``url`` names in mailbox ``name`` of ``user``: BODY.PEEK[section]<partial> of
    the message (nothing is marked \\Seen), or None if the mailbox, the UIDVALIDITY, the
    message or the part does not match.  Uses the selected view when it is that mailbox.
    ``check_only``: only say whether it exists (b"" or None), from the index and the cached
    part tree, without reading the message."""
    from ..fetch import FetchAtt, SectionSpec, _section, section_data
    spec = SectionSpec()
    if url.section is not None:
        try:
            spec, _ = _section(url.section)
        except CommandError:        # not a valid section
            return None
    own = selected is None or selected.mailbox.name != name
    try:
        box = await user.open_mailbox(name, readonly=True) if own else selected.mailbox
    except StorageError as e:
        if e.kind is ErrorKind.NOT_FOUND:
            return None
        raise
    try:
        if url.uidvalidity is not None and url.uidvalidity != box.uidvalidity:
            return None
        if box.info(url.uid) is None:
            return None
        if check_only:
            if not spec.part:
                return b""
            async for fetched in box.fetch([url.uid], {FetchItem.PARTS}):
                if fetched.parts is not None and mime.find_part(fetched.parts, spec.part) is not None:
                    return b""
            return None
        items = {FetchItem.DATA}
        if spec.part or spec.text:
            items.add(FetchItem.PARTS)
        mail = None
        async for fetched in box.fetch([url.uid], items):
            mail = fetched
        if mail is None or mail.missing:
            return None
        data = section_data(FetchAtt("SECTION", b"", spec, None, True), mail)
    finally:
        if own:
            await box.close()
    if data is not None and url.partial is not None:
        offset, length = url.partial
        data = data[offset:] if length is None else data[offset:offset + length]
    return data


def access_allowed(session, url: urls.ImapUrl) -> bool:
    """Does the URL's access identifier let this session's user fetch it?"""
    kind = url.access_kind
    if kind in ("anonymous", "authuser"):
        return session.username is not None
    if kind == "user":
        return session.ctx.auth.normalize(url.access_user) == session.username
    if kind == "submit":
        submitter = session.config.urlauth_submit_user
        return bool(submitter) and session.ctx.auth.normalize(submitter) == session.username
    return False


async def authorized_content(session, url: urls.ImapUrl, reason: list) -> bytes | None:
    """The data of a full URLAUTH URL if it verifies for this session, else None (``reason``
    gets a line for the log)."""
    if url.token is None or (url.mechanism or "").upper() != urls.MECHANISM:
        reason.append("not a URLAUTH URL with mechanism INTERNAL")
        return None
    if url.expire is not None and url.expire < now():
        reason.append("expired")
        return None
    if not access_allowed(session, url):
        reason.append(f"access {url.access} not granted to this user")
        return None
    owner = session.ctx.auth.normalize(url.user or "")
    keys = await _dict(session).iterate(owner, KEY_PREFIX) if owner else {}
    if not keys:
        urls.verify(urls.new_key(), url.rump, url.token)   # same work as a real check
        reason.append("owner has no URLAUTH keys")
        return None
    mine = owner == session.username
    if not mine and await session.ctx.auth.lookup(owner) is None:
        reason.append("owner unknown")
        return None
    user = session.user if mine else await session.ctx.storage.open_user(owner)
    try:
        try:
            name = names.check(names.normalize(url.mailbox or ""))
            guid = (await user.status(name)).guid
        except StorageError as e:
            if e.kind is not ErrorKind.NOT_FOUND:
                raise
            guid = ""
        except CommandError:            # not a valid mailbox name
            guid = ""
        key = keys.get(KEY_PREFIX + guid)
        if key is None:
            urls.verify(urls.new_key(), url.rump, url.token)
            reason.append("no key for that mailbox")
            return None
        if not urls.verify(key, url.rump, url.token):
            reason.append("token does not verify")
            return None
        data = await message_part(user, name, url, session.selected if mine else None)
        if data is None:
            reason.append("no such message or part")
        return data
    finally:
        if not mine:
            await user.close()


# --- commands ----------------------------------------------------------------------------------

@command("GENURLAUTH", AUTH, sync=Sync.NONE)
async def genurlauth(session, tag: str, args: Args):
    """``GENURLAUTH rump-url mechanism ...``: sign each rump URL with its mailbox's key."""
    pairs = []
    while args.more():
        raw = args.astring("rump URL")
        mechanism = args.atom("URLAUTH mechanism")
        pairs.append((raw, mechanism))
    if not pairs:
        raise bad("Missing rump URL")
    if len(pairs) > MAX_URLS:
        raise bad(f"At most {MAX_URLS} URLs at once", "LIMIT")
    out = []
    for raw, mechanism in pairs:
        if mechanism.upper() != urls.MECHANISM:
            raise no(f"Unsupported URLAUTH mechanism {mechanism[:30]}", "CANNOT")
        try:
            url = urls.parse(raw.decode("utf-8"))
        except (UnicodeDecodeError, urls.BadUrl) as e:
            raise bad(f"Invalid rump URL: {e}") from None
        if not url.absolute or url.rump is None or url.token is not None or url.mailbox is None:
            raise bad("Expected an absolute rump URL ending in ;URLAUTH=<access>")
        if url.rump != url.text:
            raise bad("Expected an absolute rump URL ending in ;URLAUTH=<access>")
        if session.ctx.auth.normalize(url.user or "") != session.username:
            raise no("URLAUTH URLs can only be generated for your own mailboxes", "NOPERM")
        if url.expire is not None and url.expire < now():
            raise no("The expiry time has passed", "CANNOT")
        name = names.check(names.normalize(url.mailbox))
        try:
            st = await session.user.status(name)
        except StorageError as e:
            if e.kind is ErrorKind.NOT_FOUND:
                raise no("Mailbox does not exist", "NONEXISTENT") from e
            raise
        if url.uidvalidity is not None and url.uidvalidity != st.uidvalidity:
            raise no("UIDVALIDITY does not match the mailbox", "NONEXISTENT")
        if await message_part(session.user, name, url, session.selected, check_only=True) is None:
            raise no("The URL names no existing message or part", "NONEXISTENT")
        key = await mailbox_key(session, st.guid, create=True)
        # The mechanism goes out in lower case, as in the RFC 4467 examples.
        out.append(string(f"{url.text}:internal:{urls.token(key, url.rump)}"))
    session.writer.write(b"* GENURLAUTH " + b" ".join(out) + CRLF)
    return "GENURLAUTH completed"


@command("RESETKEY", AUTH, sync=Sync.NONE)
async def resetkey(session, tag: str, args: Args):
    """``RESETKEY``: forget every key of this user; ``RESETKEY mailbox [mechanism...]``: that
    mailbox's key.  Every URL signed with a forgotten key stops working."""
    d = _dict(session)
    if not args.more():
        keys = await d.iterate(session.username, KEY_PREFIX)
        if keys:
            await d.transaction(session.username, sets={k: None for k in keys})
        session.info("RESETKEY: {n} URLAUTH keys removed", n=len(keys))
        return "All keys removed"
    name = names.mailbox(args.astring("mailbox name"), session.utf8)
    while args.more():
        mechanism = args.atom("URLAUTH mechanism")
        if mechanism.upper() != urls.MECHANISM:
            raise no(f"Unsupported URLAUTH mechanism {mechanism[:30]}", "CANNOT")
    st = await session.user.status(name)
    await d.transaction(session.username, sets={KEY_PREFIX + st.guid: None})
    return Done("Key removed", "URLMECH INTERNAL")


@command("URLFETCH", AUTH, sync=Sync.NONE)
async def urlfetch(session, tag: str, args: Args):
    """``URLFETCH url...``: one ``* URLFETCH url data`` response per URL; NIL for a URL that
    does not verify, has expired, is not for this user or names nothing."""
    raws = []
    while args.more():
        raws.append(args.astring("URL"))
    if not raws:
        raise bad("Missing URL")
    if len(raws) > MAX_URLS:
        raise bad(f"At most {MAX_URLS} URLs at once", "LIMIT")
    _dict(session)
    writer = session.writer
    for raw in raws:
        reason: list = []
        data = None
        try:
            url = urls.parse(raw.decode("utf-8"))
        except (UnicodeDecodeError, urls.BadUrl) as e:
            reason.append(f"invalid URL: {e}")
        else:
            if not url.absolute or url.mailbox is None:
                reason.append("not an absolute URL")
            else:
                data = await authorized_content(session, url, reason)
        if data is None:
            session.info("URLFETCH refused: {reason}", reason="; ".join(reason))
            writer.write(b"* URLFETCH " + string(raw) + b" NIL" + CRLF)
        else:
            writer.write(b"* URLFETCH " + string(raw) + b" {%d}\r\n" % len(data) + data + CRLF)
        if writer.paused:
            await writer.drain()
            if session.closed:
                return None
    return "URLFETCH completed"
