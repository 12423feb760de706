"""ENVELOPE, address lists and IMAP strings (expected strings checked against Dovecot 2.3.19
unless a test says otherwise)."""

import pytest

from mailserver.storage import mime
from mailserver.storage.mime import imap

from . import mime_samples as S


def env(header: bytes) -> str:
    return mime.envelope(header)


def test_rfc3501_example_envelope():
    header = (b'Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n'
              b'From: Terry Gray <gray@cac.washington.edu>\r\n'
              b'Subject: IMAP4rev1 WG mtg summary and minutes\r\n'
              b'To: imap@cac.washington.edu\r\n'
              b'cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n'
              b'Message-Id: <B27397-0100000@cac.washington.edu>\r\n'
              b'MIME-Version: 1.0\r\n'
              b'Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n')
    assert env(header) == (
        '("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        '(("Terry Gray" NIL "gray" "cac.washington.edu")) (("Terry Gray" NIL "gray" "cac.washington.edu")) '
        '(("Terry Gray" NIL "gray" "cac.washington.edu")) ((NIL NIL "imap" "cac.washington.edu")) '
        '((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL '
        '"<B27397-0100000@cac.washington.edu>")')


def test_rfc5322_appendix_a5_and_groups():
    """Comments everywhere, groups, empty groups, source routes, quoted local parts; encoded
    words stay raw; folded Date unfolded as RFC 5322 says."""
    assert env(S.ADDRESSES) == (
        '("Thu,      13        Feb          1969      23:32               -0330 (Newfoundland Time)" '
        '"=?iso-8859-1?q?caf=E9?= =?iso-8859-1?q?_au_lait?=" (("Pete" NIL "pete" "silly.test")) '
        '(("John Doe" NIL "john" "x.example")) '
        '((NIL "@route.example,@r2.example" "user" "host.example")(NIL NIL "quoted" "x.example")) '
        '((NIL NIL "A Group" NIL)("Chris Jones" NIL "c" "public.example")(NIL NIL "joe" "example.org")'
        '("John" NIL "jdoe" "one.test")(NIL NIL NIL NIL)) '
        '((NIL NIL "Hidden recipients" NIL)(NIL NIL NIL NIL)) '
        '((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) "<a@b.example>" '
        '"<testabcd.1234@silly.test>")')


def test_encoded_words_and_quoted_names_stay_raw():
    assert env(S.ALTERNATIVE) == (
        '("Mon, 3 Jun 2024 10:00:00 +0200" "=?UTF-8?B?UXVhcnRlcmx5IHJlcG9ydCDigJQgUTI=?=" '
        '(("=?UTF-8?Q?Bob_B=C3=A4cker?=" NIL "bob" "example.net")) '
        '(("=?UTF-8?Q?Bob_B=C3=A4cker?=" NIL "bob" "example.net")) '
        '(("=?UTF-8?Q?Bob_B=C3=A4cker?=" NIL "bob" "example.net")) '
        '(("Alice Example" NIL "alice" "example.org")("Carol, C." NIL "carol" "example.org")) '
        '((NIL NIL "team" NIL)(NIL NIL "dave" "example.org")(NIL NIL "erin" "example.org")(NIL NIL NIL NIL)) '
        'NIL NIL "<alt1@example.net>")')


def test_eight_bit_header_values_are_literals():
    e = env(S.EIGHT_BIT)
    subject = 'Grüße "quoted" \\ back'
    assert e.startswith('(NIL {%d}\r\n%s ' % (len(subject.encode()), subject))
    assert '(({13}\r\nJörg Müller NIL "joerg" "example.de"))' in e
    assert '(({4}\r\nZoë NIL "zoe" "example.org"))' in e


def test_missing_header_gives_nils():
    assert env(b"") == "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    assert env(b"X-Other: 1\r\n\r\n") == "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_empty_fields_and_defaults():
    header = (b"Subject: \r\nFrom: <>\r\nSender: \r\nReply-To: \r\n\t\r\nTo: undisclosed-recipients:;\r\n"
              b"In-Reply-To:\r\n\r\n")
    missing = '((NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN"))'
    assert env(header) == ('(NIL "" %s %s %s ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
                           'NIL NIL "" NIL)' % (missing, missing, missing))


def test_repeated_fields():
    """Address fields are concatenated (Dovecot too); for Subject we keep the first where
    Dovecot keeps the last (RFC 5322 allows one; a deliberate difference)."""
    header = b"From: a@b\r\nFrom: c@d\r\nSubject: one\r\nSubject: two\r\nTo: x@y\r\nTo: z@w\r\n\r\n"
    assert env(header) == ('(NIL "one" ((NIL NIL "a" "b")(NIL NIL "c" "d")) ((NIL NIL "a" "b")(NIL NIL "c" "d")) '
                           '((NIL NIL "a" "b")(NIL NIL "c" "d")) ((NIL NIL "x" "y")(NIL NIL "z" "w")) '
                           'NIL NIL NIL NIL)')


def test_unfolding_keeps_whitespace_and_trailing_space():
    header = b"Subject: a\r\n\tb\r\n  c\r\nDate:  Mon, 1 Jan 2024 10:00:00 +0000 \r\n\r\n"
    assert env(header).startswith('("Mon, 1 Jan 2024 10:00:00 +0000 " "a\tb  c" ')


def test_lf_only_header():
    assert env(b"Subject: hi\n there\nFrom: a@b.c\n\n") == (
        '(NIL "hi there" ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) NIL NIL NIL NIL NIL)')


@pytest.mark.parametrize("value,expected", [
    (b"a@b", [(None, None, "a", "b")]),
    (b"<a@b>", [(None, None, "a", "b")]),
    (b'"" <e@x>', [(None, None, "e", "x")]),
    # empty list elements are skipped (RFC 5322 obs-mbox-list; Dovecot adds a MISSING_MAILBOX)
    (b"Bob <bob@x> , ,<z@y>", [("Bob", None, "bob", "x"), (None, None, "z", "y")]),
    (b"john@x.org (John Doe)", [("John Doe", None, "john", "x.org")]),
    (b"John Q. Public <jqp@x>", [("John Q. Public", None, "jqp", "x")]),
    (b'"Q \\"x\\" Z" <q@r>', [('Q "x" Z', None, "q", "r")]),
    (b"foo", [(None, None, "foo", "MISSING_DOMAIN")]),
    (b"no at sign", [("no at sign", None, "MISSING_MAILBOX", "MISSING_DOMAIN")]),
    (b'"a b"', [("a b", None, "MISSING_MAILBOX", "MISSING_DOMAIN")]),
    (b"@bar", [(None, None, "MISSING_MAILBOX", "bar")]),
    (b"Mary <mary@x> garbage <g@h>", [("Mary", None, "mary", "x")]),
    (b"u@[192.0.2.1]", [(None, None, "u", "[192.0.2.1]")]),
    (b"Group: a@b, \"Q\" <q@r>;, c@d", [(None, None, "Group", None), (None, None, "a", "b"),
                                       ("Q", None, "q", "r"), (None, None, None, None),
                                       (None, None, "c", "d")]),
    (b"Open group: a@b", [(None, None, "Open group", None), (None, None, "a", "b"),
                          (None, None, None, None)]),
    (b"", []),
    (b" (just a comment) ", []),
])
def test_address_parsing(value, expected):
    assert mime.parse_addresses(value) == expected


SIMPLE_SHAPES = [
    "a@b", " a@b.example ", "<a@b>", "Alice <a@b>", "Alice  Example\t<a@b>", '"Carol, C." <c@d>',
    '"" <e@x>', '" spaced " <s@x>', "a@b, c@d", "a@b, c@d,", "=?utf-8?q?J=C3=B6rg?= <j@x>",
    "John Q. Public <j@p>", "team: a@b, c@d;", "undisclosed-recipients:;", "x:;",
    "A  Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;", "Jörg <j@x>",
    "a.b.c@d.e.f", "a+tag@sub.example.org", "<a@b>, Bob <b@c>",
]


@pytest.mark.parametrize("text", SIMPLE_SHAPES)
def test_fast_path_agrees_with_the_general_parser(text):
    fast = imap._simple_addresses(text)
    assert fast is not None, "expected the fast path to handle " + text
    assert fast == imap.parse_address_tokens(text)


@pytest.mark.parametrize("value,expected", [
    ("simple", '"simple"'),
    ("", '""'),
    ('with "quote"', '{12}\r\nwith "quote"'),
    ("back\\slash", '{10}\r\nback\\slash'),
    ("line\r\nbreak", "{11}\r\nline\r\nbreak"),
    ("café", '{5}\r\ncafé'),
    (b"caf\xc3\xa9", '{5}\r\ncafé'),
    (b"caf\xe9", '{5}\r\ncafé'),     # not UTF-8: read as latin-1, sent as UTF-8
    ("nul\x00byte", '"nulbyte"'),
    ("tab\there", '"tab\there"'),
])
def test_imap_string(value, expected):
    assert mime.imap_string(value) == expected
