"""The one typed storage error.

Storage code raises StorageError with a kind; only the protocol layer maps a kind to an
IMAP response code, a POP3 response code or an LMTP reply.  The message is for the log:
it is never sent to a client.
"""

import enum


class ErrorKind(enum.Enum):
    TEMPORARY = "temporary"        # retry later: backend unreachable, timeout, lock busy too long
    NOT_FOUND = "not_found"        # mailbox or message does not exist
    EXISTS = "exists"              # mailbox already exists
    NO_PERMISSION = "no_permission"
    OVER_QUOTA = "over_quota"
    EXPUNGED = "expunged"          # message was expunged by another session
    IN_USE = "in_use"              # exclusive resource held elsewhere (POP3 lock)
    LIMIT = "limit"                # a configured limit was hit (mailboxes, keywords, name length...)
    TOO_BIG = "too_big"            # message larger than the store accepts
    INVALID = "invalid"            # request the storage cannot honour (bad name, bad flag...)
    CANNOT = "cannot"              # operation not possible on this object (delete INBOX, rename into itself)
    CORRUPTED = "corrupted"        # stored data failed validation; the rest keeps working
    INTERNAL = "internal"          # a bug: log it, answer SERVERBUG


class StorageError(Exception):
    """Raised by the mail-storage API and by drivers.

    ``kind`` says what happened in terms a protocol can answer; ``detail`` is a log line
    for the admin (names the user, mailbox or object) and never reaches the client.
    """

    def __init__(self, kind: ErrorKind, detail: str = ""):
        super().__init__(f"{kind.value}: {detail}" if detail else kind.value)
        self.kind = kind
        self.detail = detail

    def __reduce__(self):
        return (StorageError, (self.kind, self.detail))


def temporary(detail: str) -> StorageError:
    return StorageError(ErrorKind.TEMPORARY, detail)


def not_found(detail: str) -> StorageError:
    return StorageError(ErrorKind.NOT_FOUND, detail)
