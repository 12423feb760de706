"""NOTIFY (RFC 5465): MessageNew, MessageExpunge, FlagChange, MailboxName and SubscriptionChange
for the selected mailbox and for ``selected``/``selected-delayed``/``inboxes``/``personal``/
``subtree``/``mailboxes`` filters.

How: each watched mailbox other than the selected one gets a read-only storage view, only for its
change callbacks (at most ``MAX_WATCHED``; more is ``NO [NOTIFICATIONOVERFLOW]``); on a change its
STATUS is read and what the client asked for is sent as ``* STATUS``.  The selected mailbox's
changes are reported as soon as no command is running (EXISTS, EXPUNGE/VANISHED, FETCH), as the
RFC allows.  Mailbox names and subscriptions have no storage callback: while MailboxName or
SubscriptionChange is wanted the mailbox list is read every ``idle_check_interval`` seconds and
differences are sent as ``* LIST`` (``\\NonExistent`` for a deleted mailbox, ``\\Subscribed``).
"""

from __future__ import annotations

from twisted.internet import defer, task

from mailserver.storage.errors import StorageError

from .. import names
from ..errors import CommandError, bad
from ..parser import Args
from ..response import CRLF
from . import AUTH, Sync, command

MAX_WATCHED = 100
_MESSAGE_EVENTS = ("MESSAGENEW", "MESSAGEEXPUNGE", "FLAGCHANGE")
_EVENTS = _MESSAGE_EVENTS + ("MAILBOXNAME", "SUBSCRIPTIONCHANGE", "ANNOTATIONCHANGE", "MAILBOXMETADATACHANGE",
                             "SERVERMETADATACHANGE")
_SUPPORTED = _MESSAGE_EVENTS + ("MAILBOXNAME", "SUBSCRIPTIONCHANGE")
BADEVENT = "BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)"


class Filter:
    __slots__ = ("kind", "names", "events")

    def __init__(self, kind: str, mailbox_names: list, events: set):
        self.kind, self.names, self.events = kind, mailbox_names, events

    def matches(self, name: str, subscribed=()) -> bool:
        if self.kind == "PERSONAL":
            return True
        if self.kind == "SUBSCRIBED":
            return name in subscribed
        if self.kind == "INBOXES":
            return name == names.INBOX
        if self.kind == "MAILBOXES":
            return name in self.names
        if self.kind == "SUBTREE":
            return any(name == n or name.startswith(n + "/") for n in self.names)
        return False


def _parse(session, args: Args):
    """(status wanted, selected events, [Filter...])."""
    status = False
    if args.peek_atom() == "STATUS":
        args.next("STATUS")
        status = True
    selected_events = None
    filters = []
    if not args.more():
        raise bad("Missing event groups")
    while args.more():
        group = args.list("event group")
        spec = group.next("filter")
        if isinstance(spec, list):
            fargs = Args(spec)
            kind = fargs.keyword("filter")
            if kind not in ("SUBTREE", "MAILBOXES"):
                raise bad("Invalid filter")
            targets = fargs.list_or_one("mailboxes")
            mailbox_names = []
            while targets.more():
                mailbox_names.append(names.mailbox(targets.astring("mailbox name"), session.utf8))
            fargs.end()
        else:
            kind = str(spec).upper()
            mailbox_names = []
            if kind in ("SUBTREE", "MAILBOXES"):
                targets = group.list_or_one("mailboxes")
                while targets.more():
                    mailbox_names.append(names.mailbox(targets.astring("mailbox name"), session.utf8))
            elif kind not in ("SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL", "SUBSCRIBED"):
                raise bad(f"Unknown NOTIFY filter {kind[:30]}")
        events_item = group.next("events")
        if isinstance(events_item, list):
            events = set()
            ev = Args(events_item)
            while ev.more():
                name = ev.keyword("event")
                if name not in _EVENTS:
                    raise bad(f"Unknown NOTIFY event {name[:30]}")
                if name not in _SUPPORTED:
                    raise CommandError("NO", "Event not supported", BADEVENT)
                events.add(name)
                if name == "MESSAGENEW" and isinstance(ev.peek(), list):
                    ev.next("fetch attributes")    # FETCH attributes: STATUS data is sent instead
            if ("FLAGCHANGE" in events or events & {"MESSAGENEW", "MESSAGEEXPUNGE"}) and \
                    not {"MESSAGENEW", "MESSAGEEXPUNGE"} <= events:
                raise bad("MessageNew and MessageExpunge go together (and FlagChange needs them)")
        elif str(events_item).upper() == "NONE":
            events = set()
        else:
            raise bad("Expected an event list or NONE")
        group.end()
        if kind in ("SELECTED", "SELECTED-DELAYED"):
            selected_events = events
        else:
            filters.append(Filter(kind, mailbox_names, events))
    return status, selected_events, filters


class NotifyState:
    """The active NOTIFY SET of a session."""

    def __init__(self, session, status: bool, selected_events, filters: list):
        self.session = session
        self.status = status
        self.selected_events = selected_events
        self.filters = filters
        self.views: dict = {}           # name -> (Mailbox view, cancel)
        self.last: dict = {}            # name -> MailboxStatus last reported
        self.list_state = None          # ({name: special uses}, set of subscriptions)
        self.poller = None
        self.stopped = False
        self.subscribed: set = set()

    def events_for(self, name: str) -> set:
        out = set()
        for f in self.filters:
            if f.matches(name, self.subscribed):
                out |= f.events
        return out

    async def start(self) -> None:
        user = self.session.user
        self.subscribed = set(await user.subscriptions())
        infos = await user.list_mailboxes()
        watched = [i.name for i in infos if self.events_for(i.name) & set(_MESSAGE_EVENTS)]
        if len(watched) > MAX_WATCHED:
            raise CommandError("NO", "Too many mailboxes to watch", "NOTIFICATIONOVERFLOW")
        for name in watched:
            await self._watch(name)
        if any(f.events & {"MAILBOXNAME", "SUBSCRIPTIONCHANGE"} for f in self.filters):
            self.list_state = await self._read_list()
            interval = self.session.config.idle_check_interval
            self.poller = task.LoopingCall(self._poll_list)
            self.poller.clock = self.session.clock
            self.poller.start(interval, now=False).addErrback(self._failed)

    async def _watch(self, name: str) -> None:
        user = self.session.user
        try:
            view = await user.open_mailbox(name, readonly=True)
            self.last[name] = await user.status(name)
        except StorageError as e:
            self.session.info("NOTIFY: cannot watch {mailbox}: {kind}", mailbox=name, kind=e.kind.value)
            return
        cancel = view.on_change(lambda: self._changed(name))
        self.views[name] = (view, cancel)
        if self.status:
            self._write_status(name, self.last[name], self.events_for(name), initial=True)

    def _changed(self, name: str) -> None:
        if self.stopped:
            return
        defer.Deferred.fromCoroutine(self._report(name)).addErrback(self._failed)

    async def _report(self, name: str) -> None:
        selected = self.session.selected
        if selected is not None and selected.mailbox.name == name:
            return                      # the selected mailbox reports through its own updates
        try:
            st = await self.session.user.status(name)
        except StorageError:
            return
        old = self.last.get(name)
        self.last[name] = st
        if old is None or self.stopped:
            return
        self._write_status(name, st, self.events_for(name), old=old)

    def _write_status(self, name: str, st, events: set, old=None, initial: bool = False) -> None:
        items = []
        if initial:
            items = [("MESSAGES", st.messages), ("UIDNEXT", st.uidnext), ("UIDVALIDITY", st.uidvalidity),
                     ("UNSEEN", st.unseen)]
        else:
            if "MESSAGENEW" in events and (st.uidnext != old.uidnext or st.uidvalidity != old.uidvalidity):
                items += [("MESSAGES", st.messages), ("UIDNEXT", st.uidnext), ("UIDVALIDITY", st.uidvalidity)]
            elif "MESSAGEEXPUNGE" in events and st.messages != old.messages:
                items.append(("MESSAGES", st.messages))
            if "FLAGCHANGE" in events and st.unseen != old.unseen:
                items.append(("UNSEEN", st.unseen))
            elif items and "MESSAGENEW" in events:
                items.append(("UNSEEN", st.unseen))
        if self.session.selected is not None and self.session.selected.condstore and (items or initial):
            if old is None or st.highestmodseq != old.highestmodseq:
                items.append(("HIGHESTMODSEQ", st.highestmodseq))
        if not items:
            return
        body = " ".join(f"{k} {v}" for k, v in items)
        self.session.writer.write(b"* STATUS " + names.encode(name, self.session.utf8) + b" ("
                                  + body.encode() + b")" + CRLF)
        self._flush()

    def _flush(self) -> None:
        if not self.session.closed:
            self.session.writer.flush()

    async def _read_list(self):
        user = self.session.user
        infos = await user.list_mailboxes()
        return {i.name: i.special_use for i in infos}, set(await user.subscriptions())

    def _poll_list(self):
        return defer.Deferred.fromCoroutine(self._check_list()).addErrback(self._failed)

    async def _check_list(self) -> None:
        if self.stopped or self.list_state is None:
            return
        old_boxes, old_subs = self.list_state
        boxes, subs = await self._read_list()
        self.list_state = (boxes, subs)
        self.subscribed = subs
        out = []
        for name in sorted(set(old_boxes) | set(boxes) | old_subs | subs):
            events = self.events_for(name)
            created, deleted = name in boxes and name not in old_boxes, name in old_boxes and name not in boxes
            sub_changed = (name in subs) != (name in old_subs)
            if (created or deleted) and "MAILBOXNAME" in events or sub_changed and "SUBSCRIPTIONCHANGE" in events:
                attrs = ["\\NonExistent"] if name not in boxes else []
                if name in subs:
                    attrs.append("\\Subscribed")
                attrs += sorted(boxes.get(name, ()))
                out.append(b"* LIST (" + " ".join(attrs).encode() + b') "/" '
                           + names.encode(name, self.session.utf8) + CRLF)
            if created and events & set(_MESSAGE_EVENTS) and name not in self.views \
                    and len(self.views) < MAX_WATCHED:
                await self._watch(name)
            if deleted and name in self.views:
                view, cancel = self.views.pop(name)
                cancel()
                await view.close()
        if out and not self.stopped:
            self.session.writer.write(b"".join(out))
            self._flush()

    def selected_changed(self) -> None:
        """The selected mailbox changed: report it now unless a command is running."""
        if self.stopped or not self.selected_events or self.session.selected is None:
            return
        if self.session.busy:
            return                      # the command's end reports it
        defer.Deferred.fromCoroutine(self._sync_selected()).addErrback(self._failed)

    async def _sync_selected(self) -> None:
        selected = self.session.selected
        if selected is None or self.session.busy:
            return
        await selected.sync(self.session.writer, expunges=True)
        self._flush()

    def _failed(self, failure) -> None:
        self.session.warn("NOTIFY: {error}", error=failure.getErrorMessage())

    async def stop(self) -> None:
        self.stopped = True
        if self.poller is not None and self.poller.running:
            self.poller.stop()
        views, self.views = self.views, {}
        for view, cancel in views.values():
            cancel()
            try:
                await view.close()
            except StorageError:
                pass


@command("NOTIFY", AUTH, sync=Sync.CHANGES)
async def notify(session, tag: str, args: Args):
    mode = args.keyword("NOTIFY SET or NONE")
    old = session.notify
    if mode == "NONE":
        args.end()
        session.notify = None
        if old is not None:
            await old.stop()
        return "NOTIFY completed"
    if mode != "SET":
        raise bad("Expected SET or NONE")
    status, selected_events, filters = _parse(session, args)
    state = NotifyState(session, status, selected_events, filters)
    if old is not None:
        session.notify = None
        await old.stop()
    try:
        await state.start()
    except BaseException:
        await state.stop()
        raise
    session.notify = state
    return "NOTIFY completed"
