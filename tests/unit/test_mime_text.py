"""Decoded text for SEARCH and SORT: RFC 2047 words, charsets, text parts."""

import pytest

from mailserver.storage import mime
from mailserver.storage.mime._charsets import codec_for, to_text

from . import mime_samples as S


@pytest.mark.parametrize("raw,expected", [
    (b"plain ascii", "plain ascii"),
    (b"=?iso-8859-1?q?caf=E9?=", "café"),
    (b"=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=", "ab"),               # whitespace between words goes
    (b"=?iso-8859-1?q?caf=E9?= =?iso-8859-1?q?_au_lait?=", "café au lait"),
    (b"=?utf-8?q?a?= x =?utf-8?q?b?=", "a x b"),                     # other text stays
    (b"Re: =?UTF-8?B?UXVhcnRlcmx5IHJlcG9ydCDigJQgUTI=?= (2)", "Re: Quarterly report — Q2 (2)"),
    (b"=?utf-8?b?w6k?=", "é"),                                        # missing padding
    (b"=?utf-8?q?=C3?= =?utf-8?q?=A9?=", "é"),                        # character split across words
    (b"=?utf-8*fr?q?caf=C3=A9?=", "café"),                            # RFC 2231 language suffix
    (b"=?x-unknown?q?caf=C3=A9?=", "café"),                           # unknown charset: UTF-8 guess
    (b"=?x-unknown?q?caf=E9?=", "café"),                              # ... else windows-1252
    (b"=?windows-1252?q?=93quoted=94?=", "\u201cquoted\u201d"),
    (b"=?utf-8?q?broken", "=?utf-8?q?broken"),                        # not a word
    (b"J\xc3\xb6rg", "Jörg"),                                         # raw 8-bit UTF-8
    (b"J\xf6rg", "Jörg"),                                             # raw 8-bit latin-1
    (b"=?rot13?q?uryyb?=", "uryyb"),                                  # not a text codec: refused
    (b"=?koi8-r?b?8NLJ18XU?=", "Привет"),
    (b"=?iso-2022-jp?b?GyRCJUYlOSVIGyhC?=", "テスト"),
])
def test_decode_words(raw, expected):
    assert mime.decode_words(raw) == expected


def test_decoded_headers_all_values_unfolded():
    header = (b"Subject: =?utf-8?q?caf=C3=A9?=\r\n and more\r\nTo: a@b\r\nsubject: second\r\n\r\n")
    assert mime.decoded_headers(header, "SUBJECT") == ["café and more", "second"]
    assert mime.decoded_headers(header, "cc") == []
    assert mime.decoded_headers(S.ALTERNATIVE, "from") == ["Bob Bäcker <bob@example.net>"]


@pytest.mark.parametrize("charset,data,expected", [
    ("utf-8", "Grüße".encode(), "Grüße"),
    ("iso-8859-1", "Grüße".encode("latin-1"), "Grüße"),
    ("ISO-8859-1", b"\x93smart\x94", "\u201csmart\u201d"),            # latin-1 label, cp1252 bytes
    ("windows-1252", b"\x80 5", "€ 5"),
    ("us-ascii", "naïve".encode(), "naïve"),                          # mislabelled UTF-8
    ("us-ascii", "naïve".encode("latin-1"), "naïve"),
    (None, "ü".encode(), "ü"),
    ("x-no-such-charset", "ü".encode("cp1252"), "ü"),
    ("utf-8", b"bad \xff byte", "bad \ufffd byte"),                    # invalid UTF-8: replaced
    ("utf-16", "hi".encode("utf-16"), "hi"),
    ("gb2312", "中文".encode("gb18030"), "中文"),
    ("ks_c_5601-1987", "한국".encode("cp949"), "한국"),
    ('"utf-8"', b"x", "x"),
    ("idna", b"xn--caf-dma", "xn--caf-dma"),                          # refused codec: bytes as text
])
def test_to_text(charset, data, expected):
    assert to_text(data, charset) == expected


def test_refused_codecs():
    for name in ("rot13", "base64", "zlib", "idna", "unicode_escape", "undefined"):
        assert codec_for(name) is None
    assert codec_for("latin1") == "cp1252" and codec_for("US-ASCII") == "ascii"


def test_search_text_of_a_multipart():
    texts = list(mime.search_text(S.ALTERNATIVE, mime.parse(S.ALTERNATIVE)))
    assert texts == ["Grüße aus Köln — café, naïve.\r\nSecond line of the report.\r\n",
                     "<p>Grüße aus <b>Köln</b> — café</p>\r\n"]


def test_search_text_skips_attachments_and_decodes_charsets():
    texts = list(mime.search_text(S.MIXED, mime.parse(S.MIXED)))
    assert texts == ["Voilà le rapport.\r\n"]
    texts = list(mime.search_text(S.RFC2231, mime.parse(S.RFC2231)))
    assert texts == ["café"]


def test_search_text_includes_encapsulated_messages():
    texts = list(mime.search_text(S.RFC822, mime.parse(S.RFC822)))
    assert texts == ["see attached", "in1", "<b>in2</b>"]
    texts = list(mime.search_text(S.DIGEST, mime.parse(S.DIGEST)))
    assert texts == ["body1", "plain", "default here is text/plain"]


def test_search_text_of_odd_messages():
    assert list(mime.search_text(b"", mime.parse(b""))) == [""]
    data = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: x-weird\r\n\r\nraw \xc3\xa9"
    assert list(mime.search_text(data, mime.parse(data))) == ["raw é"]
    data = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nw6l0w6k=\r\n"
    assert list(mime.search_text(data, mime.parse(data))) == ["été"]
