"""Timing report for the MIME walker (not a test; run it by hand):

    .venv/bin/python -m bench.mime

Times ``parse`` and ``analyze`` on a 20 KB multipart mail (multipart/mixed with a
multipart/alternative of quoted-printable text and HTML, and a base64 PDF) and on a 2 KB plain
mail, each in 500 variants with their own boundaries, names and ids (so nothing is reused from
a previous message), and on a few crafted inputs.  Reports CPU time per message.
"""

import base64
import quopri
import random
import statistics
import time

from mailserver.storage import mime


def big_mail(tag: str) -> bytes:
    rng = random.Random(tag)
    hdr = []
    for i in range(4):
        hdr.append(f"Received: from mail{i}.example.net (mail{i}.example.net [192.0.2.{i}])\r\n"
                   f"\tby mx.example.org (Postfix) with ESMTPS id 4F{i}{tag}\r\n"
                   f"\tfor <alice@example.org>; Mon, 3 Jun 2024 10:0{i}:00 +0200 (CEST)")
    sig = base64.b64encode(rng.randbytes(256)).decode()
    hdr.append("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.net; s=sel;\r\n"
               "\th=from:to:subject:date:message-id:mime-version:content-type;\r\n"
               "\tbh=" + base64.b64encode(rng.randbytes(32)).decode() + ";\r\n\tb="
               + "\r\n\t ".join(sig[i:i + 70] for i in range(0, len(sig), 70)))
    hdr += ["Authentication-Results: mx.example.org; dkim=pass header.d=example.net; spf=pass",
            "From: =?UTF-8?Q?Bob_B=C3=A4cker?= <bob@example.net>",
            'To: Alice Example <alice@example.org>, "Carol, C." <carol@example.org>',
            "Cc: team: dave@example.org, erin@example.org;",
            "Subject: =?UTF-8?B?" + base64.b64encode("Quarterly report — Q2".encode()).decode() + "?=",
            "Date: Mon, 3 Jun 2024 10:00:00 +0200", f"Message-ID: <{tag}@example.net>",
            "In-Reply-To: <prev@example.org>", "References: <a@example.org> <b@example.org>\r\n <prev@example.org>",
            "List-Id: Team list <team.example.org>", "X-Mailer: Example Mailer 1.0", "MIME-Version: 1.0",
            f'Content-Type: multipart/mixed; boundary="----=_Part_1_{tag}"']
    text = ("Hello Alice,\n\nHere are the numbers for this quarter — café, naïve.\n"
            + "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n" * 20)
    html = "<html><body><p>" + text.replace("\n", "<br>\n") + "</p></body></html>\n"
    qp = lambda s: quopri.encodestring(s.encode()).replace(b"\n", b"\r\n")
    att = base64.encodebytes(rng.randbytes(10200)).replace(b"\n", b"\r\n")
    b = f"----=_Part_1_{tag}".encode()
    a = f"----=_Part_2_{tag}".encode()
    body = (b"This is a multi-part message in MIME format.\r\n\r\n--" + b + b"\r\n"
            b"Content-Type: multipart/alternative; boundary=\"" + a + b"\"\r\n\r\n--" + a + b"\r\n"
            b"Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + qp(text) + b"\r\n--" + a + b"\r\n"
            b"Content-Type: text/html; charset=UTF-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + qp(html) + b"\r\n--" + a + b"--\r\n\r\n--" + b + b"\r\n"
            b"Content-Type: application/pdf; name=\"report-" + tag.encode() + b".pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"report-" + tag.encode() + b".pdf\"\r\n\r\n"
            + att + b"\r\n--" + b + b"--\r\n")
    return "\r\n".join(hdr).encode() + b"\r\n\r\n" + body


def small_mail(tag: str) -> bytes:
    return (b"Return-Path: <bob@example.net>\r\nReceived: from mail.example.net (mail.example.net [192.0.2.1])\r\n"
            b"\tby mx.example.org with ESMTPS id " + tag.encode() + b"\r\n\tfor <alice@example.org>; "
            b"Mon, 3 Jun 2024 10:00:00 +0200\r\nFrom: Bob <bob@example.net>\r\nTo: alice@example.org\r\n"
            b"Subject: lunch?\r\nDate: Mon, 3 Jun 2024 10:00:00 +0200\r\nMessage-ID: <" + tag.encode()
            + b"@example.net>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            + b"Shall we have lunch tomorrow at noon? The usual place is fine with me.\r\n" * 20)


def per_message(fn, messages, rounds=5):
    runs = []
    for _ in range(rounds):
        start = time.process_time()
        for m in messages:
            fn(m)
        runs.append((time.process_time() - start) / len(messages))
    return min(runs), statistics.median(runs)


def main():
    for name, make in (("multipart", big_mail), ("plain", small_mail)):
        messages = [make("%08x" % i) for i in range(500)]
        size = sum(map(len, messages)) // len(messages)
        for label, fn in (("parse", mime.parse), ("analyze", mime.analyze)):
            best, median = per_message(fn, messages)
            print(f"{name:9} {size:6} B  {label:8} best {best * 1e6:6.0f} us  median {median * 1e6:6.0f} us")
    crafted = {
        "99 nested unterminated multiparts + 5 MB": b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d=\r\n\r\n--b%d=\r\n" % (i, i) for i in range(99))
        + b"z" * 5_000_000,
        "99 nested multiparts + 100k '--' lines": b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d=\r\n\r\n--b%d=\r\n" % (i, i) for i in range(99))
        + b"--y\r\n" * 100_000,
        "20 MB plain text": b"Subject: x\r\n\r\n" + (b"z" * 70 + b"\r\n") * 290_000,
    }
    for name, data in crafted.items():
        best, _ = per_message(mime.analyze, [data], rounds=3)
        print(f"{name}: {best * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
