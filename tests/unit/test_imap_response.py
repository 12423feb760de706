"""Response formatting, StorageError mapping and mailbox-name handling."""

import pytest

from mailserver.protocols.imap import names
from mailserver.protocols.imap.errors import CommandError, storage_answer
from mailserver.protocols.imap.response import (
    astring, date_time, flag_list, literal, nstring, status_line, string,
)
from mailserver.storage.errors import ErrorKind, StorageError


def test_strings():
    assert string(b"hello world") == b'"hello world"'
    assert string('say "hi" \\ bye') == b'"say \\"hi\\" \\\\ bye"'
    assert string(b"two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert string("café") == b"{5}\r\ncaf\xc3\xa9"
    assert string(b"x" * 2000).startswith(b"{2000}\r\n")
    assert astring(b"INBOX") == b"INBOX"
    assert astring(b"NIL") == b'"NIL"'
    assert astring(b"") == b'""'
    assert astring(b"a b") == b'"a b"'
    assert astring(b"a]b") == b'"a]b"'
    assert nstring(None) == b"NIL"
    assert literal(b"") == b"{0}\r\n"


def test_flags_dates_status():
    assert flag_list({"$b", "\\Seen", "$a", "\\Answered"}) == b"(\\Answered \\Seen $a $b)"
    assert flag_list(()) == b"()"
    assert date_time(0) == b'"01-Jan-1970 00:00:00 +0000"'
    assert date_time(1700000000) == b'"14-Nov-2023 22:13:20 +0000"'
    assert status_line("a1", "NO", "Nope", "TRYCREATE") == b"a1 NO [TRYCREATE] Nope\r\n"
    assert status_line("*", "OK", "Fine") == b"* OK Fine\r\n"


@pytest.mark.parametrize("kind, code", [
    (ErrorKind.TEMPORARY, "UNAVAILABLE"), (ErrorKind.NOT_FOUND, "NONEXISTENT"),
    (ErrorKind.EXISTS, "ALREADYEXISTS"), (ErrorKind.NO_PERMISSION, "NOPERM"),
    (ErrorKind.OVER_QUOTA, "OVERQUOTA"), (ErrorKind.EXPUNGED, "EXPUNGEISSUED"),
    (ErrorKind.IN_USE, "INUSE"), (ErrorKind.LIMIT, "LIMIT"), (ErrorKind.TOO_BIG, "TOOBIG"),
    (ErrorKind.INVALID, "CANNOT"), (ErrorKind.CANNOT, "CANNOT"), (ErrorKind.CORRUPTED, "CORRUPTION"),
    (ErrorKind.INTERNAL, "SERVERBUG"),
])
def test_every_storage_kind_has_an_answer_without_detail(kind, code):
    answer = storage_answer(StorageError(kind, "secret detail /var/lib/x"))
    assert isinstance(answer, CommandError)
    assert (answer.status, answer.code) == ("NO", code)
    assert "secret" not in answer.text and "/var" not in answer.text


def test_trycreate_and_custom_text():
    e = StorageError(ErrorKind.NOT_FOUND, "no such box")
    assert storage_answer(e, trycreate=True).code == "TRYCREATE"
    assert storage_answer(e, texts={ErrorKind.NOT_FOUND: "Gone"}).text == "Gone"
    assert storage_answer(StorageError(ErrorKind.EXISTS), trycreate=True).code == "ALREADYEXISTS"


def test_mailbox_names():
    assert names.mailbox(b"inbox") == "INBOX"
    assert names.mailbox(b"InBoX/Sub") == "INBOX/Sub"
    assert names.mailbox(b"INBOXfoo") == "INBOXfoo"
    assert names.mailbox(b"Entw&APw-rfe") == "Entwürfe"
    assert names.mailbox(b"a/b/", trailing_separator=True) == "a/b"
    assert names.mailbox("Entwürfe".encode(), utf8=True) == "Entwürfe"
    for bad in [b"", b"/a", b"a/", b"a//b", b"a*", b"a%b", b"&Jjo", b"caf\xc3\xa9"]:
        with pytest.raises(CommandError):
            names.mailbox(bad)
    assert names.encode("Entwürfe") == b"Entw&APw-rfe"
    assert names.encode("with space") == b'"with space"'


def test_list_patterns():
    r = names.pattern_regex("", "*")
    assert r.match("a/b/c") and r.match("INBOX")
    r = names.pattern_regex("", "%")
    assert r.match("a") and not r.match("a/b")
    r = names.pattern_regex("a/", "%")
    assert r.match("a/b") and not r.match("a/b/c") and not r.match("a")
    r = names.pattern_regex("", "inbox")
    assert r.match("INBOX")
    r = names.pattern_regex("", "x.y")
    assert r.match("x.y") and not r.match("xzy")
    existing, implied = names.with_parents(["a/b/c", "d"])
    assert implied == {"a", "a/b"}
    assert names.parents_with_children(["a/b/c", "d"]) == {"a", "a/b"}


class _RecordingTransport:
    def __init__(self):
        self.calls = []

    def registerProducer(self, producer, streaming):
        pass

    def write(self, data):
        self.calls.append(("write", data))

    def writeSequence(self, seq):
        self.calls.append(("seq", list(seq)))


def test_writer_passes_big_pieces_without_joining_them():
    from mailserver.protocols.imap.response import FLUSH_AT, ResponseWriter
    t = _RecordingTransport()
    w = ResponseWriter(t)
    big = b"x" * (FLUSH_AT // 2)
    w.write(b"* 1 FETCH (UID 1)\r\n")
    w.write_pieces([b"* 2 FETCH (BODY[] {%d}\r\n" % len(big), big, b")\r\n"])
    w.write(b"* 3 FETCH (UID 3)\r\n")
    w.flush()
    assert t.calls == [("seq", [b"* 1 FETCH (UID 1)\r\n* 2 FETCH (BODY[] {32768}\r\n", big,
                                b")\r\n* 3 FETCH (UID 3)\r\n"])]
    assert t.calls[0][1][1] is big                    # the very object: not copied
    w.write(b"a")
    w.write(b"b")
    w.flush()                                          # plain responses: one joined write
    assert t.calls[1:] == [("write", b"ab")]
    w.write_pieces([big, big, big])                    # past FLUSH_AT: flushed at once
    assert w.buffered == 0 and t.calls[2] == ("seq", [big, big, big])
