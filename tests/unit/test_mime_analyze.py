"""analyze(): what the index cache keeps of a message."""

import json

import pytest

from mailserver.storage import mime
from mailserver.storage.mime import analysis

from . import mime_samples as S


@pytest.mark.parametrize("name", sorted(S.SAMPLES))
def test_analysis_agrees_with_the_single_functions(name):
    data = S.SAMPLES[name]
    a = mime.analyze(data)
    root = mime.parse(data)
    header = data[root.header_start:root.header_end]
    assert a.envelope == mime.envelope(header)
    assert a.bodystructure == mime.bodystructure(root, data)
    assert a.body == mime.bodystructure(root, data, extended=False)
    assert a.header_size == len(header)
    assert a.vsize == mime.vsize(data)
    assert a.parts.to_json() == root.to_json()
    # everything the cache stores serialises to JSON
    json.dumps([a.envelope, a.bodystructure, a.body, a.parts.to_json(), a.header_size, a.vsize,
                a.cached_headers.decode("latin-1"), sorted(a.cached_header_names)])


@pytest.mark.parametrize("name", sorted(S.SAMPLES))
def test_cached_headers_answer_header_fields_like_the_full_header(name):
    data = S.SAMPLES[name]
    a = mime.analyze(data)
    header = data[:a.parts.header_end]
    wanted = ["From", "To", "Cc", "Subject", "Date", "Message-ID", "References", "Content-Type",
              "X-Priority", "List-Unsubscribe"]
    assert all(n.lower() in a.cached_header_names for n in wanted)
    assert mime.header_fields(a.cached_headers, wanted) == mime.header_fields(header, wanted)
    for name_ in ("subject", "from"):
        assert mime.decoded_headers(a.cached_headers, name_) == mime.decoded_headers(header, name_)


def test_cached_headers_leave_out_uncached_fields():
    a = mime.analyze(S.PLAIN)
    assert b"Received:" not in a.cached_headers and b"\tby mx" not in a.cached_headers
    assert a.cached_headers.startswith(b"Return-Path: <bob@example.net>\r\nFrom: Bob Example")
    assert "received" not in a.cached_header_names


def test_oversized_cached_field_is_dropped_and_not_claimed():
    big_refs = b"References: " + b" ".join(b"<m%d@example.org>" % i for i in range(400)) + b"\r\n"
    data = b"Subject: s\r\n" + big_refs + b"From: a@b\r\n\r\nbody"
    a = mime.analyze(data)
    assert "references" not in a.cached_header_names
    assert b"References" not in a.cached_headers
    assert a.cached_headers == b"Subject: s\r\nFrom: a@b\r\n"
    assert len(a.cached_headers) <= analysis.MAX_CACHED_TOTAL


def test_total_budget_of_cached_headers():
    names = ["To", "Cc", "Bcc", "Reply-To", "References", "In-Reply-To", "List-Unsubscribe"]
    value = b", ".join(b"user%d@example.org" % i for i in range(90))   # ~1.9 KB per field
    data = b"".join(n.encode() + b": " + value + b"\r\n" for n in names) + b"\r\n"
    a = mime.analyze(data)
    covered = [n for n in names if n.lower() in a.cached_header_names]
    assert 0 < len(covered) < len(names)
    assert len(a.cached_headers) <= analysis.MAX_CACHED_TOTAL
    for n in covered:
        assert mime.header_fields(a.cached_headers, [n]) == mime.header_fields(data, [n])


def test_lf_message_cache_is_crlf():
    a = mime.analyze(S.PLAIN_LF)
    assert b"\r\n" in a.cached_headers and a.cached_headers.count(b"\n") == a.cached_headers.count(b"\r\n")
    assert a.vsize == len(S.PLAIN)
    assert a.header_size == S.PLAIN_LF.index(b"\n\n") + 2


def test_analyze_accepts_bytearray_and_memoryview():
    a = mime.analyze(bytearray(S.MIXED))
    b = mime.analyze(memoryview(S.MIXED))
    assert a.bodystructure == b.bodystructure == mime.analyze(S.MIXED).bodystructure
