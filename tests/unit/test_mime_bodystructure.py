"""BODY and BODYSTRUCTURE, compared with exact strings.

The expected strings of the samples are Dovecot 2.3.19's answers for the same bytes (checked
with its imap binary, see test_mime_dovecot.py), except where a test says it differs on purpose.
"""

import base64

import pytest

from mailserver.storage import mime

from . import mime_samples as S

TEXT_DEFAULT = '"text" "plain" ("charset" "us-ascii") NIL NIL "7bit"'


def structures(data):
    a = mime.analyze(data)
    root = mime.parse(data)
    # the standalone function and analyze agree
    assert mime.bodystructure(root, data) == a.bodystructure
    assert mime.bodystructure(root, data, extended=False) == a.body
    return a.bodystructure, a.body


def test_rfc3501_example_body():
    """The BODY example of RFC 3501 section 7.4.2, rebuilt as a message."""
    text = "".join("%-48s\r\n" % ("line %d" % i) for i in range(22)) + "%-50s\r\n" % "last"
    assert len(text) == 1152 and text.count("\n") == 23
    b64 = "".join("A" * 60 + "\r\n" for _ in range(59)) + "".join("A" * 62 + "\r\n" for _ in range(14))
    assert len(b64) == 4554 and b64.count("\n") == 73
    msg = ("MIME-Version: 1.0\r\nContent-Type: MULTIPART/MIXED; BOUNDARY=\"x\"\r\n\r\n"
           "--x\r\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\nContent-Transfer-Encoding: 7BIT\r\n\r\n"
           + text + "\r\n--x\r\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME=cc.diff\r\n"
           "Content-ID: <960723163407.20117h@cac.washington.edu>\r\nContent-Description: Compiler diff\r\n"
           "Content-Transfer-Encoding: BASE64\r\n\r\n" + b64 + "\r\n--x--\r\n").encode()
    bs, body = structures(msg)
    assert body == (
        '(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)'
        '("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") '
        '"<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73) "MIXED")')
    assert bs == (
        '(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23 NIL NIL NIL NIL)'
        '("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") '
        '"<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73 NIL NIL NIL NIL)'
        ' "MIXED" ("BOUNDARY" "x") NIL NIL NIL)')


def test_plain_crlf_and_lf_agree():
    expected = '(' + TEXT_DEFAULT + ' 85 5 NIL NIL NIL NIL)'
    assert structures(S.PLAIN)[0] == expected
    # LF-only storage: sizes are what the client receives (CRLF), lines the same
    assert structures(S.PLAIN_LF) == structures(S.PLAIN)


def test_alternative():
    bs, body = structures(S.ALTERNATIVE)
    assert bs == ('(("text" "plain" ("charset" "UTF-8") NIL NIL "quoted-printable" 92 2 NIL NIL NIL NIL)'
                  '("text" "html" ("charset" "UTF-8") NIL NIL "quoted-printable" 65 1 NIL NIL NIL NIL)'
                  ' "alternative" ("boundary" "=_alt_1") NIL NIL NIL)')
    assert body == ('(("text" "plain" ("charset" "UTF-8") NIL NIL "quoted-printable" 92 2)'
                    '("text" "html" ("charset" "UTF-8") NIL NIL "quoted-printable" 65 1) "alternative")')


def test_mixed_with_attachments():
    bs, body = structures(S.MIXED)
    assert bs == (
        '(("text" "plain" ("charset" "iso-8859-1") NIL NIL "8bit" 19 1 NIL NIL NIL NIL)'
        '("application" "pdf" ("name" "report.pdf") NIL NIL "base64" 2804 NIL '
        '("attachment" ("filename" "report.pdf" "size" "2048")) NIL NIL)'
        '("image" "png" NIL "<logo@example.net>" "Company logo" "base64" 12 NIL ("inline" NIL) NIL NIL)'
        ' "mixed" ("boundary" "----=_Part_1_2345.6789") NIL NIL NIL)')
    assert body == (
        '(("text" "plain" ("charset" "iso-8859-1") NIL NIL "8bit" 19 1)'
        '("application" "pdf" ("name" "report.pdf") NIL NIL "base64" 2804)'
        '("image" "png" NIL "<logo@example.net>" "Company logo" "base64" 12) "mixed")')


def test_nested_multiparts_and_language():
    bs, _ = structures(S.NESTED)
    assert bs == (
        '((("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 10 0 NIL NIL NIL NIL)'
        '(("text" "html" ("charset" "utf-8") NIL NIL "7bit" 21 0 NIL NIL NIL NIL)'
        '("image" "gif" NIL "<pic@x>" NIL "base64" 20 NIL NIL NIL NIL)'
        ' "related" ("boundary" "rel" "type" "text/html") NIL NIL NIL)'
        ' "alternative" ("boundary" "alt") NIL NIL NIL)'
        '("text" "csv" ("name" "data.csv" "charset" "us-ascii") NIL NIL "7bit" 8 1 NIL'
        ' ("attachment" ("filename" "data.csv")) ("en" "fr") NIL)'
        ' "mixed" ("boundary" "outer") NIL NIL NIL)')


def test_message_rfc822_has_envelope_body_and_lines():
    bs, body = structures(S.RFC822)
    inner_env = ('("Mon, 1 Jan 2024 10:00:00 +0000" "meeting" (("Doe, J" NIL "j" "d.example")) '
                 '(("Doe, J" NIL "j" "d.example")) (("Doe, J" NIL "j" "d.example")) '
                 '((NIL NIL "team" "example.org")) NIL NIL NIL "<inner1@d.example>")')
    assert bs == (
        '(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 0 NIL NIL NIL NIL)'
        '("message" "rfc822" NIL NIL "forwarded message" "7bit" 335 ' + inner_env +
        ' (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0 NIL NIL NIL NIL)'
        '("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 10 0 NIL NIL NIL NIL)'
        ' "alternative" ("boundary" "i") NIL NIL NIL) 17 NIL NIL NIL NIL)'
        ' "mixed" ("boundary" "o") NIL NIL NIL)')
    assert body == (
        '(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 0)'
        '("message" "rfc822" NIL NIL "forwarded message" "7bit" 335 ' + inner_env +
        ' (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0)'
        '("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 10 0) "alternative") 17) "mixed")')


def test_message_rfc822_with_single_part_inside():
    bs, _ = structures(S.RFC822_SINGLE)
    assert bs == (
        '(("message" "rfc822" NIL NIL NIL "7bit" 52 (NIL "inner" ((NIL NIL "x" "example.org")) '
        '((NIL NIL "x" "example.org")) ((NIL NIL "x" "example.org")) NIL NIL NIL NIL NIL) '
        '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 0 NIL NIL NIL NIL) 3 NIL NIL NIL NIL)'
        ' "mixed" ("boundary" "o") NIL NIL NIL)')


def test_top_level_message_rfc822():
    msg = (b"Content-Type: message/rfc822\r\n\r\nSubject: inside\r\n"
           b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n\r\na\r\n--z--\r\n")
    assert structures(msg)[1] == (
        '("message" "rfc822" NIL NIL NIL "7bit" 79 (NIL "inside" NIL NIL NIL NIL NIL NIL NIL NIL) '
        '(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0) "mixed") 7)')


def test_digest_defaults_to_message_rfc822():
    bs, _ = structures(S.DIGEST)
    assert bs == (
        '(("message" "rfc822" NIL NIL NIL "7bit" 41 (NIL "m1" ((NIL NIL "a" "example.org")) '
        '((NIL NIL "a" "example.org")) ((NIL NIL "a" "example.org")) NIL NIL NIL NIL NIL) '
        '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0 NIL NIL NIL NIL) 3 NIL NIL NIL NIL)'
        '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0 NIL NIL NIL NIL)'
        '(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 26 0 NIL NIL NIL NIL)'
        ' "mixed" ("boundary" "dd") NIL NIL NIL) "digest" ("boundary" "d") NIL NIL NIL)')


def test_rfc2231_parameters_as_dovecot_shows_them():
    """Continuations joined, still encoded, named "name*"; plain parameters first."""
    bs, _ = structures(S.RFC2231)
    assert bs == (
        '(("application" "x-stuff" ("title*" "us-ascii\'en\'This%20is%20even%20more%20%2A%2A%2Afun'
        '%2A%2A%2A%20isn\'t it!") NIL NIL "7bit" 3 NIL ("attachment" ("size" "3" "filename*" '
        '"utf-8\'\'na%C3%AFve%20file.txt")) NIL NIL)'
        '("message" "external-body" ("access-type" "URL" "URL" '
        '"ftp://cs.utk.edu/pub/moore/bulk-mailer/bulk-mailer.tar") NIL NIL "7bit" 40 NIL NIL NIL NIL)'
        '("Text" "Plain" ("CHARSET" "ISO-8859-1" "Format" "Flowed") NIL NIL "Quoted-Printable" 6 0'
        ' NIL NIL NIL NIL) "mixed" ("boundary" "p") NIL NIL NIL)')


def test_eight_bit_parameter_is_a_literal():
    bs, _ = structures(S.EIGHT_BIT)
    name = "Übersicht.txt"
    assert '("name" {%d}\r\n%s)' % (len(name.encode()), name) in bs


def test_charset_added_after_other_text_params():
    msg = b"Content-Type: text/plain; format=flowed\r\n\r\nx\r\n"
    assert structures(msg)[1] == '("text" "plain" ("format" "flowed" "charset" "us-ascii") NIL NIL "7bit" 3 1)'


def test_extension_fields_of_single_part():
    msg = (b"Content-Type: image/png; name=a.png\r\nContent-Disposition: INLINE\r\n"
           b"Content-Language: \r\nContent-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
           b"Content-Location: http://x.example/y\r\n   z\r\n\r\nx\r\n")
    assert structures(msg)[0] == (
        '("image" "png" ("name" "a.png") NIL NIL "7bit" 3 "Q2hlY2sgSW50ZWdyaXR5IQ==" ("INLINE" NIL) NIL'
        ' "http://x.example/y   z")')


def test_quoted_pair_in_parameter_becomes_literal():
    msg = b'Content-Type: text/plain; charset="us\\"ascii"; name="a b" (c) ; x="" ; y=; z\r\n\r\nx\r\n'
    assert structures(msg)[1] == (
        '("text" "plain" ("charset" {8}\r\nus"ascii "name" "a b" "x" "" "y" "") NIL NIL "7bit" 3 1)')


def test_encoding_comment_dropped_and_invalid_type_defaults():
    """Dovecot shows "" "" for an invalid Content-Type; RFC 2045 5.2 says to assume
    text/plain; charset=us-ascii, which we do (a deliberate difference)."""
    assert structures(S.MALFORMED_HEADERS)[1] == '("text" "plain" ("charset" "us-ascii") NIL NIL "x-uuencode" 15 1)'
    assert structures(b"Content-Type: text\r\n\r\nx")[1] == '(' + TEXT_DEFAULT + ' 1 0)'


def test_empty_and_odd_messages():
    assert structures(S.EMPTY)[1] == '(' + TEXT_DEFAULT + ' 0 0)'
    assert structures(S.HEADER_ONLY)[1] == '(' + TEXT_DEFAULT + ' 0 0)'
    assert structures(S.BODY_ONLY)[1] == '(' + TEXT_DEFAULT + ' 18 1)'
    assert structures(S.NO_FINAL_NEWLINE)[1] == '((' + TEXT_DEFAULT + ' 3 0) "mixed")'


def test_multipart_without_boundary_shows_one_empty_part():
    assert structures(S.NO_BOUNDARY)[0] == '((' + TEXT_DEFAULT + ' 0 0 NIL NIL NIL NIL) "mixed" NIL NIL NIL NIL)'


def test_unterminated_and_prefix_boundaries():
    assert structures(S.UNTERMINATED)[1] == (
        '(((' + TEXT_DEFAULT + ' 1 0) "mixed")(' + TEXT_DEFAULT + ' 3 1) "mixed")')
    assert structures(S.PREFIX_BOUNDARIES)[1] == (
        '(((' + TEXT_DEFAULT + ' 1 0)(' + TEXT_DEFAULT + ' 1 0) "alternative")(' + TEXT_DEFAULT + ' 1 0) "mixed")')


def test_close_delimiter_right_before_outer_boundary_keeps_its_line_end():
    msg = (b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n"
           b"Subject: in\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\n\r\nx\r\n--i--\r\n"
           b"--o--\r\n")
    assert structures(msg)[1] == (
        '(("message" "rfc822" NIL NIL NIL "7bit" 81 (NIL "in" NIL NIL NIL NIL NIL NIL NIL NIL) '
        '((' + TEXT_DEFAULT + ' 1 0) "alternative") 7) "mixed")')


def test_message_global_is_a_basic_body():
    """IMAP4rev1's grammar gives envelope and lines to MESSAGE/RFC822 only (Dovecot 2.3 too)."""
    msg = b"Content-Type: message/global\r\n\r\nSubject: g\r\n\r\nbody"
    assert structures(msg)[0] == '("message" "global" NIL NIL NIL "7bit" 18 NIL NIL NIL NIL)'
    # ... but its content is still parsed, for sections and SEARCH
    assert mime.parse(msg).message is not None


def test_depth_cap_makes_an_opaque_part():
    depth = mime.MAX_DEPTH + 20
    msg = b"Content-Type: message/rfc822\r\n\r\n" * depth + b"Subject: deep\r\n\r\nbody\r\n"
    root = mime.parse(msg)
    bs = mime.bodystructure(root, msg)
    assert bs.count('"message" "rfc822"') == mime.MAX_DEPTH
    assert '"application" "octet-stream"' in bs
    # ("b1=" is no prefix of "b10=": a prefix would match, as RFC 2046 allows)
    deep = b"".join(b"Content-Type: multipart/mixed; boundary=b%d=\r\n\r\n--b%d=\r\n" % (i, i)
                    for i in range(depth))
    bs = mime.bodystructure(mime.parse(deep), deep)
    assert bs.count('"mixed"') == mime.MAX_DEPTH


def test_base64_message_rfc822_does_not_break_structure():
    inner = base64.encodebytes(b"Subject: hidden\r\n\r\nbody\r\n").replace(b"\n", b"\r\n")
    msg = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n" + inner
    bs, _ = structures(msg)
    assert bs.startswith('("message" "rfc822" NIL NIL NIL "base64" ')


@pytest.mark.parametrize("name", sorted(S.SAMPLES))
def test_every_sample_is_balanced(name):
    bs, body = structures(S.SAMPLES[name])
    for s in (bs, body):
        # parentheses balance outside strings and literals
        depth, i = 0, 0
        while i < len(s):
            c = s[i]
            if c == '"':
                i = s.index('"', i + 1) + 1
                continue
            if c == "{":
                j = s.index("}", i)
                n = int(s[i + 1:j])
                i = j + 3 + len(s[j + 3:].encode()[:n].decode())
                continue
            depth += {"(": 1, ")": -1}.get(c, 0)
            assert depth >= 0
            i += 1
        assert depth == 0
