"""Per-session extensions: what ENABLE (RFC 5161) can switch on, and the session's view of them.

``session.enabled`` holds the upper-cased names of what is on.  CONDSTORE (RFC 7162) is switched
on by ENABLE or by the first command that uses it (SELECT (CONDSTORE), FETCH MODSEQ, STORE
UNCHANGEDSINCE...); QRESYNC implies it.  IMAP4REV2 (RFC 9051) changes the shape of some responses
(no RECENT, ESEARCH for SEARCH, UTF-8 mailbox names).
"""

from __future__ import annotations

CONDSTORE = "CONDSTORE"
QRESYNC = "QRESYNC"
IMAP4REV2 = "IMAP4REV2"

# Capabilities implemented in this part of the server (advertised with the base list).
EXTENSIONS_A = [
    "IMAP4rev2", "CONDSTORE", "QRESYNC", "ESEARCH", "SEARCHRES", "WITHIN", "CONTEXT=SEARCH",
    "CONTEXT=SORT", "SORT", "SORT=DISPLAY", "ESORT", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES",
    "I18NLEVEL=1", "LIST-EXTENDED", "LIST-STATUS", "CREATE-SPECIAL-USE", "NOTIFY",
]


def condstore(session) -> bool:
    """Is CONDSTORE on (MODSEQ in untagged FETCH, HIGHESTMODSEQ on SELECT)?"""
    return CONDSTORE in session.enabled or QRESYNC in session.enabled


def qresync(session) -> bool:
    return QRESYNC in session.enabled


def rev2(session) -> bool:
    return IMAP4REV2 in session.enabled


def enable_condstore(session) -> None:
    """A CONDSTORE-enabling command ran (RFC 7162 3.1): switch it on; when a mailbox is selected
    the client learns its HIGHESTMODSEQ now, before the command's own responses."""
    if condstore(session):
        return
    session.enabled.add(CONDSTORE)
    if session.selected is not None:
        session.writer.write(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % session.selected.highestmodseq)


def _enable_condstore(session) -> None:
    enable_condstore(session)


def _enable_qresync(session) -> None:
    enable_condstore(session)
    session.enabled.add(QRESYNC)


def _enable_rev2(session) -> None:
    session.enabled.add(IMAP4REV2)
    # RFC 9051 5.1: IMAP4rev2 mailbox names are UTF-8 on the wire.
    session.utf8 = True


# ENABLE name (upper-cased) -> what switching it on does.  Names not here are ignored (RFC 5161).
ENABLEABLE = {
    CONDSTORE: _enable_condstore,
    QRESYNC: _enable_qresync,
    IMAP4REV2: _enable_rev2,
}
