"""The MIME splitter: offsets, numbering, defaults, part addressing, robustness."""

import json
import random

import pytest

from mailserver.storage import mime

from . import mime_samples as S


def check_tree(part, data, lo=0, hi=None):
    """Offsets are ordered and nested inside the parent; numbers follow RFC 3501."""
    hi = len(data) if hi is None else hi
    assert lo <= part.header_start <= part.header_end <= part.body_end <= hi
    assert part.body_start == part.header_end
    for i, child in enumerate(part.children, 1):
        assert child.number == (part.number + "." if part.number else "") + str(i)
        check_tree(child, data, part.header_end, part.body_end)
    if part.message is not None:
        assert part.message.number == part.number
        check_tree(part.message, data, part.header_end, part.body_end)


@pytest.mark.parametrize("name", sorted(S.SAMPLES))
def test_samples_give_consistent_trees(name):
    data = S.SAMPLES[name]
    root = mime.parse(data)
    assert root.number == ""
    check_tree(root, data)


def test_plain_offsets():
    data = S.PLAIN
    root = mime.parse(data)
    blank = data.index(b"\r\n\r\n") + 4
    assert (root.header_start, root.header_end, root.body_end) == (0, blank, len(data))
    assert (root.ctype, root.subtype, root.params) == ("text", "plain", [("charset", "us-ascii")])
    assert root.encoding == "7bit" and root.lines == 5 and root.octets == len(data) - blank
    assert root.children == [] and root.message is None


def test_lf_only_offsets_and_sizes():
    root = mime.parse(S.PLAIN_LF)
    crlf_root = mime.parse(S.PLAIN)
    assert root.header_end == S.PLAIN_LF.index(b"\n\n") + 2
    assert root.lines == crlf_root.lines and root.octets == crlf_root.octets


def test_multipart_part_bodies_exclude_the_delimiter_line_break():
    data = S.NESTED
    root = mime.parse(data)
    assert [c.ctype + "/" + c.subtype for c in root.children] == ["multipart/alternative", "text/csv"]
    alt = root.children[0]
    plain, related = alt.children
    assert data[plain.header_end:plain.body_end] == b"plain body"
    assert data[plain.header_start:plain.header_end] == b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    html, gif = related.children
    assert (html.number, gif.number) == ("1.2.1", "1.2.2")
    assert gif.id == "<pic@x>" and gif.encoding == "base64"
    assert related.param("TYPE") == "text/html"
    csv = root.children[1]
    assert data[csv.header_end:csv.body_end] == b"a,b\r\n1,2"
    assert csv.language == ["en", "fr"]
    assert csv.disposition == ("attachment", [("filename", "data.csv")])
    # the root body runs to the end: preamble, parts and epilogue
    assert root.body_end == len(data)


def test_message_rfc822_encapsulation():
    data = S.RFC822
    root = mime.parse(data)
    fwd = root.children[1]
    assert (fwd.ctype, fwd.subtype, fwd.description) == ("message", "rfc822", "forwarded message")
    inner = fwd.message
    assert inner.header_start == fwd.header_end
    assert data[inner.header_start:].startswith(b"Subject: meeting")
    assert (inner.ctype, inner.subtype) == ("multipart", "alternative")
    assert [c.number for c in inner.children] == ["2.1", "2.2"]
    assert data[inner.children[1].header_end:inner.children[1].body_end] == b"<b>in2</b>"
    assert fwd.lines == data[fwd.header_end:fwd.body_end].count(b"\n")


def test_digest_defaults_and_nested_default():
    root = mime.parse(S.DIGEST)
    m1, plain, mixed = root.children
    assert (m1.ctype, m1.subtype) == ("message", "rfc822")
    assert m1.message is not None and (m1.message.ctype, m1.message.subtype) == ("text", "plain")
    assert (plain.ctype, plain.subtype) == ("text", "plain")
    assert (mixed.children[0].ctype, mixed.children[0].subtype) == ("text", "plain")


def test_rfc2231_params_decoded():
    root = mime.parse(S.RFC2231)
    stuff, ext, text = root.children
    assert stuff.params == [("title", "This is even more ***fun*** isn't it!")]
    assert stuff.disposition == ("attachment", [("size", "3"), ("filename", "naïve file.txt")])
    assert ext.param("url") == "ftp://cs.utk.edu/pub/moore/bulk-mailer/bulk-mailer.tar"
    assert (text.ctype, text.subtype, text.encoding, text.charset) == (
        "text", "plain", "quoted-printable", "ISO-8859-1")
    assert text.params == [("CHARSET", "ISO-8859-1"), ("Format", "Flowed")]


def test_rfc2231_examples_from_the_rfc():
    def params(value):
        data = b"Content-Type: application/x-stuff; " + value + b"\r\n\r\n"
        return mime.parse(data).params
    assert params(b"title*=us-ascii'en-us'This%20is%20%2A%2A%2Afun%2A%2A%2A") == [
        ("title", "This is ***fun***")]
    # sections out of order, latin-1 charset
    assert params(b"name*1*=%E9t%E9.txt; name*0*=iso-8859-1''caf%E9-") == [("name", "café-été.txt")]
    # unknown charset: bytes read as UTF-8 if they are
    assert params(b"name*=x-unknown''%C3%A9") == [("name", "é")]


def test_raw_8bit_parameter_decoded_as_utf8():
    root = mime.parse(S.EIGHT_BIT)
    assert root.children[1].param("name") == "Übersicht.txt"


def test_header_only_no_final_newline_empty():
    root = mime.parse(S.HEADER_ONLY)
    assert root.header_end == root.body_end == len(S.HEADER_ONLY)
    root = mime.parse(b"")
    assert (root.header_start, root.header_end, root.body_end, root.ctype) == (0, 0, 0, "text")
    root = mime.parse(S.BODY_ONLY)
    assert root.header_end == 2 and root.octets == len(S.BODY_ONLY) - 2
    data = S.NO_FINAL_NEWLINE
    root = mime.parse(data)
    (part,) = root.children
    assert data[part.header_end:part.body_end] == b"abc"


def test_boundary_found_before_the_blank_line_ends_the_header():
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/html\r\n--b--\r\n"
    (part,) = mime.parse(data).children
    assert part.subtype == "html"
    # the line break before the delimiter belongs to it (Dovecot: same)
    assert part.header_end == part.body_end == data.index(b"--b--") - 2


def test_unterminated_inner_multipart_closed_by_outer_boundary():
    data = S.UNTERMINATED
    root = mime.parse(data)
    inner, b = root.children
    assert [c.number for c in inner.children] == ["1.1"]
    assert data[inner.children[0].header_end:inner.children[0].body_end] == b"A"
    assert data[b.header_end:b.body_end] == b"B\r\n"


def test_longest_prefix_boundary_wins():
    root = mime.parse(S.PREFIX_BOUNDARIES)
    alt, z = root.children
    assert [c.number for c in alt.children] == ["1.1", "1.2"]
    assert S.PREFIX_BOUNDARIES[z.header_end:z.body_end] == b"z"


def test_same_boundary_nested_twice_innermost_first():
    data = (b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\ninner\r\n--x--\r\n--x--\r\n")
    root = mime.parse(data)
    (inner,) = root.children
    assert len(inner.children) == 1


def test_first_occurrence_of_a_content_field_counts():
    data = b"Content-Type: text/html; charset=utf-8\r\nContent-Type: image/png\r\n\r\nx"
    root = mime.parse(data)
    assert (root.ctype, root.subtype, root.charset) == ("text", "html", "utf-8")


def test_content_type_on_first_line_and_odd_spacing():
    root = mime.parse(b"content-type :  TEXT / HTML ; Charset = \"x\" ; \r\n\r\n")
    assert (root.ctype, root.subtype, root.params) == ("text", "html", [("Charset", "x")])
    assert root.raw["type"] == "TEXT" and root.raw["subtype"] == "HTML"


def test_unquoted_boundary_with_specials():
    data = (b"Content-Type: multipart/mixed; boundary=----=_NextPart_000_0001\r\n\r\n"
            b"------=_NextPart_000_0001\r\n\r\nhi\r\n------=_NextPart_000_0001--\r\n")
    assert len(mime.parse(data).children) == 1


# --- part numbers (RFC 3501 6.4.5) ---------------------------------------------------------

def rfc3501_numbering_message():
    """The message of the RFC 3501 6.4.5 example, with part types as listed there."""
    def mp(sub, boundary, parts):
        body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
        return (b"Content-Type: multipart/" + sub + b"; boundary=" + boundary + b"\r\n\r\n"
                + body + b"--" + boundary + b"--")

    def leaf(ctype, text=b"x"):
        return b"Content-Type: " + ctype + b"\r\n\r\n" + text

    def msg(body):
        return b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + body

    part3 = msg(mp(b"mixed", b"m3", [leaf(b"text/plain"), leaf(b"application/octet-stream")]))
    part42 = msg(mp(b"mixed", b"m42", [leaf(b"text/plain"), mp(b"alternative", b"a422", [
        leaf(b"text/plain"), leaf(b"text/richtext")])]))
    part4 = mp(b"mixed", b"m4", [leaf(b"image/gif"), part42])
    return b"Subject: outer\r\n" + mp(b"mixed", b"top", [
        leaf(b"text/plain"), leaf(b"application/octet-stream"), part3, part4]) + b"\r\n"


@pytest.mark.parametrize("number,expected", [
    ("1", "text/plain"), ("2", "application/octet-stream"), ("3", "message/rfc822"),
    ("3.1", "text/plain"), ("3.2", "application/octet-stream"), ("4", "multipart/mixed"),
    ("4.1", "image/gif"), ("4.2", "message/rfc822"), ("4.2.1", "text/plain"),
    ("4.2.2", "multipart/alternative"), ("4.2.2.1", "text/plain"), ("4.2.2.2", "text/richtext"),
    ("5", None), ("3.3", None), ("4.3", None), ("0", None), ("4.2.2.3", None),
])
def test_rfc3501_part_numbers(number, expected):
    root = mime.parse(rfc3501_numbering_message())
    part = mime.find_part(root, tuple(int(n) for n in number.split(".")))
    if expected is None:
        assert part is None
    else:
        assert part.ctype + "/" + part.subtype == expected
        assert part.number == number


def test_single_part_message_body_is_part_1():
    root = mime.parse(S.PLAIN)
    assert mime.find_part(root, ()) is root
    assert mime.find_part(root, (1,)) is root
    assert mime.find_part(root, (2,)) is None
    assert mime.find_part(root, (1, 1)) is None


def test_leaf_part_1_is_itself_like_dovecot():
    root = mime.parse(S.MIXED)
    pdf = mime.find_part(root, (2,))
    assert mime.find_part(root, (2, 1)) is pdf
    assert mime.find_part(root, (2, 1, 1)) is None


def test_message_rfc822_with_single_part_body():
    root = mime.parse(S.RFC822_SINGLE)
    part = mime.find_part(root, (1,))
    assert part.subtype == "rfc822"
    assert mime.find_part(root, (1, 1)) is part.message
    assert mime.find_part(root, (1, 2)) is None
    assert mime.find_part(root, (1, 1, 1)) is None


def test_top_level_message_rfc822_parts():
    data = (b"Content-Type: message/rfc822\r\n\r\nSubject: inside\r\n"
            b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n\r\na\r\n--z--\r\n")
    root = mime.parse(data)
    assert mime.find_part(root, (1,)) is root
    assert mime.find_part(root, (1, 1)) is root.message.children[0]


def test_multipart_without_parts_has_no_part_1():
    root = mime.parse(S.NO_BOUNDARY)
    assert root.children == [] and mime.find_part(root, (1,)) is None


# --- index cache form ----------------------------------------------------------------------

def same_tree(a, b):
    for slot in mime.Part.__slots__:
        if slot in ("children", "message"):
            continue
        assert getattr(a, slot) == getattr(b, slot), slot
    assert len(a.children) == len(b.children)
    for x, y in zip(a.children, b.children):
        same_tree(x, y)
    assert (a.message is None) == (b.message is None)
    if a.message is not None:
        same_tree(a.message, b.message)


@pytest.mark.parametrize("name", sorted(S.SAMPLES))
def test_json_round_trip(name):
    data = S.SAMPLES[name]
    root = mime.parse(data)
    text = json.dumps(root.to_json(), separators=(",", ":"))
    back = mime.Part.from_json(json.loads(text))
    same_tree(root, back)
    assert mime.bodystructure(back, data) == mime.bodystructure(root, data)


def test_json_is_compact():
    root = mime.parse(S.PLAIN)
    assert root.to_json() == ["", 0, 409, 494, "text", "plain", ["charset", "us-ascii"], None, None,
                              "7bit", None, None, None, None, 5, 85]


# --- robustness ----------------------------------------------------------------------------

GARBAGE_PIECES = [
    b"Content-Type: multipart/mixed; boundary=a\r\n", b"Content-Type: message/rfc822\r\n",
    b"Content-Type: multipart/digest; boundary=\"b\"\n", b"--a\r\n", b"--a--\r\n", b"--b\n",
    b"--b--", b"\r\n", b"\n", b"\r", b"\x00", b"\xff\xfe", b"Subject: =?utf-8?q?x?=\r\n",
    b" folded\r\n", b"\t", b"text text text\r\n", b"Content-Type: text/plain; charset*=''%\r\n",
    b"Content-Disposition: attachment; filename*0*=utf-8''a; filename*1=\"\r\n", b":\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"=?", b"(", b"\"", b"<", b"@", b";", b"--",
]


def test_garbage_never_raises_and_trees_stay_consistent():
    rng = random.Random(20240603)
    for _ in range(400):
        data = b"".join(rng.choice(GARBAGE_PIECES) for _ in range(rng.randint(0, 40)))
        a = mime.analyze(data)
        check_tree(a.parts, data)
        for part in a.parts.walk():
            if part.number:
                mime.get_section(data, a.parts, mime.Section(tuple(int(n) for n in part.number.split("."))))
        list(mime.search_text(data, a.parts))


def test_mutated_samples_never_raise():
    rng = random.Random(7)
    samples = [s for s in S.SAMPLES.values() if s]
    for _ in range(300):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data) + 1)
            op = rng.random()
            if op < 0.4:
                del data[pos:pos + rng.randint(1, 30)]
            elif op < 0.7:
                data[pos:pos] = rng.choice(GARBAGE_PIECES)
            elif pos < len(data):
                data[pos] = rng.randrange(256)
        data = bytes(data)
        a = mime.analyze(data)
        check_tree(a.parts, data)


def test_part_count_is_capped():
    n = mime.MAX_PARTS + 50
    data = (b"Content-Type: multipart/mixed; boundary=x\r\n\r\n" + b"--x\r\n\r\ny\r\n" * n + b"--x--\r\n")
    root = mime.parse(data)
    assert len(root.children) < mime.MAX_PARTS
    assert root.body_end == len(data)
    check_tree(root, data)


def test_many_parts_parse_in_linear_time():
    import time
    data = (b"Content-Type: multipart/mixed; boundary=x\r\n\r\n"
            + b"--x\r\nContent-Type: text/plain\r\n\r\nline\r\n" * 5000 + b"--x--\r\n")
    start = time.perf_counter()
    root = mime.parse(data)
    assert len(root.children) == 5000
    assert time.perf_counter() - start < 2.0


def test_long_lines_and_big_bodies():
    data = b"Subject: " + b"x" * 200000 + b"\r\n\r\n" + b"y" * 1000000
    root = mime.parse(data)
    assert root.header_end == 200000 + 13
    assert root.octets == 1000000


# --- the two boundary search strategies agree -----------------------------------------------

def deep_messages():
    """Messages nested deeper than the direct-search limit."""
    leaf = b"Content-Type: text/plain\r\n\r\n-- \r\nsig\r\n--not-a-boundary\r\n"
    out = []
    for depth in (4, 7, 12):
        body = leaf
        for i in range(depth):
            b = b"lvl%d" % i if i % 2 else b"lvl%d_x" % i  # prefixes of one another, too
            body = (b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\npre\r\n--" + b + b"\r\n"
                    + body + b"\r\n--" + b + b"\r\n\r\nsecond\r\n--" + b + b"--\r\nepi\r\n")
            if i % 3 == 2:
                body = b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n" + body
        out.append(body)
        out.append(body.replace(b"--lvl1--", b"--lvl1"))  # one unterminated level
        out.append(body.replace(b"\r\n", b"\n"))
    return out


@pytest.mark.parametrize("index", range(9))
def test_direct_and_listed_boundary_search_agree(monkeypatch, index):
    data = deep_messages()[index]
    results = []
    for shallow in (0, 3, 1000):
        monkeypatch.setattr(mime.parser, "SHALLOW", shallow)
        root = mime.parse(data)
        check_tree(root, data)
        results.append(root.to_json())
    assert results[0] == results[1] == results[2]


def test_strategies_agree_on_samples_and_garbage(monkeypatch):
    rng = random.Random(99)
    inputs = list(S.SAMPLES.values())
    inputs += [b"".join(rng.choice(GARBAGE_PIECES) for _ in range(rng.randint(0, 40))) for _ in range(200)]
    for data in inputs:
        trees = []
        for shallow in (0, 1000):
            monkeypatch.setattr(mime.parser, "SHALLOW", shallow)
            trees.append(mime.parse(data).to_json())
        assert trees[0] == trees[1], data


@pytest.mark.parametrize("name,data", [
    ("deep unterminated over many dash lines",
     b"".join(b"Content-Type: multipart/mixed; boundary=b%d=\r\n\r\n--b%d=\r\n" % (i, i) for i in range(99))
     + b"--y\r\n" * 100_000),
    ("deep unterminated over a big body",
     b"".join(b"Content-Type: multipart/mixed; boundary=b%d=\r\n\r\n--b%d=\r\n" % (i, i) for i in range(99))
     + b"z" * 5_000_000),
    ("nested messages over a big body",
     b"Content-Type: message/rfc822\r\n\r\n" * 99 + b"Subject: x\r\n\r\n" + b"y" * 5_000_000),
    ("many non-matching dash lines",
     b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\n" + b"--y\r\n" * 500_000 + b"--x--\r\n"),
    ("headers without blank lines",
     b"Content-Type: multipart/mixed; boundary=x\r\n\r\n" + b"--x\r\nX: y\r\n" * 5000 + b"X: z\r\n" * 200_000),
])
def test_crafted_input_does_not_blow_up(name, data):
    import time
    start = time.perf_counter()
    a = mime.analyze(data)
    elapsed = time.perf_counter() - start
    check_tree(a.parts, data)
    # generous bound (a shared machine): quadratic behaviour would take minutes
    assert elapsed < 5, (name, elapsed)
