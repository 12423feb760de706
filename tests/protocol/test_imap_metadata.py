"""METADATA (RFC 5464) over real sockets with imaplib against the server process (``mail_server``:
the embedded default and rbox on Ceph), and a second server with small limits, private entries
disabled and a /shared/admin entry.  Values with literals go as LITERAL+ ``{n+}`` inside the
command imaplib sends."""

import imaplib
import pathlib
import re

import pytest
import pytest_twisted

from tests.harness import RunningServer

for _name in ("GETMETADATA", "SETMETADATA"):        # imaplib only sends commands it knows
    imaplib.Commands.setdefault(_name, ("AUTH", "SELECTED"))

_TOKEN = re.compile(rb'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|(~?)\{(\d+)\}\r\n|([^\s()]+))', re.S)


def login(server, account) -> imaplib.IMAP4:
    c = imaplib.IMAP4(server.host, server.imap_port, timeout=30)
    c.login(*account)
    return c


def run(c, name: str, *args):
    """Send a command with imaplib and return (status, [tagged text]) without raising on BAD.
    Untagged data left from earlier commands is dropped first (imaplib also files a tagged
    answer's ``[METADATA ...]`` code under "METADATA")."""
    c.untagged_responses.clear()
    tag = c._command(name, *args)
    return c._get_tagged_response(tag)


def _tokens(data: bytes):
    """Tokens of a response (quoted strings and literals as bytes, atoms as str, lists)."""
    stack, pos = [[]], 0
    while pos < len(data):
        m = _TOKEN.match(data, pos)
        assert m, data[pos:]
        pos = m.end()
        if m.group(1):
            stack.append([])
        elif m.group(2):
            done = stack.pop()
            stack[-1].append(done)
        elif m.group(3) is not None:
            stack[-1].append(re.sub(rb'\\(.)', rb"\1", m.group(3)))
        elif m.group(5):
            n = int(m.group(5))
            stack[-1].append(data[pos:pos + n])
            pos += n
        else:
            stack[-1].append(m.group(6).decode())
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
    return stack[0]


def _join(items) -> bytes:
    """imaplib's untagged data (lines, and (line, literal) pairs) back into one response."""
    out = b""
    for item in items:
        out += item[0] + b"\r\n" + item[1] if isinstance(item, tuple) else item
    return out


def get(c, mailbox: str, entries: str, options: str = ""):
    """GETMETADATA: (status, {mailbox: {entry: value}}, tagged text)."""
    args = ([options] if options else []) + [mailbox, entries]
    typ, text = run(c, "GETMETADATA", *args)
    typ2, data = c._untagged_response(typ, text, "METADATA")
    found: dict = {}
    data = [d for d in data if d is not None and not (isinstance(d, bytes) and d.startswith(b"LONGENTRIES "))]
    for response in _split(data):
        box, values = _tokens(response)
        box = box.decode() if isinstance(box, bytes) else box
        for entry, value in zip(values[::2], values[1::2]):
            found.setdefault(box, {})[entry.decode() if isinstance(entry, bytes) else entry] = value
    return typ, found, text[0]


def _split(data):
    """One bytes per METADATA response (a literal splits imaplib's data into several items)."""
    responses, current = [], []
    for item in data:
        current.append(item)
        if not isinstance(item, tuple):
            responses.append(_join(current))
            current = []
    if current:
        responses.append(_join(current))
    return responses


def set_(c, mailbox: str, pairs: str | bytes):
    """SETMETADATA mailbox (pairs): (status, tagged text)."""
    if isinstance(pairs, str):
        pairs = pairs.encode("utf-8")
    typ, text = run(c, "SETMETADATA", mailbox, b"(" + pairs + b")")
    return typ, text[0]


def lit(value: bytes, binary: bool = False) -> bytes:
    """A LITERAL+ value inside a command line."""
    return (b"~" if binary else b"") + b"{%d+}\r\n" % len(value) + value


def test_capability_after_login_only(mail_server, account):
    c = imaplib.IMAP4(mail_server.host, mail_server.imap_port, timeout=30)
    assert "METADATA" not in c.capabilities
    c.login(*account)
    typ, data = c.capability()
    assert b"METADATA" in data[0].split()
    c.logout()


def test_round_trip_server_and_mailbox_entries(mail_server, account):
    c = login(mail_server, account)
    assert set_(c, '""', '/private/comment "my server note" /shared/comment "shared server note"')[0] == "OK"
    assert set_(c, "INBOX", '/private/comment "inbox note" /shared/Vendor/Example/Color "red"')[0] == "OK"
    typ, found, _ = get(c, '""', "(/private/comment /shared/comment /private/missing)")
    assert typ == "OK" and found == {"": {"/private/comment": b"my server note",
                                          "/shared/comment": b"shared server note"}}
    typ, found, _ = get(c, "INBOX", "/private/comment")
    assert found == {"INBOX": {"/private/comment": b"inbox note"}}
    # names are case-insensitive; the answer spells the entry as asked
    typ, found, _ = get(c, "inbox", "/SHARED/vendor/example/COLOR")
    assert found == {"INBOX": {"/SHARED/vendor/example/COLOR": b"red"}}
    # nothing exists: no METADATA response, just OK
    typ, found, text = get(c, "Drafts", "/private/comment")
    assert typ == "OK" and found == {} and b"GETMETADATA completed" in text
    c.logout()


def test_depth(mail_server, account):
    c = login(mail_server, account)
    assert set_(c, "INBOX", '/private/a "1" /private/a/b "2" /private/a/b/c "3" /private/ab "4"')[0] == "OK"
    assert get(c, "INBOX", "/private/a", "(DEPTH 0)")[1]["INBOX"] == {"/private/a": b"1"}
    assert get(c, "INBOX", "/private/a", "(DEPTH 1)")[1]["INBOX"] == {"/private/a": b"1", "/private/a/b": b"2"}
    assert get(c, "INBOX", "/private/a", "(DEPTH infinity)")[1]["INBOX"] == {
        "/private/a": b"1", "/private/a/b": b"2", "/private/a/b/c": b"3"}
    assert get(c, "INBOX", "(/private /shared)", "(DEPTH 1)")[1]["INBOX"] == {"/private/a": b"1", "/private/ab": b"4"}
    assert get(c, "INBOX", "/private", "(DEPTH infinity)")[1]["INBOX"] == {
        "/private/a": b"1", "/private/a/b": b"2", "/private/a/b/c": b"3", "/private/ab": b"4"}
    typ, text = run(c, "GETMETADATA", "(DEPTH 2)", "INBOX", "/private/a")
    assert typ == "BAD", text
    c.logout()


def test_maxsize_longentries_and_literals(mail_server, account):
    c = login(mail_server, account)
    big = b"x" * 2000
    binary = b"\x00\x01\xff bin\r\nary"
    eight_bit = "Grüße, 日本".encode("utf-8")
    pairs = (b'/shared/small "s" /shared/big ' + lit(big) + b" /shared/bin " + lit(binary, True)
             + b" /shared/utf8 " + lit(eight_bit))
    assert set_(c, "INBOX", pairs)[0] == "OK"
    typ, found, text = get(c, "INBOX", "/shared", "(DEPTH 1)")
    assert found["INBOX"] == {"/shared/small": b"s", "/shared/big": big, "/shared/bin": binary,
                              "/shared/utf8": eight_bit}
    typ, found, text = get(c, "INBOX", "(/shared/small /shared/big /shared/bin)", "(MAXSIZE 100)")
    assert typ == "OK" and found["INBOX"] == {"/shared/small": b"s", "/shared/bin": binary}
    assert b"[METADATA LONGENTRIES 2000]" in text
    typ, found, text = get(c, "INBOX", "/shared/big", "(MAXSIZE 5 DEPTH 0)")
    assert found == {} and b"[METADATA LONGENTRIES 2000]" in text
    typ, found, text = get(c, "INBOX", "/shared/big", "(MAXSIZE 2000)")
    assert found["INBOX"] == {"/shared/big": big} and b"LONGENTRIES" not in text
    c.logout()


def test_binary_value_goes_out_as_literal8(mail_server, account):
    c = login(mail_server, account)
    assert set_(c, '""', b"/private/bin " + lit(b"a\0b", True))[0] == "OK"
    typ, text = run(c, "GETMETADATA", '""', "/private/bin")
    typ, data = c._untagged_response(typ, text, "METADATA")
    assert data[0] == (b'"" (/private/bin ~{3}', b"a\0b") and data[1] == b")", data
    c.logout()


def test_nil_removes(mail_server, account):
    c = login(mail_server, account)
    assert set_(c, "INBOX", '/private/x "1" /private/y "2"')[0] == "OK"
    assert set_(c, "INBOX", "/private/x NIL /private/never NIL")[0] == "OK"
    assert get(c, "INBOX", "(/private/x /private/y)")[1] == {"INBOX": {"/private/y": b"2"}}
    c.logout()


def test_limits_on_set(mail_server, account):
    c = login(mail_server, account)
    typ, text = set_(c, "INBOX", b"/private/big " + lit(b"v" * (64 * 1024 + 1)))
    assert typ == "NO" and b"[METADATA MAXSIZE 65536]" in text
    assert set_(c, "INBOX", b"/private/max " + lit(b"v" * (64 * 1024)))[0] == "OK"
    many = " ".join(f'/shared/n{i} "{i}"' for i in range(256))
    typ, text = set_(c, '""', many + ' /shared/one-more "x"')
    assert typ == "NO" and b"[METADATA TOOMANY]" in text, text
    assert get(c, '""', "/shared", "(DEPTH 1)")[1] == {}          # all or nothing
    assert set_(c, '""', many)[0] == "OK"
    typ, text = set_(c, '""', '/private/x "1"')
    assert typ == "NO" and b"[METADATA TOOMANY]" in text
    assert set_(c, '""', '/shared/n0 NIL /private/x "1"')[0] == "OK"      # one out, one in
    assert set_(c, '""', '/shared/n1 "changed"')[0] == "OK"               # replacing adds nothing
    # the server's limit is its own: a mailbox still takes entries
    assert set_(c, "INBOX", '/private/y "1"')[0] == "OK"
    c.logout()


@pytest.mark.parametrize("entry", [
    "/private/a//b", "/private/a/", "/private/*", "/shared/a%", "/other/x", "comment", "/private",
    '"/private/sp ace"', "/private/" + "x" * 300, '"/private/\xe9"',
])
def test_bad_entry_names(mail_server, account, entry):
    c = login(mail_server, account)
    raw = entry.encode("utf-8")
    typ, text = set_(c, "INBOX", raw + b' "v"')
    assert typ == "BAD", (entry, text)
    if entry != "/private":
        typ, text = run(c, "GETMETADATA", "INBOX", raw)
        assert typ == "BAD", (entry, text)
    c.logout()


def test_bad_syntax(mail_server, account):
    c = login(mail_server, account)
    for args in [("INBOX", '(/private/x)'), ("INBOX", "/private/x \"v\""), ("INBOX", "()"),
                 ("INBOX", '(/private/x "v" /private/y)'), ("INBOX", "(/private/x (a))")]:
        typ, text = run(c, "SETMETADATA", *args)
        assert typ == "BAD", (args, text)
    for args in [("(MAXSIZE x)", "INBOX", "/private/x"), ("(FOO 1)", "INBOX", "/private/x"),
                 ("(DEPTH 1 DEPTH 0)", "INBOX", "/private/x"), ("INBOX", "()"), ("INBOX",)]:
        typ, text = run(c, "GETMETADATA", *args)
        assert typ == "BAD", (args, text)
    c.logout()


def test_nonexistent_mailbox(mail_server, account):
    c = login(mail_server, account)
    typ, text = set_(c, "Nowhere", '/private/x "1"')
    assert typ == "NO" and b"[NONEXISTENT]" in text
    typ, text = run(c, "GETMETADATA", "Nowhere", "/private/x")
    assert typ == "NO" and b"[NONEXISTENT]" in text[0]
    c.logout()


def test_rename_keeps_delete_removes(mail_server, account):
    c = login(mail_server, account)
    assert c.create("Projects")[0] == "OK"
    assert set_(c, "Projects", '/private/comment "p" /shared/color "blue"')[0] == "OK"
    assert c.rename("Projects", "Old/Projects")[0] == "OK"
    assert get(c, "Old/Projects", "(/private/comment /shared/color)")[1] == {
        "Old/Projects": {"/private/comment": b"p", "/shared/color": b"blue"}}
    assert c.create("Projects")[0] == "OK"
    assert get(c, "Projects", "(/private /shared)", "(DEPTH infinity)")[1] == {}
    typ, data = c.status("Old/Projects", "(MAILBOXID)")
    guid = re.search(rb"MAILBOXID \(([^)]+)\)", data[0]).group(1).decode()
    assert c.delete("Old/Projects")[0] == "OK"
    if mail_server.backend == "local":       # the local dictionary's files: the entries are gone
        texts = [p.read_text() for p in pathlib.Path(mail_server.state_dir, "dict").glob("user-*.json")]
        assert texts and not any(guid in text for text in texts)
    assert c.create("Old/Projects")[0] == "OK"
    assert get(c, "Old/Projects", "(/private /shared)", "(DEPTH infinity)")[1] == {}
    c.logout()


def test_users_are_isolated(mail_server, account):
    c = login(mail_server, account)
    assert set_(c, '""', '/shared/comment "mine"')[0] == "OK"
    assert set_(c, "INBOX", '/shared/comment "my inbox"')[0] == "OK"
    other = login(mail_server, mail_server.new_user())
    assert get(other, '""', "(/private /shared)", "(DEPTH infinity)")[1] == {}
    assert get(other, "INBOX", "(/private /shared)", "(DEPTH infinity)")[1] == {}
    assert set_(other, "INBOX", '/shared/comment "theirs"')[0] == "OK"
    assert get(c, "INBOX", "/shared/comment")[1] == {"INBOX": {"/shared/comment": b"my inbox"}}
    other.logout()
    c.logout()


def test_specialuse_entry(mail_server, account):
    c = login(mail_server, account)
    assert get(c, "Sent", "/private/specialuse")[1] == {"Sent": {"/private/specialuse": b"\\Sent"}}
    assert get(c, "INBOX", "/private/specialuse")[1] == {}
    typ, text = set_(c, "Sent", '/private/specialuse "\\\\Junk"')
    assert typ == "NO" and b"[CANNOT]" in text
    c.logout()


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    server = RunningServer(str(tmp_path_factory.mktemp("metadata-strict")), users=5, options={"imap": {
        "metadata_private": False, "metadata_max_entries": 3, "metadata_max_value_size": 100,
        "metadata_admin": "mailto:postmaster@example.org"}})
    server.start()
    yield server
    server.stop()


def test_configured_limits_noprivate_and_admin(strict_server):
    c = login(strict_server, strict_server.new_user())
    typ, text = set_(c, "INBOX", '/private/comment "x"')
    assert typ == "NO" and b"[METADATA NOPRIVATE]" in text
    typ, text = set_(c, "INBOX", b"/shared/comment " + lit(b"y" * 101))
    assert typ == "NO" and b"[METADATA MAXSIZE 100]" in text
    assert set_(c, "INBOX", '/shared/a "1" /shared/b "2" /shared/c "3"')[0] == "OK"
    typ, text = set_(c, "INBOX", '/shared/d "4"')
    assert typ == "NO" and b"[METADATA TOOMANY]" in text
    assert get(c, '""', "/shared/admin")[1] == {"": {"/shared/admin": b"mailto:postmaster@example.org"}}
    typ, text = set_(c, '""', '/shared/admin "mailto:me@example.org"')
    assert typ == "NO" and b"[CANNOT]" in text
    # private entries are hidden, the computed /private/specialuse too
    assert get(c, "Sent", "/private", "(DEPTH infinity)")[1] == {}
    c.logout()


@pytest_twisted.ensureDeferred
async def test_no_dictionary_no_metadata(tmp_path):
    """Without a dictionary: no METADATA capability, and the commands answer NO [UNAVAILABLE]
    (a transcript: every server started from a configuration has a dictionary)."""
    from tests.protocol.imap_session import Wire, make_context
    ctx = await make_context(tmp_path, users={"alice": "secret"})
    ctx.dict = None
    w = Wire(ctx)
    w.take()
    await w.login("alice", "secret")
    lines = await w.cmd("CAPABILITY")
    assert b"UNAUTHENTICATE" in lines[0] and b"METADATA" not in lines[0]
    assert (await w.cmd('GETMETADATA "" /private/x'))[-1].endswith(b"NO [UNAVAILABLE] METADATA is not available "
                                                                   b"(no dictionary configured)")
    assert b"NO [UNAVAILABLE]" in (await w.cmd('SETMETADATA "" (/private/x "1")'))[-1]
    await ctx.storage.stop()
