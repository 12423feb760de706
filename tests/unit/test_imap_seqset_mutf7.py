"""Sequence sets and modified UTF-7."""

import pytest

from mailserver.protocols.imap import mutf7
from mailserver.protocols.imap.seqset import (
    InvalidSequenceSet, OutOfRange, SequenceSet, format_uids, uid_ranges,
)

VIEW = [3, 4, 5, 10, 11, 20]        # UIDs; sequence numbers 1..6


# --- sequence sets ------------------------------------------------------------------------------

def test_parse_and_str_roundtrip():
    for text in ["1", "1:5,7,10:*", "*", "5:1", "*:3", "4294967295", "$"]:
        assert str(SequenceSet.parse(text)) == text


@pytest.mark.parametrize("bad", ["", "0", "1:0", "01", "1,,2", "1:", ":3", "a", "1:2:3", "4294967296",
                                 "$,1", "1 2", "-1"])
def test_parse_rejects(bad):
    with pytest.raises(InvalidSequenceSet):
        SequenceSet.parse(bad)


def test_msns():
    s = SequenceSet.parse
    assert s("1:3").msns_to_uids(VIEW) == [3, 4, 5]
    assert s("2,1,2").msns_to_uids(VIEW) == [3, 4]
    assert s("5:*").msns_to_uids(VIEW) == [11, 20]
    assert s("*:5").msns_to_uids(VIEW) == [11, 20]
    assert s("3:1").msns_to_uids(VIEW) == [3, 4, 5]
    assert s("*").msns_to_uids(VIEW) == [20]
    assert s("1:*").msns_to_uids(VIEW) == VIEW
    assert s("6,1:2,4:5").msns_to_uids(VIEW) == [3, 4, 10, 11, 20]
    with pytest.raises(OutOfRange):
        s("7").msns_to_uids(VIEW)
    with pytest.raises(OutOfRange):
        s("2:7").msns_to_uids(VIEW)


def test_msns_in_empty_view():
    assert SequenceSet.parse("1:*").msns_to_uids([]) == []
    assert SequenceSet.parse("*").msns_to_uids([]) == []
    with pytest.raises(OutOfRange):
        SequenceSet.parse("1").msns_to_uids([])


def test_uids():
    s = SequenceSet.parse
    assert s("1:4").uids(VIEW) == [3, 4]
    assert s("4:1").uids(VIEW) == [3, 4]
    assert s("6:9,100").uids(VIEW) == []
    assert s("11:*").uids(VIEW) == [11, 20]
    assert s("559:*").uids(VIEW) == [20]        # always includes the last message
    assert s("*").uids(VIEW) == [20]
    assert s("1:*").uids([]) == []
    assert s("5,3,4:10,4").uids(VIEW) == [3, 4, 5, 10]


def test_saved_result():
    s = SequenceSet.parse("$")
    assert s.uids(VIEW, saved=[20, 4, 99]) == [4, 20]
    assert s.msns_to_uids(VIEW, saved=None) == []


def test_uid_ranges_for_storage():
    assert SequenceSet.parse("1:4,3:7,9,*").uid_ranges(VIEW, uid=True) == ((1, 7), (9, 9), (20, 20))
    assert SequenceSet.parse("2:4,6").uid_ranges(VIEW, uid=False) == ((4, 5), (10, 10), (20, 20))
    assert SequenceSet.parse("30:*").uid_ranges(VIEW, uid=True) == ((20, 30),)


def test_format_uids():
    assert format_uids([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"
    assert format_uids([9, 8]) == "9,8"              # order kept for COPYUID
    assert format_uids([]) == ""
    assert uid_ranges([4]) == ((4, 4),)


def test_large_view_is_fast():
    view = list(range(1, 100001))
    assert len(SequenceSet.parse("1:*").msns_to_uids(view)) == 100000
    assert len(SequenceSet.parse("1:*").uids(view)) == 100000
    assert format_uids(view) == "1:100000"


# --- modified UTF-7 -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, encoded", [
    ("INBOX", "INBOX"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),     # RFC 3501 5.1.3
    ("&", "&-"),
    ("a&b", "a&-b"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("Ã", "&AMM-"),
    ("😀", "&2D3eAA-"),                                                 # surrogate pair
    ("tab\there", "tab&AAk-here"),
    ("", ""),
])
def test_mutf7_roundtrip(name, encoded):
    assert mutf7.encode(name) == encoded
    assert mutf7.decode(encoded) == name
    assert mutf7.decode(encoded.encode("ascii")) == name


@pytest.mark.parametrize("bad", [
    "&Jjo!",            # RFC 3501: invalid base64 character
    "&U,BTFw",          # unterminated
    "&AGE-",            # encodes "a", which must be written directly
    "&AMM-&AMM-",       # two adjacent encoded runs (canonical form merges them)
    "&AMN-",            # non-zero padding bits
    "&AM-",             # not whole UTF-16 characters
    "&2D0-",            # lone surrogate
    "a\x01b",           # control character
    "caf\xe9",          # non-ASCII in the encoded form
    "&=-",
])
def test_mutf7_rejects(bad):
    with pytest.raises(mutf7.InvalidMUTF7):
        mutf7.decode(bad)


def test_mutf7_rejects_8bit_bytes():
    with pytest.raises(mutf7.InvalidMUTF7):
        mutf7.decode("Entwürfe".encode("utf-8"))
