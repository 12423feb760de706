"""Cross-check against Dovecot: the same messages, Dovecot's imap binary run once on a pipe
(pre-authenticated, Maildir in a temporary directory, nothing left running).

Compares ENVELOPE, BODY, BODYSTRUCTURE (as parsed IMAP values, so quoted-vs-literal choices do
not matter), BODY[section] for every part and section form, and BINARY[part].  The known,
deliberate differences are listed in KNOWN_DIFFERENCES with the reason.
Skipped when Debian's dovecot-imapd is not installed.
"""

import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import pytest

from mailserver.storage import mime

from . import mime_samples as S

IMAP_BIN = "/usr/lib/dovecot/imap"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.exists(IMAP_BIN), reason="dovecot-imapd is not installed"),
]

EXTRA = {
    "top_rfc822": (b"Content-Type: message/rfc822\r\n\r\nSubject: inside\r\n"
                   b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n\r\na\r\n--z--\r\n"),
    "close_then_outer": (b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n"
                         b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n"
                         b"Content-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\n\r\nx\r\n--i--\r\n"
                         b"--o\r\nContent-Type: text/plain\r\n--o--\r\n"),
    "empty_parts": (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b\r\n\r\n--b\r\n"
                    b"Content-Type: text/plain\r\n\r\n--b\r\nContent-Type: text/plain\r\n--b--\r\n"),
    "lf_nested": S.RFC822.replace(b"\r\n", b"\n"),
    "qp_soft_breaks": (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
                       b"\r\n\r\nsoft=\r\nbreak =C3=A9 and trailing  \r\nlast=\nline\r\n"),
}

# (sample, item) -> why we differ on purpose
KNOWN_DIFFERENCES = {
    ("malformed", "BODY"): "invalid Content-Type: RFC 2045 default text/plain (Dovecot: \"\" \"\")",
    ("malformed", "BODYSTRUCTURE"): "same",
    ("header_only", "BODY[HEADER.FIELDS.NOT (SUBJECT)]"): "we always end with the blank line",
}


# --- a small reader for IMAP responses ---------------------------------------------------------

_ATOM = re.compile(rb"[^ ()\[\]{\"\r\n]+")


def read_value(buf: bytes, i: int):
    """One IMAP value at ``buf[i]`` -> (python value, next index).  Strings and literals become
    bytes, NIL None, numbers int, lists lists."""
    c = buf[i:i + 1]
    if c == b"(":
        out = []
        i += 1
        while buf[i:i + 1] != b")":
            if buf[i:i + 1] == b" ":
                i += 1
                continue
            v, i = read_value(buf, i)
            out.append(v)
        return out, i + 1
    if c == b'"':
        j = i + 1
        out = bytearray()
        while buf[j:j + 1] != b'"':
            if buf[j:j + 1] == b"\\":
                j += 1
            out += buf[j:j + 1]
            j += 1
        return bytes(out), j + 1
    if c == b"~" or c == b"{":
        if c == b"~":
            i += 1
        j = buf.index(b"}", i)
        n = int(buf[i + 1:j])
        return buf[j + 3:j + 3 + n], j + 3 + n
    m = _ATOM.match(buf, i)
    word = m.group()
    if word == b"NIL":
        return None, m.end()
    if word.isdigit():
        return int(word), m.end()
    return word, m.end()


def fetch_items(response: bytes, seq: int) -> dict:
    """The items of ``* seq FETCH (...)`` as {name: value}."""
    start = response.index(b"* %d FETCH (" % seq) + len(b"* %d FETCH (" % seq)
    items = {}
    i = start
    while response[i:i + 1] != b")":
        if response[i:i + 1] == b" ":
            i += 1
            continue
        j = i
        depth = 0
        while True:  # item name, with [section] possibly containing spaces
            ch = response[j:j + 1]
            if ch == b"[":
                depth += 1
            elif ch == b"]":
                depth -= 1
            elif ch == b" " and depth == 0:
                break
            j += 1
        name = response[i:j].decode()
        value, i = read_value(response, j + 1)
        items[name] = value
    return items


def parse_ours(text: str):
    data = text.encode("utf-8")
    value, end = read_value(data, 0)
    assert end == len(data)
    return value


# --- running Dovecot -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dovecot():
    # not pytest's tmp_path: Dovecot drops to "nobody" when run as root, and pytest's
    # per-user directory is private to root
    base = pathlib.Path(tempfile.mkdtemp(prefix="mime-dovecot-"))
    uid, gid = (65534, 65534) if os.getuid() == 0 else (os.getuid(), os.getgid())
    (base / "run").mkdir()
    (base / "Maildir").mkdir()
    conf = base / "dovecot.conf"
    conf.write_text(f"""base_dir = {base}/run
log_path = {base}/log
mail_location = maildir:{base}/Maildir
ssl = no
protocols = imap
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = 0
first_valid_gid = 0
""")
    if os.getuid() == 0:
        for p in [base, *base.rglob("*")]:
            os.chown(p, uid, gid)

    def run(messages, commands):
        maildir = base / "Maildir"
        shutil.rmtree(maildir)
        maildir.mkdir()
        if os.getuid() == 0:
            os.chown(maildir, uid, gid)
        script = b"".join(b"a%d APPEND INBOX {%d+}\r\n%s\r\n" % (i, len(m), m) for i, m in enumerate(messages))
        script += b"s SELECT INBOX\r\n" + b"".join(b"f%d %s\r\n" % (i, c) for i, c in enumerate(commands))
        script += b"z LOGOUT\r\n"
        # Dovecot wants a pipe (not a regular file) on stdin
        proc = subprocess.run(["sh", "-c", "cat | " + IMAP_BIN + " -c " + str(conf)], input=script,
                              capture_output=True, timeout=60,
                              env={"USER": "nobody" if uid == 65534 else os.environ.get("USER", "user"),
                                   "HOME": str(base), "PATH": "/usr/bin:/bin"})
        out = proc.stdout
        assert b"z OK" in out, (out[-2000:], proc.stderr, (base / "log").read_text()
                                if (base / "log").exists() else "")
        return out

    yield run
    shutil.rmtree(base, ignore_errors=True)


ALL = dict(S.SAMPLES, **EXTRA)
ALL.pop("empty", None)
NAMES = sorted(k for k, v in ALL.items() if v)


def test_structures_match_dovecot(dovecot):
    messages = [ALL[n] for n in NAMES]
    out = dovecot(messages, [b"FETCH 1:* (ENVELOPE BODY BODYSTRUCTURE)"])
    problems = []
    for seq, name in enumerate(NAMES, 1):
        items = fetch_items(out, seq)
        a = mime.analyze(ALL[name])
        for key, ours in (("ENVELOPE", a.envelope), ("BODY", a.body), ("BODYSTRUCTURE", a.bodystructure)):
            if (name, key) in KNOWN_DIFFERENCES:
                continue
            if parse_ours(ours) != items[key]:
                problems.append(f"{name} {key}:\n  dovecot {items[key]}\n  ours    {parse_ours(ours)}")
    assert not problems, "\n".join(problems)


def section_specs(root):
    specs = ["", "HEADER", "TEXT", "HEADER.FIELDS (SUBJECT FROM)", "HEADER.FIELDS.NOT (SUBJECT)"]
    for part in root.walk():
        if not part.number or part is not mime.find_part(root, tuple(map(int, part.number.split(".")))):
            continue
        n = part.number
        specs += [n, n + ".MIME"]
        if part.message is not None and part.subtype == "rfc822":
            specs += [n + ".HEADER", n + ".TEXT", n + ".HEADER.FIELDS (SUBJECT)",
                      n + ".HEADER.FIELDS.NOT (SUBJECT)"]
    return specs


def to_section(spec):
    m = re.match(r"^((?:\d+\.)*\d+)?\.?([A-Z.]*)(?: \((.*)\))?$", spec)
    part = tuple(int(x) for x in m.group(1).split(".")) if m.group(1) else ()
    return mime.Section(part, m.group(2), tuple(m.group(3).split()) if m.group(3) else ())


def test_sections_match_dovecot(dovecot):
    problems = []
    checked = 0
    for name in NAMES:
        data = ALL[name]
        root = mime.parse(data)
        specs = section_specs(root)
        leaves = [p.number for p in root.walk()
                  if p.number and not p.children and p.message is None
                  and p.encoding in ("7bit", "8bit", "binary", "base64", "quoted-printable")
                  and mime.find_part(root, tuple(map(int, p.number.split(".")))) is p]
        if root.ctype != "multipart" and root.encoding in ("7bit", "8bit", "base64", "quoted-printable"):
            leaves.append("1")
        command = ("FETCH 1 (" + " ".join("BODY.PEEK[%s]" % s for s in specs)
                   + "".join(" BINARY.PEEK[%s]" % n for n in leaves) + ")").encode()
        items = fetch_items(dovecot([data], [command]), 1)
        for spec in specs:
            key = "BODY[%s]" % spec
            if (name, key) in KNOWN_DIFFERENCES:
                continue
            ours = mime.get_section(data, root, to_section(spec))
            theirs = items[key.replace(spec, spec.upper())] if key not in items else items[key]
            checked += 1
            if (ours or b"") != (theirs or b""):
                problems.append(f"{name} {key}:\n  dovecot {theirs!r}\n  ours    {ours!r}")
        for n in leaves:
            part = mime.find_part(root, tuple(map(int, n.split("."))))
            ours = mime.decode_body(data, part)
            checked += 1
            if ours != items["BINARY[%s]" % n]:
                problems.append(f"{name} BINARY[{n}]:\n  dovecot {items['BINARY[%s]' % n]!r}\n  ours    {ours!r}")
    assert not problems, "\n".join(problems)
    assert checked > 200
