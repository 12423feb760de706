"""Command failures and the one mapping from ``StorageError.kind`` to IMAP responses.

Handlers raise ``CommandError`` (or let ``BadSyntax`` / ``StorageError`` through); the server
turns them into the tagged answer.  ``StorageError.detail`` goes to the log, never to the client.
"""

from __future__ import annotations

from mailserver.storage.errors import ErrorKind, StorageError


class CommandError(Exception):
    """A tagged NO or BAD: ``status``, optional response ``code``, client-safe ``text``."""

    def __init__(self, status: str, text: str, code: str | None = None):
        super().__init__(text)
        self.status, self.text, self.code = status, text, code


def no(text: str, code: str | None = None) -> CommandError:
    return CommandError("NO", text, code)


def bad(text: str, code: str | None = None) -> CommandError:
    return CommandError("BAD", text, code)


# kind -> (response code, default text).  RFC 5530 codes.
_STORAGE_ANSWERS = {
    ErrorKind.TEMPORARY: ("UNAVAILABLE", "Temporary storage failure, try again later"),
    ErrorKind.NOT_FOUND: ("NONEXISTENT", "Mailbox does not exist"),
    ErrorKind.EXISTS: ("ALREADYEXISTS", "Mailbox already exists"),
    ErrorKind.NO_PERMISSION: ("NOPERM", "Permission denied"),
    ErrorKind.OVER_QUOTA: ("OVERQUOTA", "Quota exceeded"),
    ErrorKind.EXPUNGED: ("EXPUNGEISSUED", "Some of the requested messages no longer exist"),
    ErrorKind.IN_USE: ("INUSE", "Mailbox is in use, try again later"),
    ErrorKind.LIMIT: ("LIMIT", "A server limit was reached"),
    ErrorKind.TOO_BIG: ("TOOBIG", "Message too big"),
    ErrorKind.INVALID: ("CANNOT", "Request not possible"),
    ErrorKind.CANNOT: ("CANNOT", "Operation not possible"),
    ErrorKind.CORRUPTED: ("CORRUPTION", "Stored data is damaged; the administrator was told"),
    ErrorKind.INTERNAL: ("SERVERBUG", "Internal server error; the administrator was told"),
}


def storage_answer(error: StorageError, *, trycreate: bool = False,
                   texts: dict | None = None) -> CommandError:
    """The tagged NO for a storage error.

    ``trycreate``: a missing destination (APPEND, COPY, MOVE) answers ``[TRYCREATE]``.
    ``texts`` overrides the default text per kind with one worded for the command.
    """
    code, text = _STORAGE_ANSWERS.get(error.kind, ("SERVERBUG", "Internal server error"))
    if trycreate and error.kind is ErrorKind.NOT_FOUND:
        code = "TRYCREATE"
    if texts and error.kind in texts:
        text = texts[error.kind]
    return CommandError("NO", text, code)


def is_server_fault(error: StorageError) -> bool:
    """Kinds worth a warning in the log (the others are ordinary client-visible outcomes)."""
    return error.kind in (ErrorKind.TEMPORARY, ErrorKind.CORRUPTED, ErrorKind.INTERNAL)
