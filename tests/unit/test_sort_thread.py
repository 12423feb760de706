"""RFC 5256 base subject, sort keys, REFERENCES / ORDEREDSUBJECT threading and the
i;unicode-casemap comparator, without a mailbox."""

import pytest

from mailserver.protocols.imap.commands.searching import format_threads
from mailserver.storage import sort, thread
from mailserver.storage.collation import casemap


@pytest.mark.parametrize("subject, base, reply", [
    ("Hello", "Hello", False),
    ("Re: Hello", "Hello", True),
    ("RE: re: Fwd: Hello", "Hello", True),
    ("Re[2]: Hello", "Hello", True),
    ("Re [2]: Hello", "Hello", True),
    ("[list] Re: Hello", "Hello", True),
    ("[list] Hello", "Hello", False),
    ("[list]", "[list]", False),                        # (4): the blob stays if nothing is left
    ("[a] [b] fw: Hello (fwd)", "Hello", True),
    ("Hello (fwd) (FWD)  ", "Hello", True),
    ("[Fwd: Re: Hello]", "Hello", True),
    ("[fwd: [fwd: x]]", "x", True),
    ("  Re:\tHello\t\tworld ", "Hello world", True),
    ("Reply: Hello", "Reply: Hello", False),            # "re" must be followed by ":" or a blob
    ("Fwd:", "", True),
    ("", "", False),
])
def test_base_subject(subject, base, reply):
    assert sort.base_subject(subject) == (base, reply)


def test_sort_keys():
    assert sort.address_key(b'"Zed" <alice@example.org>, bob@example.org') == "ALICE"
    assert sort.address_key(b"undisclosed-recipients:;") == ""
    assert sort.display_key(b'"Zed" <alice@example.org>') == "ZED"
    assert sort.display_key(b"alice@Example.org") == "ALICE@EXAMPLE.ORG"
    assert sort.display_key(b"=?utf-8?q?=C3=89mile?= <e@x.org>") == casemap("\u00c9mile")
    assert sort.sent_date(b"Mon, 23 Nov 2026 10:00:00 +0100", 5) == 1795424400
    assert sort.sent_date(b"garbage", 5) == 5
    assert sort.sent_date(None, 7) == 7
    assert sort.subject_key(b"=?iso-8859-1?q?Re:_caf=E9?=") == casemap("caf\u00e9")


def test_casemap():
    assert casemap("hello") == "HELLO"
    assert casemap("Caf\u00e9") == casemap("CAF\u00c9") == "CAFE\u0301"
    assert casemap("\u01c6") == casemap("\u01c4")        # dz with caron: one titlecase
    assert casemap("stra\u00dfe") != casemap("STRASSE")   # no full case folding (RFC 5051)
    assert casemap("\ufb01") == "fi"                      # NFKD of the ligature
    assert casemap("_x") > casemap("a")                   # titlecase order: '_' after 'A'


class M:
    def __init__(self, uid, date, subject="", mid=None, refs=(), is_reply=None):
        self.uid, self.date = uid, date
        self.subject, reply = sort.base_subject(subject)
        self.is_reply = reply if is_reply is None else is_reply
        self.message_id, self.refs = mid, list(refs)


def fmt(roots):
    return format_threads(roots, lambda u: u).decode()


def test_ordered_subject():
    msgs = [M(1, 30, "b"), M(2, 10, "a"), M(3, 20, "Re: a"), M(4, 40, "b"), M(5, 5, "c"), M(6, 15, "re: a")]
    assert fmt(thread.ordered_subject(msgs)) == "(5)(2 (6)(3))(1 4)"


def test_references_chain_and_branches():
    msgs = [
        M(1, 10, "x", "<a>"),
        M(2, 20, "Re: x", "<b>", ["a"]),
        M(3, 30, "Re: x", "<c>", ["a", "b"]),
        M(4, 25, "Re: x", "<d>", ["a"]),
        M(5, 40, "other", "<e>"),
    ]
    for m in msgs:
        m.refs = [r.strip("<>") for r in m.refs]
        m.message_id = m.message_id.strip("<>")
    assert fmt(thread.references(msgs)) == "(1 (2 3)(4))(5)"


def test_references_missing_parent_dummy_and_subject_grouping():
    # 2 and 3 reply to a message we do not have: a dummy root keeps them together.
    msgs = [M(2, 20, "Re: lost", "m2", ["gone"]), M(3, 30, "Re: lost", "m3", ["gone"]),
            M(1, 10, "first", "m1")]
    assert fmt(thread.references(msgs)) == "(1)((2)(3))"
    # A lone reply whose parent is missing is promoted; the original with the same base
    # subject then adopts it (subject grouping, RFC 5256 step 5).
    msgs = [M(1, 10, "topic", "m1"), M(2, 20, "Re: topic", "m2", ["gone"])]
    assert fmt(thread.references(msgs)) == "(1 2)"
    # Two non-replies with one subject are put under a dummy.
    msgs = [M(1, 10, "same", "m1"), M(2, 20, "same", "m2")]
    assert fmt(thread.references(msgs)) == "((1)(2))"


def test_references_loops_duplicates_and_deep_chains():
    # Loops in References are ignored; a duplicate Message-ID gets a container of its own.
    msgs = [M(1, 10, "a", "x", ["y"]), M(2, 20, "b", "y", ["x"]), M(3, 30, "c", "x")]
    roots = thread.references(msgs)
    assert sorted(fmt(roots).replace("(", " ").replace(")", " ").split()) == ["1", "2", "3"]
    # A 5000-deep chain: nothing recursive.
    deep = [M(1, 1, "d", "m1")] + [M(i, i, "Re: d", f"m{i}", [f"m{j}" for j in range(max(1, i - 3), i)])
                                  for i in range(2, 5001)]
    text = fmt(thread.references(deep))
    assert text == "(" + " ".join(str(i) for i in range(1, 5001)) + ")"
