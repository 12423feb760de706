"""SEARCH evaluated column-wise (index columns, memoised header texts) answers exactly as the
message-by-message evaluation, on random programs over a varied mailbox."""

import datetime
import os
import random
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from mailserver.storage import api, search as S
from mailserver.storage.api import StoreMode
from tests.storage.test_rbox_storage import make_storage

SUBJECTS = [b"Budget review", b"=?utf-8?q?=C3=89t=C3=A9_budget?=", b"caf\xc3\xa9 meeting",
            b"Quarterly\r\n report budget", b"", b"=?iso-8859-1?q?Gr=FC=DFe?= aus Berlin", b"needle in subject"]


def message(n: int, rng: random.Random) -> bytes:
    lines = [b"From: Sender %d <s%d@example.org>" % (n % 5, n % 5)]
    if n % 4:
        lines.append(b"To: user%d@example.org" % (n % 3))
    if n % 6 != 5:
        lines.append(b"Subject: " + SUBJECTS[n % len(SUBJECTS)])
    if n % 9 == 0:
        lines.append(b"Subject: second subject field")
    if n % 3 == 0:
        lines.append(b"X-Custom: value %d" % (n % 4))
    lines.append(b"Date: Mon, %d Nov 2026 10:00:00 +0000" % (1 + n % 28))
    body = b"needle\r\n" if n % 5 == 0 else b"hay\r\n"
    return b"\r\n".join(lines) + b"\r\n\r\n" + body * rng.randint(1, 40)


WORDS = ["", "budget", "BUDGET", "été", "ÉTÉ", "café", "grüße", "report", "needle", "second", "value 1",
         "sender 3", "user2", "nothing", "quarterly report", "e"]
DAYS = [datetime.date(2026, 11, d) for d in (1, 2, 3, 10, 20)]


def program(rng: random.Random, uids: list, guids: list, depth: int = 0) -> S.Node:
    kind = rng.randrange(16 if depth < 3 else 12)
    if kind == 0:
        return S.Flag(rng.choice(["\\Seen", "\\Flagged", "\\Deleted", "$Work", "$Nope"]))
    if kind == 1:
        return S.Header(rng.choice(["Subject", "subject", "From", "To", "Cc", "X-Custom"]), rng.choice(WORDS))
    if kind == 2:
        a = rng.choice(uids)
        return S.UidIn(((a, a + rng.randint(0, 5)),) if rng.random() < 0.5 else
                       tuple((u, u) for u in sorted(rng.sample(uids, 12))))
    if kind == 3:
        return S.Size(rng.random() < 0.5, rng.randint(100, 600))
    if kind == 4:
        return S.Date(rng.choice(["internal", "save"]), rng.choice(["before", "on", "since"]), rng.choice(DAYS))
    if kind == 5:
        return S.Age(rng.random() < 0.5, rng.choice([3600, 86400 * 5, 86400 * 400]))
    if kind == 6:
        return S.ModSeq(rng.randint(1, 8))
    if kind == 7:
        return S.EmailId(rng.choice(guids + ["0" * 32]))
    if kind == 8:
        return S.Recent()
    if kind == 9:
        return S.All()
    if kind == 10:
        return S.Body(rng.choice(["needle", "hay", "zebra"]))
    if kind == 11:
        return S.Date("sent", rng.choice(["before", "on", "since"]), rng.choice(DAYS))
    if kind == 12:
        return S.Not(program(rng, uids, guids, depth + 1))
    if kind == 13:
        return S.Or(program(rng, uids, guids, depth + 1), program(rng, uids, guids, depth + 1))
    return S.And(tuple(program(rng, uids, guids, depth + 1) for _ in range(rng.randint(2, 3))))


@pytest.fixture
def mailbox(tmp_path):
    async def build():
        storage = make_storage(tmp_path)
        await storage.start()
        user = await storage.open_user("searcher")
        rng = random.Random(7)
        tx = user.begin_save("INBOX")
        base = int(datetime.datetime(2026, 11, 1).timestamp())
        for n in range(40):
            await tx.add(message(n, rng), internaldate=base + n * 43200 + rng.randint(-7200, 7200))
        await tx.commit()
        box = await user.open_mailbox("INBOX")
        await box.store(list(range(1, 41, 3)), StoreMode.ADD, ["\\Seen"])
        await box.store(list(range(2, 41, 5)), StoreMode.ADD, ["\\Flagged", "$Work"])
        await box.store([7, 8], StoreMode.REMOVE, ["\\Seen"])
        return box
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(build()))


@pytest_twisted.ensureDeferred
async def test_columnwise_search_equals_message_by_message(mailbox):
    box = mailbox
    uids = list(box.uids())
    guids = [box.info(u).guid for u in uids]
    rng = random.Random(2026)
    now = int(time.time())
    subsets = [uids, uids[5:30], sorted(rng.sample(uids, 10)), []]
    hits = 0
    for _ in range(400):
        prog = program(rng, uids, guids)
        targets = rng.choice(subsets)
        recent_from = rng.choice([1, 20, 41])
        got = await S.evaluate(box, prog, targets, recent_from, now)
        want = await S._evaluate_each(box, prog, targets, recent_from, now)
        assert got == want, prog
        hits += bool(got)
    assert hits > 100        # the programs are not all trivially empty


@pytest_twisted.ensureDeferred
async def test_header_texts_memoised_and_equal_to_the_generic_reading(mailbox, monkeypatch):
    box = mailbox
    uids = list(box.uids())
    for name in ("subject", "To", "x-custom", "bcc"):
        assert await box.search_header_texts(uids, name) == await api.Mailbox.search_header_texts(box, uids, name)
    texts = await box.search_header_texts([2, 99, 1, 6], "Subject")
    assert texts == [S.casemap("Été budget"), None, "BUDGET REVIEW\0SECOND SUBJECT FIELD", None]
    calls = []
    real = S.field_values
    monkeypatch.setattr(S, "field_values", lambda *a: calls.append(a) or real(*a))
    await box.search_header_texts(uids, "subject")
    await box.search(S.Header("Subject", "budget"))
    assert calls == []                          # every message's subject was decoded once before


def test_day_start_is_exact_where_midnight_is_skipped(monkeypatch):
    # Sao Paulo skipped 00:00-01:00 on 2018-11-04 (daylight saving time began at midnight).
    if not os.path.exists("/usr/share/zoneinfo/America/Sao_Paulo"):
        pytest.skip("no time zone database")
    monkeypatch.setenv("TZ", "America/Sao_Paulo")
    time.tzset()
    try:
        for day in (datetime.date(2018, 11, 3), datetime.date(2018, 11, 4), datetime.date(2018, 11, 5),
                    datetime.date(2019, 2, 17), datetime.date(2026, 6, 1)):
            t = S._day_start(day)
            assert S._day_of(t) == day and S._day_of(t - 1) < day
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_field_values_agree_with_the_header_walker():
    from mailserver.storage import mime
    rng = random.Random(3)
    for n in range(40):
        data = message(n, rng)
        header = data[:data.index(b"\r\n\r\n") + 4]
        for name in ("subject", "Subject", "to", "x-custom", "date", "from", "x-none"):
            assert S.field_values(header, name) == mime.decoded_headers(header, name), (n, name)
    folded = b"Subject: one\r\n two\r\nsubject : three\r\nX-Subject: no\r\n"
    assert S.field_values(folded, "SUBJECT") == ["one two", "three"]
