"""IMAP SEARCH keys -> mailserver.storage.search nodes, and FETCH attribute parsing."""

import datetime

import pytest

from mailserver.protocols.imap.errors import CommandError
from mailserver.protocols.imap.fetch import FetchAtt, SectionSpec, parse_atts, storage_items
from mailserver.protocols.imap.parser import Args, BadSyntax, parse_tokens
from mailserver.protocols.imap.search import parse_search
from mailserver.storage import search as s
from mailserver.storage.api import FetchItem

VIEW = [3, 4, 5, 10, 11, 20]


def program(text: str, view=VIEW, saved=None):
    return parse_search(Args(parse_tokens(text.encode("utf-8"))), view, saved)


def test_simple_keys():
    assert program("ALL") == s.All()
    assert program("SEEN") == s.Flag("\\Seen")
    assert program("unanswered") == s.Not(s.Flag("\\Answered"))
    assert program("KEYWORD $Work") == s.Flag("$Work")
    assert program("UNKEYWORD $Work") == s.Not(s.Flag("$Work"))
    assert program("NEW") == s.And((s.Recent(), s.Not(s.Flag("\\Seen"))))
    assert program("OLD") == s.Not(s.Recent())
    assert program("RECENT") == s.Recent()
    assert program("LARGER 100") == s.Size(True, 100)
    assert program("SMALLER 5") == s.Size(False, 5)


def test_dates():
    assert program("BEFORE 1-Feb-2024") == s.Date("internal", "before", datetime.date(2024, 2, 1))
    assert program('SENTSINCE "05-jan-2020"') == s.Date("sent", "since", datetime.date(2020, 1, 5))
    assert program("ON 29-Feb-2024").day == datetime.date(2024, 2, 29)
    for bad in ["BEFORE 2024-02-01", "ON 30-Feb-2024", "SINCE 1-Foo-2020", "BEFORE"]:
        with pytest.raises(BadSyntax):
            program(bad)


def test_header_and_text_keys():
    assert program('SUBJECT "hello world"') == s.Header("Subject", "hello world")
    assert program("FROM alice TO bob") == s.And((s.Header("From", "alice"), s.Header("To", "bob")))
    assert program('HEADER X-Spam ""') == s.Header("X-Spam", "")
    assert program("BODY needle") == s.Body("needle")
    assert program("TEXT {5}".replace("{5}", '"caf\u00e9"')) == s.Text("caf\u00e9")
    with pytest.raises(BadSyntax):
        program('HEADER "X:Y" v')


def test_boolean_structure_and_nesting():
    assert program("NOT SEEN") == s.Not(s.Flag("\\Seen"))
    assert program("OR SEEN FLAGGED") == s.Or(s.Flag("\\Seen"), s.Flag("\\Flagged"))
    assert program("OR (SEEN DRAFT) NOT (DELETED)") == s.Or(
        s.And((s.Flag("\\Seen"), s.Flag("\\Draft"))), s.Not(s.Flag("\\Deleted")))
    assert program("(((ALL)))") == s.All()
    with pytest.raises(BadSyntax):
        program("OR SEEN")
    with pytest.raises(BadSyntax):
        program("()")


def test_sequence_sets_become_uid_ranges():
    assert program("1:3") == s.UidIn(((3, 5),))
    assert program("2,6") == s.UidIn(((4, 4), (20, 20)))
    assert program("5:*") == s.UidIn(((11, 11), (20, 20)))
    assert program("7:9") == s.UidIn(())            # beyond the mailbox: matches nothing
    assert program("UID 4:10") == s.UidIn(((4, 10),))
    assert program("UID 15:*") == s.UidIn(((15, 20),))
    assert program("UID $", saved=[10, 11, 99]) == s.UidIn(((10, 11),))
    with pytest.raises(BadSyntax):
        program("UID 0")


def test_charset():
    assert program("CHARSET UTF-8 SUBJECT x") == s.Header("Subject", "x")
    assert program("CHARSET us-ascii ALL") == s.All()
    with pytest.raises(CommandError) as e:
        program("CHARSET KOI8-R ALL")
    assert e.value.code.startswith("BADCHARSET")
    with pytest.raises(CommandError):
        parse_search(Args(parse_tokens(b'SUBJECT "\xff"')), VIEW)


def test_unknown_and_missing():
    with pytest.raises(BadSyntax, match="Unknown search key"):
        program("FROBNICATE")
    with pytest.raises(BadSyntax, match="Missing"):
        program("")
    with pytest.raises(BadSyntax):
        program("NOT " * 100 + "ALL")


# --- FETCH attributes ---------------------------------------------------------------------------

def atts(text: str):
    return parse_atts(Args(parse_tokens(text.encode())))


def test_fetch_macros_and_simple():
    assert [a.kind for a in atts("FAST")] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert [a.kind for a in atts("ALL")] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]
    assert [a.kind for a in atts("FULL")][-1] == "BODY"
    assert [a.kind for a in atts("(uid flags)")] == ["UID", "FLAGS"]


def test_fetch_sections():
    a, = atts("BODY.PEEK[HEADER.FIELDS (Date from)]<0.100>")
    assert a.section == SectionSpec((), "HEADER.FIELDS", ("DATE", "FROM"))
    assert a.label == b"BODY[HEADER.FIELDS (Date from)]<0>" and a.peek and a.partial == (0, 100)
    a, = atts("body[1.2.mime]")
    assert a.section == SectionSpec((1, 2), "MIME") and not a.peek and a.label == b"BODY[1.2.MIME]"
    a, = atts("BODY[]")
    assert a.section == SectionSpec() and a.label == b"BODY[]"
    a, = atts("RFC822.HEADER")
    assert a.section.text == "HEADER" and a.peek and a.label == b"RFC822.HEADER"
    a, = atts("BODY[3.HEADER.FIELDS.NOT (X-A)]")
    assert a.section == SectionSpec((3,), "HEADER.FIELDS.NOT", ("X-A",))


@pytest.mark.parametrize("bad", ["BODY[MIME]", "BODY[1.FOO]", "BODY[HEADER.FIELDS]", "BODY[HEADER.FIELDS ()]",
                                 "BODY[]<0.0>", "BODY[]<5>", "BODY[TEXT (A)]", "FROB", "(FLAGS FROB)", "()",
                                 'BODY[HEADER.FIELDS ("a b")]'])
def test_fetch_bad_attributes(bad):
    with pytest.raises(CommandError):
        atts(bad)


def test_storage_items_ask_only_what_is_needed():
    assert storage_items(atts("(FLAGS UID RFC822.SIZE INTERNALDATE)")) == set()
    assert storage_items(atts("(FLAGS ENVELOPE)")) == {FetchItem.ENVELOPE}
    assert storage_items(atts("(BODYSTRUCTURE BODY)")) == {FetchItem.BODYSTRUCTURE, FetchItem.BODY}
    assert storage_items(atts("BODY.PEEK[HEADER.FIELDS (FROM)]")) == {FetchItem.HEADER}
    assert storage_items(atts("RFC822.HEADER")) == {FetchItem.HEADER}
    assert storage_items(atts("BODY[]")) == {FetchItem.DATA}
    assert storage_items(atts("(BODY[] BODY[HEADER])")) == {FetchItem.DATA, FetchItem.PARTS}
    assert storage_items(atts("BODY[1.2]")) == {FetchItem.DATA, FetchItem.PARTS}
    assert storage_items(atts("RFC822.TEXT")) == {FetchItem.DATA, FetchItem.PARTS}
    assert isinstance(atts("UID")[0], FetchAtt)
