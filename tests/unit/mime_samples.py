"""Real-world-shaped messages for the MIME walker tests (built here, not read from files).

Each sample is CRLF unless its name says otherwise.  ``SAMPLES`` maps names to bytes; the
Dovecot cross-check test feeds all of them to Dovecot's imap binary.
"""

import base64
import quopri


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def qp(text: str) -> str:
    return quopri.encodestring(text.encode("utf-8")).decode("ascii")


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii")


PDF = bytes(range(256)) * 8  # 2 KB of binary

PLAIN = crlf("""\
Return-Path: <bob@example.net>
Received: from mail.example.net (mail.example.net [192.0.2.1])
\tby mx.example.org with ESMTPS id 4FXYZ
\tfor <alice@example.org>; Mon, 3 Jun 2024 10:00:00 +0200
From: Bob Example <bob@example.net>
To: alice@example.org
Subject: lunch?
Date: Mon, 3 Jun 2024 10:00:00 +0200
Message-ID: <plain1@example.net>
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Shall we have lunch tomorrow at noon?
The usual place is fine with me.

-- 
Bob
""")

PLAIN_LF = PLAIN.replace(b"\r\n", b"\n")

ALTERNATIVE = crlf("""\
From: =?UTF-8?Q?Bob_B=C3=A4cker?= <bob@example.net>
To: Alice Example <alice@example.org>, "Carol, C." <carol@example.org>
Cc: team: dave@example.org, erin@example.org;
Subject: =?UTF-8?B?UXVhcnRlcmx5IHJlcG9ydCDigJQgUTI=?=
Date: Mon, 3 Jun 2024 10:00:00 +0200
Message-ID: <alt1@example.net>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="=_alt_1"

This is a multi-part message in MIME format.

--=_alt_1
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: quoted-printable

""" + qp("Grüße aus Köln — café, naïve.\nSecond line of the report.\n") + """
--=_alt_1
Content-Type: text/html; charset=UTF-8
Content-Transfer-Encoding: quoted-printable

""" + qp("<p>Grüße aus <b>Köln</b> — café</p>\n") + """
--=_alt_1--
""")

MIXED = crlf("""\
From: Bob <bob@example.net>
To: alice@example.org
Subject: the report
Date: Tue, 4 Jun 2024 09:30:00 +0000
Message-ID: <mixed1@example.net>
MIME-Version: 1.0
Content-Type: multipart/mixed;
 boundary="----=_Part_1_2345.6789"

------=_Part_1_2345.6789
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: 8bit

""").replace(b"8bit\r\n\r\n", b"8bit\r\n\r\n" + "Voilà le rapport.\r\n".encode("latin-1")) + crlf("""\

------=_Part_1_2345.6789
Content-Type: application/pdf; name="report.pdf"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="report.pdf"; size=2048

""" + b64(PDF) + """
------=_Part_1_2345.6789
Content-Type: image/png
Content-Transfer-Encoding: base64
Content-ID: <logo@example.net>
Content-Disposition: inline
Content-Description: Company logo

iVBORw0KGgo=
------=_Part_1_2345.6789--
""")

NESTED = crlf("""\
From: carol@example.org
To: alice@example.org
Subject: nested
Message-ID: <nested1@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=outer

preamble
--outer
Content-Type: multipart/alternative; boundary=alt

--alt
Content-Type: text/plain; charset=utf-8

plain body
--alt
Content-Type: multipart/related; boundary=rel; type="text/html"

--rel
Content-Type: text/html; charset=utf-8

<img src="cid:pic@x">
--rel
Content-Type: image/gif
Content-ID: <pic@x>
Content-Transfer-Encoding: base64

R0lGODlhAQABAAAAACw=
--rel--

--alt--

--outer
Content-Type: text/csv; name=data.csv
Content-Disposition: attachment; filename=data.csv
Content-Language: en, fr

a,b
1,2
--outer--
epilogue
""")

RFC822 = crlf("""\
From: dave@example.org
To: alice@example.org
Subject: Fwd: meeting
Message-ID: <fwd1@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=o

--o
Content-Type: text/plain

see attached
--o
Content-Type: message/rfc822
Content-Description: forwarded message

Subject: meeting
From: "Doe, J" <j@d.example>
To: team@example.org
Date: Mon, 1 Jan 2024 10:00:00 +0000
Message-ID: <inner1@d.example>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary=i

--i
Content-Type: text/plain; charset=us-ascii

in1
--i
Content-Type: text/html; charset=us-ascii

<b>in2</b>
--i--

--o--
""")

RFC822_SINGLE = crlf("""\
Subject: outer
Content-Type: multipart/mixed; boundary=o

--o
Content-Type: message/rfc822

Subject: inner
From: x@example.org

body of inner
--o--
""")

DIGEST = crlf("""\
From: list@example.org
Subject: digest
Content-Type: multipart/digest; boundary=d

--d

Subject: m1
From: a@example.org

body1
--d
Content-Type: text/plain

plain
--d
Content-Type: multipart/mixed; boundary=dd

--dd

default here is text/plain
--dd--
--d--
""")

RFC2231 = crlf("""\
Subject: parameters
Content-Type: multipart/mixed; boundary=p

--p
Content-Type: application/x-stuff;
 title*0*=us-ascii'en'This%20is%20even%20more%20;
 title*1*=%2A%2A%2Afun%2A%2A%2A%20;
 title*2="isn't it!"
Content-Disposition: attachment; filename*=utf-8''na%C3%AFve%20file.txt; size=3

abc
--p
Content-Type: message/external-body; access-type=URL;
 URL*0="ftp://";
 URL*1="cs.utk.edu/pub/moore/bulk-mailer/bulk-mailer.tar"

Content-Type: application/octet-stream

--p
Content-Type: Text/Plain; CHARSET="ISO-8859-1"; Format=Flowed (comment)
Content-Transfer-Encoding: Quoted-Printable

caf=E9
--p--
""")

ADDRESSES = crlf("""\
From: Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>
To:A Group(Some people)
     :Chris Jones <c@(Chris's host.)public.example>,
         joe@example.org,
  John <jdoe@one.test> (my dear friend); (the end of the group)
Cc:(Empty list)(start)Hidden recipients  :(nobody(that I know))  ;
Bcc: undisclosed-recipients:;
Reply-To: <@route.example,@r2.example:user@host.example>, "quoted"@x.example
Sender: john@x.example (John Doe)
Subject: =?iso-8859-1?q?caf=E9?= =?iso-8859-1?q?_au_lait?=
Date: Thu,
      13
        Feb
          1969
      23:32
               -0330 (Newfoundland Time)
In-Reply-To: <a@b.example>
Message-ID:              <testabcd.1234@silly.test>

Testing.
""")

EIGHT_BIT = crlf("""\
From: Jörg Müller <joerg@example.de>
To: "Zoë" <zoe@example.org>
Subject: Grüße "quoted" \\ back
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain; charset=utf-8

Grüße
--b
Content-Type: application/octet-stream; name="Übersicht.txt"

x
--b--
""")

NO_FINAL_NEWLINE = b"Subject: x\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n\r\nabc\r\n--z--"
HEADER_ONLY = b"Subject: only a header\r\nFrom: a@example.org"
EMPTY = b""
BODY_ONLY = b"\r\nno header at all\r\n"

UNTERMINATED = crlf("""\
Content-Type: multipart/mixed; boundary=o

--o
Content-Type: multipart/mixed; boundary=i

--i

A
--o

B
""")

NO_BOUNDARY = b"Content-Type: multipart/mixed\r\n\r\nhello\r\n"

PREFIX_BOUNDARIES = crlf("""\
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: multipart/alternative; boundary=bb

--bb

x
--bb

y
--bb--
--b  
Content-Type: text/plain

z
--b-- trailing junk
""")

MALFORMED_HEADERS = (
    b"this is not a header\r\n"
    b"Subject: still read\r\n"
    b" : no name\r\n"
    b"Content-Type: ; ;\r\n"
    b"Content-Transfer-Encoding: x-uuencode (comment)\r\n"
    b"From \r\n"
    b"\r\n"
    b"body\x00with NUL\r\n")

SAMPLES = {
    "plain": PLAIN, "plain_lf": PLAIN_LF, "alternative": ALTERNATIVE, "mixed": MIXED,
    "nested": NESTED, "rfc822": RFC822, "rfc822_single": RFC822_SINGLE, "digest": DIGEST,
    "rfc2231": RFC2231, "addresses": ADDRESSES, "eight_bit": EIGHT_BIT,
    "no_final_newline": NO_FINAL_NEWLINE, "header_only": HEADER_ONLY, "body_only": BODY_ONLY,
    "unterminated": UNTERMINATED, "no_boundary": NO_BOUNDARY, "prefix": PREFIX_BOUNDARIES,
    "malformed": MALFORMED_HEADERS,
}
