"""BODY[section] contents, HEADER.FIELDS, BINARY decoding and sizes (checked against Dovecot
2.3.19 unless a test says otherwise)."""

import base64

import pytest

from mailserver.storage import mime
from mailserver.storage.mime import Section

from . import mime_samples as S


def section(data, part=(), text="", fields=()):
    return mime.get_section(data, mime.parse(data), Section(part, text, fields))


def test_whole_message_header_and_text():
    data = S.PLAIN
    blank = data.index(b"\r\n\r\n") + 4
    assert section(data) == data
    assert section(data, text="HEADER") == data[:blank]
    assert section(data, text="TEXT") == data[blank:]
    assert section(data, text="MIME") is None  # MIME needs a part number


def test_part_1_of_a_single_part_message():
    data = S.PLAIN
    blank = data.index(b"\r\n\r\n") + 4
    assert section(data, (1,)) == data[blank:]
    assert section(data, (1,), "MIME") == data[:blank]
    assert section(data, (2,)) is None
    # HEADER/TEXT of a part that is not a message: empty (Dovecot answers the same)
    assert section(data, (1,), "HEADER") == b""
    assert section(data, (1,), "TEXT") == b""


def test_header_fields_and_not():
    data = S.PLAIN
    assert section(data, (), "HEADER.FIELDS", ("SUBJECT", "from")) == (
        b"From: Bob Example <bob@example.net>\r\nSubject: lunch?\r\n\r\n")
    assert section(data, (), "HEADER.FIELDS", ("X-Nothing",)) == b"\r\n"
    not_ = section(data, (), "HEADER.FIELDS.NOT", ("Received", "Return-Path", "MIME-Version"))
    assert not_.startswith(b"From: Bob Example")
    assert b"Received" not in not_ and b"\tby mx" not in not_ and not_.endswith(b"us-ascii\r\n\r\n")


def test_header_fields_keep_continuation_lines():
    header = b"Subject: one\r\n two\r\nX-A: 1\r\nsubject: again\r\n\r\n"
    assert mime.header_fields(header, ["Subject"]) == b"Subject: one\r\n two\r\nsubject: again\r\n\r\n"
    assert mime.header_fields(header, [b"SUBJECT"], exclude=True) == b"X-A: 1\r\n\r\n"


def test_header_fields_not_keeps_lines_that_are_not_fields():
    data = S.MALFORMED_HEADERS
    assert section(data, (), "HEADER.FIELDS.NOT", ("subject",)) == (
        b"this is not a header\r\nContent-Type: ; ;\r\nContent-Transfer-Encoding: x-uuencode (comment)\r\n"
        b"From \r\n\r\n")
    assert section(data, (), "HEADER.FIELDS", ("subject",)) == b"Subject: still read\r\n : no name\r\n\r\n"


def test_header_fields_of_a_header_without_blank_line():
    """Dovecot answers "From: a@example.org" here without the final blank line; we always end
    with one, as RFC 3501 describes (a deliberate difference)."""
    data = S.HEADER_ONLY
    assert section(data, (), "HEADER.FIELDS", ("FROM",)) == b"From: a@example.org\r\n\r\n"
    assert section(data, (), "HEADER.FIELDS.NOT", ("SUBJECT",)) == b"From: a@example.org\r\n\r\n"
    assert section(data, (), "HEADER") == data
    assert section(data, (), "TEXT") == b""


def test_multipart_sections():
    data = S.MIXED
    root = mime.parse(data)
    get = lambda part, text="", fields=(): mime.get_section(data, root, Section(part, text, fields))
    assert get((1,)) == "Voilà le rapport.\r\n".encode("latin-1")
    assert get((1,), "MIME") == (b"Content-Type: text/plain; charset=iso-8859-1\r\n"
                                 b"Content-Transfer-Encoding: 8bit\r\n\r\n")
    assert get((3,)) == b"iVBORw0KGgo="
    assert get((3, 1)) == b"iVBORw0KGgo="      # Dovecot: "1" below a single part is the part
    assert get((3, 1, 1)) is None
    assert get((4,)) is None
    text = get((), "TEXT")
    assert text.startswith(b"------=_Part_1_2345.6789\r\n") and text.endswith(b"--\r\n")


def test_message_rfc822_sections():
    data = S.RFC822
    root = mime.parse(data)
    get = lambda part, text="", fields=(): mime.get_section(data, root, Section(part, text, fields))
    whole = get((2,))
    assert whole.startswith(b"Subject: meeting\r\n") and whole.endswith(b"--i--\r\n")
    assert get((2,), "MIME") == (b"Content-Type: message/rfc822\r\n"
                                 b"Content-Description: forwarded message\r\n\r\n")
    header = get((2,), "HEADER")
    assert header.startswith(b"Subject: meeting\r\n") and header.endswith(b"boundary=i\r\n\r\n")
    assert whole == header + get((2,), "TEXT")
    assert get((2,), "TEXT").startswith(b"--i\r\n")
    assert get((2,), "HEADER.FIELDS", ("Subject", "To")) == b"Subject: meeting\r\nTo: team@example.org\r\n\r\n"
    assert get((2,), "HEADER.FIELDS.NOT", ("Subject", "To", "From", "Date", "Message-ID")) == (
        b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n")
    assert get((2, 1)) == b"in1"
    assert get((2, 2), "MIME") == b"Content-Type: text/html; charset=us-ascii\r\n\r\n"
    assert get((2, 2), "TEXT") == b""
    assert get((2, 3)) is None


def test_message_rfc822_with_single_part():
    data = S.RFC822_SINGLE
    assert section(data, (1, 1)) == b"body of inner"
    assert section(data, (1, 1), "MIME") == b"Subject: inner\r\nFrom: x@example.org\r\n\r\n"
    assert section(data, (1,), "TEXT") == b"body of inner"


def test_message_global_sections_are_those_of_a_message():
    """RFC 9051 allows HEADER/TEXT below MESSAGE/GLOBAL; Dovecot 2.3 treats it as opaque."""
    data = b"Content-Type: message/global\r\n\r\nSubject: g\r\n\r\ngbody"
    assert section(data, (1,), "HEADER") == b"Subject: g\r\n\r\n"
    assert section(data, (1,), "TEXT") == b"gbody"


def test_lf_only_message_is_served_with_crlf():
    lf, crlf_ = S.PLAIN_LF, S.PLAIN
    for text in ("", "HEADER", "TEXT"):
        assert section(lf, (), text) == section(crlf_, (), text)
    assert section(lf, (1,)) == section(crlf_, (1,))
    assert section(lf, (), "HEADER.FIELDS", ("subject",)) == b"Subject: lunch?\r\n\r\n"
    assert mime.vsize(lf) == len(crlf_)


def test_nul_is_sent_as_0x80():
    data = S.MALFORMED_HEADERS
    assert section(data, (), "TEXT") == b"body\x80with NUL\r\n"


def test_vsize():
    assert mime.vsize(b"") == 0
    assert mime.vsize(b"a\nb\r\nc\n") == 9
    assert mime.vsize(b"a\rb") == 3
    assert mime.analyze(S.PLAIN_LF).vsize == len(S.PLAIN)


# --- transfer decoding (BINARY) ------------------------------------------------------------

def body_of(data, part):
    root = mime.parse(data)
    return mime.decode_body(data, mime.find_part(root, part))


def test_decode_base64_attachment():
    assert body_of(S.MIXED, (2,)) == S.PDF


def test_decode_quoted_printable():
    assert body_of(S.ALTERNATIVE, (1,)) == "Grüße aus Köln — café, naïve.\r\nSecond line of the report.\r\n".encode()
    qp = (b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
          b"soft=\r\nbreak and =3D equals  \r\nline two=\nthree\ttrailing\t \r\nbad =ZZ end")
    assert mime.decode_body(qp, mime.parse(qp)) == (
        b"softbreak and = equals\r\nline twothree\ttrailing\r\nbad =ZZ end")


def test_decode_identity_encodings():
    data = b"Content-Transfer-Encoding: 8BIT\r\n\r\nline\nline2\r\n"
    assert body_of(data, (1,)) == b"line\r\nline2\r\n"
    data = b"Content-Transfer-Encoding: binary\r\n\r\n\x00\x01\n\xff"
    assert body_of(data, (1,)) == b"\x00\x01\n\xff"
    assert body_of(b"\r\nplain", (1,)) == b"plain"


def test_decode_unknown_encoding_raises():
    data = b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
    with pytest.raises(mime.UnknownEncoding) as info:
        body_of(data, (1,))
    assert info.value.encoding == "x-uuencode"


@pytest.mark.parametrize("encoded,expected", [
    (b"aGVsbG8=", b"hello"),
    (b"aGVs\r\nbG8=\r\n", b"hello"),
    (b"aGVsbG8", b"hello"),                     # padding missing
    (b"aGVs bG8=!!", b"hello"),                 # junk ignored
    (b"aGVsbG8=d29ybGQ=", b"helloworld"),       # concatenated padded chunks
    (b"aGVsbG8=\r\n\r\n", b"hello"),
    (b"a", b""),
    (b"", b""),
])
def test_lenient_base64(encoded, expected):
    data = b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded
    assert body_of(data, (1,)) == expected


def test_base64_round_trip_of_random_bytes():
    payload = bytes(range(256)) * 40
    data = b"Content-Transfer-Encoding: BASE64\r\n\r\n" + base64.encodebytes(payload).replace(b"\n", b"\r\n")
    assert body_of(data, (1,)) == payload
