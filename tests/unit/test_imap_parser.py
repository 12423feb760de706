"""The IMAP command parser: every token form, literals across chunks, LITERAL+, limits, garbage."""

import pytest

from mailserver.protocols.imap.parser import (
    CONTINUE, Args, Atom, BadSyntax, Command, CommandParser, LineTooLong, Literal, Literal8, ParseError,
    String, parse_tokens,
)


def events(parser, data=b""):
    if data:
        parser.feed(data)
    out = []
    while True:
        ev = parser.next()
        if ev is None:
            return out
        out.append(ev)


def one(data, **kw):
    evs = events(CommandParser(**kw), data)
    assert len(evs) == 1, evs
    return evs[0]


def test_simple_command():
    cmd = one(b"a1 noop\r\n")
    assert isinstance(cmd, Command)
    assert (cmd.tag, cmd.name, cmd.args, cmd.size) == ("a1", "NOOP", [], 9)


def test_bare_lf_line_end_is_accepted():
    cmd = one(b"a1 CAPABILITY\n")
    assert (cmd.tag, cmd.name) == ("a1", "CAPABILITY")


def test_token_forms():
    cmd = one(b'x LOGIN alice "p\\"w \\\\d" NIL (a (b "c") ()) \\Seen 1:5,7,10:* ]x\r\n')
    assert cmd.args == [Atom("alice"), String(b'p"w \\d'), Atom("NIL"),
                        [Atom("a"), [Atom("b"), String(b"c")], []], Atom("\\Seen"), Atom("1:5,7,10:*"),
                        Atom("]x")]
    assert type(cmd.args[0]) is Atom and type(cmd.args[1]) is String


def test_empty_quoted_string_and_8bit_quoted():
    cmd = one('t LOGIN "" "pässword"\r\n'.encode("utf-8"))
    assert cmd.args == [String(b""), String("pässword".encode("utf-8"))]


def test_fetch_section_is_one_atom():
    cmd = one(b"f FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (DATE \"X-A]\" FROM)]<0.100> BODY[]<5> "
              b"BINARY[1.2] RFC822.SIZE)\r\n")
    assert cmd.args == [Atom("1:*"), [Atom("FLAGS"), Atom('BODY.PEEK[HEADER.FIELDS (DATE "X-A]" FROM)]<0.100>'),
                                      Atom("BODY[]<5>"), Atom("BINARY[1.2]"), Atom("RFC822.SIZE")]]


def test_bracket_in_mailbox_atom_is_plain():
    cmd = one(b"s SELECT [Gmail]/Sent\r\n")
    assert cmd.args == [Atom("[Gmail]/Sent")]
    cmd = one(b"r RENAME a[b c]d\r\n")
    assert cmd.args == [Atom("a[b"), Atom("c]d")]


def test_synchronising_literal_needs_continuation_and_can_split_anywhere():
    data = b"a APPEND INBOX (\\Seen) {11}\r\nhello world\r\n"
    for split in range(1, len(data)):
        p = CommandParser()
        evs = events(p, data[:split]) + events(p, data[split:])
        assert evs[0] is CONTINUE
        assert isinstance(evs[1], Command) and len(evs) == 2
        assert evs[1].args == [Atom("INBOX"), [Atom("\\Seen")], String(b"hello world")]
        assert type(evs[1].args[2]) is Literal


def test_literal_byte_by_byte():
    p = CommandParser()
    out = []
    for b in b"a LOGIN {5}\r\nalice {3+}\r\npw!\r\nb NOOP\r\n":
        out += events(p, bytes([b]))
    assert out[0] is CONTINUE
    assert out[1].args == [String(b"alice"), String(b"pw!")]
    assert out[2].name == "NOOP" and len(out) == 3


def test_literal_plus_sends_no_continuation():
    evs = events(CommandParser(), b"a LOGIN {5+}\r\nalice {3+}\r\np\r\n\r\n")
    assert len(evs) == 1 and evs[0].args == [String(b"alice"), String(b"p\r\n")]


def test_literal_inside_list_and_binary_literal8():
    evs = events(CommandParser(), b"a X (a {2+}\r\n()) ~{3+}\r\n\x00\xff\n\r\n")
    assert evs[0].args == [[Atom("a"), String(b"()")], Literal8(b"\x00\xff\n")]
    assert type(evs[0].args[1]) is Literal8


def test_empty_literal():
    evs = events(CommandParser(), b"a LOGIN {0}\r\n {0+}\r\n\r\n")
    assert evs[0] is CONTINUE and evs[1].args == [String(b""), String(b"")]


def test_pipelined_commands_in_one_segment():
    evs = events(CommandParser(), b"1 NOOP\r\n2 LOGIN a b\r\n3 SELECT INBOX\r\n4 LOG")
    assert [e.tag for e in evs] == ["1", "2", "3"]


def test_empty_lines_between_commands_are_ignored():
    evs = events(CommandParser(), b"\r\n  \r\n1 NOOP\r\n")
    assert [e.tag for e in evs] == ["1"]


@pytest.mark.parametrize("line, tag, text", [
    (b"* NOOP", None, "Invalid tag"),
    (b"a+b NOOP", None, "Invalid tag"),
    (b"abc", None, "Missing command"),
    (b"abc ", "abc", "Missing command"),
    (b"abc 9X", "abc", "Invalid command name"),
    (b'a LOGIN "unterminated', "a", "Invalid quoted string"),
    (b'a LOGIN "bad \\q escape"', "a", "Invalid quoted string"),
    (b"a LOGIN (x", "a", "Unclosed parenthesis"),
    (b"a LOGIN x)", "a", "Unexpected )"),
    (b"a LOGIN {5} x", "a", "Unexpected {"),
    (b"a LOGIN {x}", "a", "Invalid literal"),
    (b'a LOGIN "a"b', "a", "Missing space between arguments"),
    (b"a LOGIN \x01", "a", "Invalid characters in command"),
    (b"a LOGIN caf\xc3\xa9", "a", "Invalid characters in command"),
    (b"a FETCH 1 BODY[HEADER.FIELDS (A", "a", "Missing ] in section"),
])
def test_garbage_is_refused_and_parser_resyncs(line, tag, text):
    evs = events(CommandParser(), line + b"\r\nb NOOP\r\n")
    assert isinstance(evs[0], ParseError), evs
    assert (evs[0].tag, evs[0].text, evs[0].fatal) == (tag, text, False)
    assert isinstance(evs[1], Command) and evs[1].tag == "b"


def test_error_before_non_sync_literal_skips_the_literal():
    evs = events(CommandParser(), b'a LOGIN "x\\q" {9+}\r\nb NOOP\r\n\r\nc NOOP\r\n')
    assert isinstance(evs[0], ParseError)
    assert [e.tag for e in evs[1:]] == ["c"]


def test_nesting_limit():
    evs = events(CommandParser(), b"a X " + b"(" * 100 + b")" * 100 + b"\r\nb NOOP\r\n")
    assert evs[0].text == "Too deeply nested" and evs[1].tag == "b"


def test_line_too_long_with_tag_then_resync():
    p = CommandParser(max_line_length=100)
    evs = events(p, b"a1 LOGIN " + b"x" * 200)
    assert len(evs) == 1 and isinstance(evs[0], ParseError)
    assert (evs[0].tag, evs[0].code, evs[0].fatal) == ("a1", "TOOBIG", False)
    assert events(p, b"y" * 5000) == []          # still skipping, bounded memory
    assert p.buffered == 0
    evs = events(p, b"zz\r\nb NOOP\r\n")
    assert [e.tag for e in evs] == ["b"]


def test_line_too_long_counts_segments_between_literals():
    p = CommandParser(max_line_length=50)
    evs = events(p, b"a X " + b"y" * 30 + b" {1+}\r\nz " + b"w" * 30 + b"\r\nb NOOP\r\n")
    assert isinstance(evs[0], ParseError) and evs[0].code == "TOOBIG"
    assert evs[1].tag == "b"


def test_line_too_long_arriving_whole():
    evs = events(CommandParser(max_line_length=20), b"a NOOP " + b"x" * 50 + b"\r\nb NOOP\r\n")
    assert evs[0].tag == "a" and evs[0].code == "TOOBIG" and evs[1].tag == "b"


def test_overlong_line_ending_in_non_sync_literal_skips_it():
    p = CommandParser(max_line_length=20)
    evs = events(p, b"a APPEND " + b"x" * 40 + b" {6+}\r\nb NOOP\r\nc NOOP\r\n")
    assert evs[0].code == "TOOBIG"
    assert [e.tag for e in evs[1:]] == ["c"]


def test_sync_literal_too_big_is_refused_before_data():
    p = CommandParser(max_literal_size=10)
    evs = events(p, b"a APPEND INBOX {11}\r\n")
    assert len(evs) == 1
    err = evs[0]
    assert (err.tag, err.code, err.status, err.fatal) == ("a", "TOOBIG", "NO", False)
    # The client does not send the literal; the next command parses normally.
    assert events(p, b"b NOOP\r\n")[0].tag == "b"


def test_non_sync_literal_too_big_is_fatal():
    evs = events(CommandParser(max_literal_size=10), b"a APPEND INBOX {11+}\r\n")
    assert evs[0].fatal and evs[0].code == "TOOBIG" and evs[0].tag == "a"


def test_command_size_bound_over_several_literals():
    p = CommandParser(max_line_length=100, max_literal_size=10, max_command_size=25)
    evs = events(p, b"a X {10}\r\n0123456789 {10}\r\n")
    assert evs[0] is CONTINUE
    assert evs[1].code == "TOOBIG" and evs[1].status == "NO"


def test_huge_literal_digits_refused():
    evs = events(CommandParser(), b"a X {99999999999999999999}\r\nb NOOP\r\n")
    assert evs[0].text == "Invalid literal" and evs[1].tag == "b"


def test_read_line_for_authenticate_and_idle():
    p = CommandParser(max_line_length=30)
    p.feed(b"a AUTHENTICATE PLAIN\r\nAGFA\r\nDONE\nb")
    assert p.next().name == "AUTHENTICATE"
    assert p.read_line() == b"AGFA"
    assert p.read_line() == b"DONE"
    assert p.read_line() is None
    p.feed(b"x" * 40)
    with pytest.raises(LineTooLong):
        p.read_line()


def test_discard_buffer():
    p = CommandParser()
    p.feed(b"a STARTTLS\r\nb NOOP\r\n")
    assert p.next().name == "STARTTLS"
    assert p.discard_buffer() == 8
    assert p.next() is None


def test_parse_tokens():
    assert parse_tokens(b'HEADER.FIELDS (A "B c")') == [Atom("HEADER.FIELDS"), [Atom("A"), String(b"B c")]]
    with pytest.raises(ValueError):
        parse_tokens(b"(A")
    with pytest.raises(ValueError):
        parse_tokens(b"{3}")


def test_args_accessors():
    a = Args(parse_tokens(b'abc "q" NIL 42 (x y) 0'))
    assert a.astring("name") == b"abc"
    assert a.astring("password") == b"q"
    assert a.nstring("n") is None
    assert a.number("n") == 42
    inner = a.list("l")
    assert inner.atom("x") == "x" and inner.keyword("y") == "Y"
    inner.end()
    with pytest.raises(BadSyntax, match="out of range"):
        a.number("uid", nonzero=True)
    with pytest.raises(BadSyntax, match="Missing mailbox"):
        a.astring("mailbox")
    b = Args(parse_tokens(b"(x) extra"))
    with pytest.raises(BadSyntax):
        b.astring("s")
    b.pos = 1
    with pytest.raises(BadSyntax, match="extra"):
        Args(b.items).end()


def test_random_garbage_never_raises():
    import random
    rng = random.Random(1234)
    alphabet = b'a1 ()"\\{}+~[]<>.*%\r\n\x00\xff' + b"NOOP LOGIN FETCH BODY[ {3} {2+}\r\n"
    for _ in range(300):
        p = CommandParser(max_line_length=200, max_literal_size=50)
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 600)))
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 40)
            p.feed(data[pos:pos + step])
            pos += step
            while True:
                ev = p.next()
                if ev is None:
                    break
                assert ev is CONTINUE or isinstance(ev, (Command, ParseError))
                if isinstance(ev, ParseError) and ev.fatal:
                    break
        assert p.buffered <= 600
