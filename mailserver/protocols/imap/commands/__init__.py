"""The command table: every IMAP command, the states it is valid in, and how it syncs.

A handler is ``async def handler(session, tag, args) -> Done | str | None`` (``args`` is a
``parser.Args``; UID forms get ``uid=True``).  It writes untagged responses to
``session.writer`` and returns the tagged OK (None: "<NAME> completed"), or raises
``CommandError`` / ``BadSyntax`` / ``StorageError``; the server writes the tagged answer.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Awaitable, Callable


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


ANY = frozenset(State) - {State.LOGOUT}
NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})


class Sync(enum.Enum):
    """What the server reports about the selected mailbox before the tagged answer."""

    NONE = "none"            # nothing (commands that do not concern the mailbox)
    CHANGES = "changes"      # whatever storage signalled, expunges included
    NO_EXPUNGE = "noexpunge"  # signalled changes, but no EXPUNGE (FETCH, STORE, SEARCH, COPY)
    FORCE = "force"          # check storage even without a signal (NOOP, CHECK)


@dataclasses.dataclass(frozen=True)
class Done:
    """A tagged OK with an optional response code."""

    text: str
    code: str | None = None


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    handler: Callable[..., Awaitable]
    states: frozenset
    sync: Sync = Sync.CHANGES
    takes_input: bool = False     # reads client lines itself (AUTHENTICATE, IDLE)
    uid: bool = False             # also valid after UID


COMMANDS: dict[str, Spec] = {}


def command(name: str, states: frozenset, sync: Sync = Sync.CHANGES, takes_input: bool = False,
            uid: bool = False):
    """Register a handler under ``name``."""
    def register(fn):
        COMMANDS[name] = Spec(name, fn, states, sync, takes_input, uid)
        return fn
    return register


def load() -> dict[str, Spec]:
    """Import every command module (they register themselves) and return the table."""
    from . import auth, basic, listing, mailboxes, messages, notify, searching, starttls  # noqa: F401
    from . import append, metadata, quota, urlauth  # noqa: F401
    from .. import compress, fetch  # noqa: F401
    return COMMANDS
