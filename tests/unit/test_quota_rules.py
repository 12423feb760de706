"""Quota rules in Dovecot's syntax: parsing, slots from configuration and userdb fields, and the
limits each mailbox gets; the ``[quota]`` configuration section's checks."""

import pytest

from mailserver import config
from mailserver.storage.quota_rules import (Limit, Limits, QuotaRules, RuleError, parse_rule, slots_from_config,
                                            slots_from_fields)

K, M, G = 1024, 1024 ** 2, 1024 ** 3


@pytest.mark.parametrize("text, storage, messages", [
    ("*:storage=200K", 200 * K, None),
    ("*:storage=1G", G, None),
    ("*:storage=10m", 10 * M, None),
    ("*:storage=2T", 2 * 1024 ** 4, None),
    ("*:storage=512B", 512, None),
    ("*:storage=4096", 4096 * K, None),        # storage= counts KiB without a unit (Dovecot)
    ("*:bytes=4096", 4096, None),               # bytes= counts bytes
    ("*:bytes=1M", M, None),
    ("*:messages=1k", None, 1024),
    ("*:messages=1000", None, 1000),
    ("*:storage=1G:messages=100", G, 100),
    ("*:storage=0", None, None),
    ("*:storage=none", None, None),
])
def test_default_rule(text, storage, messages):
    rules = QuotaRules([parse_rule(text)])
    assert rules.limits() == Limits(storage, messages)
    assert rules.limits("INBOX") == Limits(storage, messages)


@pytest.mark.parametrize("text", [
    "storage=1G",               # no mailbox part
    ":storage=1G",
    "*:storage=1X",
    "*:storage=-1G",            # relative in the default rule
    "*:storage=110%",
    "Trash:storage=-100%",
    "Trash:storage=none",
    "*:size=10",
    "*:",
    "*:ignore",
    "Trash:ignore:storage=1M",
    "Trash:storage=+10%M",
])
def test_bad_rules(text):
    with pytest.raises(RuleError):
        parse_rule(text)


def test_mailbox_rules_relative_to_default():
    rules = QuotaRules.from_slots({1: "*:storage=1G:messages=100", 2: "Trash:storage=+100M",
                                   3: "Archive:storage=10%", 4: "Spam:ignore", 5: "Small:messages=-90",
                                   6: "Plain:storage=100M", 7: "Less:storage=-10%", 8: "None:storage=-2G"})
    assert rules.limits("INBOX") == Limits(G, 100)
    assert rules.limits("Trash") == Limits(G + 100 * M, 100)
    assert rules.limits("Archive") == Limits(G + G // 10, 100)     # 10% more, as Dovecot
    assert rules.limits("Plain") == Limits(G + 100 * M, 100)       # a plain value adds too
    assert rules.limits("Less") == Limits(G - G // 10, 100)
    assert rules.limits("Small") == Limits(G, 10)
    assert rules.limits("None") == Limits(1, 100)                  # no room, not unlimited
    assert rules.limits("Spam") == Limits(None, None, ignored=True)
    assert rules.counted("Trash") and not rules.counted("Spam")
    assert not rules.unlimited


def test_relative_to_unlimited_stays_unlimited():
    rules = QuotaRules.from_slots({1: "Trash:storage=+100M"})
    assert rules.limits("Trash") == Limits(None, None)
    assert rules.unlimited


def test_wildcards_and_inbox_case():
    rules = QuotaRules.from_slots({1: "*:storage=1M:messages=10", 2: "Lists/*:ignore", 3: "inbox:messages=-5"})
    assert not rules.counted("Lists/python")
    assert rules.counted("Lists")
    assert rules.limits("INBOX") == Limits(M, 5)


def test_later_rule_for_same_mailbox_merges():
    rules = QuotaRules.from_slots({1: "*:storage=1M", 2: "*:messages=3"})
    assert rules.limits() == Limits(M, 3)
    rules = QuotaRules.from_slots({1: "*:storage=1M", 2: "*:storage=2M"})
    assert rules.limits() == Limits(2 * M, None)


def test_slots_from_userdb_fields_override_config():
    slots = slots_from_config("", ["*:storage=1G", "Trash:storage=+100M"])
    assert slots == {1: "*:storage=1G", 2: "Trash:storage=+100M"}
    assert slots_from_config("*:storage=1M", []) == {1: "*:storage=1M"}
    fields = {"userdb_quota_rule": "*:storage=200K", "quota_rule3": "Spam:ignore", "home": "/x",
              "quota_rule1": "ignored: not a Dovecot name"}
    assert slots_from_fields(fields) == {1: "*:storage=200K", 3: "Spam:ignore"}
    slots.update(slots_from_fields(fields))
    rules = QuotaRules.from_slots(slots)
    assert rules.limits("Trash") == Limits(200 * K + 100 * M, None)
    assert not rules.counted("Spam")


def test_limit_forms():
    assert parse_rule("Trash:storage=+100M").storage == Limit("add", 100 * M)
    assert parse_rule("Trash:storage=-1K").storage == Limit("add", -K)
    assert parse_rule("Trash:storage=50%").storage == Limit("percent", 50)
    assert parse_rule("Trash:storage=+50%").storage == Limit("percent", 50)
    assert parse_rule("Trash:messages=-5").messages == Limit("add", -5)
    assert parse_rule("Trash:storage=0").storage == Limit("add", 0)
    assert parse_rule("*:storage=0").storage == Limit("set", None)


def test_config_section_defaults_and_checks(tmp_path):
    cfg = config.load(None)
    assert cfg.quota.enabled is False and cfg.quota.rules == [] and cfg.quota.warnings == []
    cfg = config.load(None, {"quota": {"enabled": True, "rules": ["*:storage=1G"],
                                       "warnings": [{"percent": 90, "message": "almost full"}]}})
    assert cfg.quota.warnings[0]["resource"] == "storage" and cfg.quota.warnings[0]["script"] == ""
    with pytest.raises(config.ConfigError, match=r"\[quota\] rules: .*unknown limit"):
        config.load(None, {"quota": {"rules": ["*:storage=1G", "Trash:size=1"]}})
    with pytest.raises(config.ConfigError, match=r"\[quota\] rule: "):
        config.load(None, {"quota": {"rule": "*:storage=lots"}})
    with pytest.raises(config.ConfigError, match=r"\[quota\] rule: give rule or rules"):
        config.load(None, {"quota": {"rule": "*:storage=1G", "rules": ["*:messages=1"]}})
    with pytest.raises(config.ConfigError, match=r"\[\[quota.warnings\]\] #1: needs a message or a script"):
        config.load(None, {"quota": {"warnings": [{"percent": 90}]}})
    with pytest.raises(config.ConfigError, match=r"\[\[quota.warnings\]\] #1 resource"):
        config.load(None, {"quota": {"warnings": [{"percent": 90, "message": "x", "resource": "disk"}]}})


def test_ignore_sticks():
    rules = QuotaRules.from_slots({1: "*:storage=1M", 2: "Spam:ignore", 3: "Spam:storage=+1M"})
    assert not rules.counted("Spam") and rules.limits("Spam").ignored


def test_grace_in_percent_or_size_applies_only_under_the_limit():
    from mailserver.storage.errors import StorageError
    from mailserver.storage.quota import check_limits
    from mailserver.storage.quota_rules import Grace, parse_grace
    assert parse_grace("10%") == Grace(percent=10) and parse_grace("10M") == Grace(size=10 * 1024 ** 2)
    assert parse_grace("0") == Grace() and parse_grace("2048") == Grace(size=2048)
    for bad in ("-10%", "+1M", "10K%", "lots", ""):
        with pytest.raises(RuleError):
            parse_grace(bad)
    rules = QuotaRules.from_slots({1: "*:storage=10K:messages=5", 2: "Trash:storage=+10K"}, "10%")
    assert rules.limits().grace == 1024 and rules.limits("Trash").grace == 2048
    assert QuotaRules.from_slots({1: "*:messages=5"}, "10%").limits().grace == 0   # unlimited storage
    limits = rules.limits()
    check_limits(limits, (10000, 1), 1264, 1, "t")          # 11264 = 10K + 1K: the last mail fits
    with pytest.raises(StorageError):
        check_limits(limits, (10000, 1), 1265, 1, "t")      # past the grace
    with pytest.raises(StorageError):
        check_limits(limits, (10240, 1), 1, 1, "t")         # at the limit already: no grace left
    with pytest.raises(StorageError):
        check_limits(limits, (0, 5), 1, 1, "t")             # messages have no grace
