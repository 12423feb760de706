"""Quota rules in Dovecot's ``quota_rule`` syntax, and the limits they give each mailbox.

A rule is ``MAILBOX:LIMIT[:LIMIT...]`` or ``MAILBOX:ignore``:

- ``MAILBOX`` is ``*`` (the default rule: the user's quota) or a mailbox name, which may use the
  wildcards ``*`` and ``?`` (``INBOX`` matches case-insensitively, as everywhere).
- ``LIMIT`` is ``storage=SIZE`` (``bytes=`` is Dovecot's older spelling of the same) or
  ``messages=COUNT``.  A size is a number of bytes with an optional unit ``B``, ``K``, ``M``,
  ``G`` or ``T`` (powers of 1024, either case).  ``0`` or ``none`` means unlimited.
- In a mailbox rule a limit may be relative to the default rule: ``+100M`` / ``-10M`` adds to
  it, ``110%`` scales it.  Relative to an unlimited default it stays unlimited (as Dovecot).
- ``ignore``: messages in that mailbox are not counted and saving there is never refused.

Rules come in numbered slots, as Dovecot's ``quota_rule``, ``quota_rule2``, ``quota_rule3``...
The configuration's ``[quota] rule``/``rules`` fill the slots first; a userdb field of the same
name (``quota_rule2``, or ``userdb_quota_rule2`` as a passwd-file extra field) replaces that
slot, exactly as a Dovecot userdb field overrides the setting of the same name.  Several rules
for the same mailbox merge resource by resource, the later slot winning.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re

DEFAULT = "*"
RESOURCES = ("storage", "messages")
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
_SIZE = re.compile(r"([+-]?)(\d{1,19})\s*([bkmgt]?)(%?)", re.IGNORECASE)
_SLOT = re.compile(r"(?:userdb_)?quota_rule(\d*)")


class RuleError(ValueError):
    """A rule that cannot be parsed; the text says what is wrong, for the admin."""


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """One resource's limit in a rule: ``mode`` is ``"set"`` (``value`` None: unlimited),
    ``"add"`` (``value`` may be negative) or ``"percent"`` of the default rule's limit."""

    mode: str
    value: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One parsed rule: which mailboxes, whether they are ignored, and the limits it sets."""

    mailbox: str
    ignore: bool = False
    storage: Limit | None = None
    messages: Limit | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """What applies to one mailbox: limits in bytes and messages (None: unlimited), and
    ``ignored`` when the mailbox is neither counted nor limited."""

    storage: int | None
    messages: int | None
    ignored: bool = False


def parse_rule(text: str) -> Rule:
    """Parse one rule; RuleError with the reason when it is not valid."""
    text = text.strip()
    if ":" not in text:
        raise RuleError(f"{text!r}: expected MAILBOX:storage=SIZE, MAILBOX:messages=N or MAILBOX:ignore")
    mailbox, _, rest = text.partition(":")
    if not mailbox:
        raise RuleError(f"{text!r}: the mailbox part is empty (use * for the default rule)")
    limits: dict = {}
    ignore = False
    for part in rest.split(":"):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if key == "ignore" and not eq:
            ignore = True
            continue
        if key == "bytes":
            key = "storage"     # Dovecot's older name of the storage limit
        if key not in RESOURCES or not eq:
            raise RuleError(f"{text!r}: unknown limit {part!r} (storage=SIZE, messages=N or ignore)")
        limits[key] = _parse_limit(text, key, value.strip(), relative_ok=mailbox != DEFAULT)
    if ignore and limits:
        raise RuleError(f"{text!r}: ignore takes no limits")
    if not ignore and not limits:
        raise RuleError(f"{text!r}: no limit given")
    if ignore and mailbox == DEFAULT:
        raise RuleError(f"{text!r}: the default rule cannot be ignore (use storage=0 for unlimited)")
    return Rule(mailbox, ignore, limits.get("storage"), limits.get("messages"))


def _parse_limit(text: str, key: str, value: str, relative_ok: bool) -> Limit:
    if value.lower() in ("none", "unlimited"):
        return Limit("set", None)
    m = _SIZE.fullmatch(value)
    if not m:
        raise RuleError(f"{text!r}: {key}={value!r} is not a number with an optional unit B, K, M, G, T")
    sign, digits, unit, percent = m.groups()
    if key == "messages" and unit:
        raise RuleError(f"{text!r}: messages={value!r} takes no unit")
    if (sign or percent) and not relative_ok:
        raise RuleError(f"{text!r}: relative limits (+N, -N, N%) only make sense in a mailbox rule")
    if percent:
        if sign or unit:
            raise RuleError(f"{text!r}: {key}={value!r}: a percentage is a plain number followed by %")
        return Limit("percent", int(digits))
    amount = int(digits) * _UNITS[unit.lower()]
    if sign:
        return Limit("add", -amount if sign == "-" else amount)
    return Limit("set", amount or None)      # 0 is unlimited, as in Dovecot


def slots_from_fields(fields: dict) -> dict[int, str]:
    """The rule slots found among userdb fields (``quota_rule``, ``userdb_quota_rule2``...)."""
    out = {}
    for name, value in fields.items():
        m = _SLOT.fullmatch(name)
        # Dovecot has no "quota_rule1": the first slot is plain quota_rule.
        if m and m.group(1) != "1" and isinstance(value, str):
            out[int(m.group(1) or 1)] = value
    return out


def slots_from_config(rule: str, rules: list) -> dict[int, str]:
    """The slots the ``[quota]`` section fills: ``rules`` in order, or ``rule`` alone."""
    items = list(rules) if rules else ([rule] if rule else [])
    return {n: text for n, text in enumerate(items, 1)}


class QuotaRules:
    """A user's rules, resolved: the limits of every mailbox."""

    def __init__(self, rules: list[Rule] = ()):
        merged: dict[str, Rule] = {}
        for rule in rules:
            old = merged.get(rule.mailbox)
            if old is None or rule.ignore or old.ignore:
                merged[rule.mailbox] = rule
            else:
                merged[rule.mailbox] = Rule(rule.mailbox, False, rule.storage or old.storage,
                                            rule.messages or old.messages)
        default = merged.pop(DEFAULT, Rule(DEFAULT))
        self.default = Limits(_absolute(default.storage), _absolute(default.messages))
        self.mailbox_rules = list(merged.values())

    @classmethod
    def from_slots(cls, slots: dict[int, str]) -> "QuotaRules":
        """Parse the rules of numbered slots (empty ones skipped).  RuleError when one is bad."""
        return cls([parse_rule(text) for _, text in sorted(slots.items()) if text.strip()])

    @property
    def unlimited(self) -> bool:
        """No limit anywhere (reports show the root without resources)."""
        return self.default == Limits(None, None) and all(
            self.limits(r.mailbox).storage is None and self.limits(r.mailbox).messages is None
            for r in self.mailbox_rules if not r.ignore)

    def _rule_for(self, mailbox: str) -> Rule | None:
        for rule in reversed(self.mailbox_rules):
            pattern = rule.mailbox
            name = mailbox
            if pattern[:5].upper() == "INBOX" and (len(pattern) == 5 or pattern[5] == "/"):
                pattern = "INBOX" + pattern[5:]
            if fnmatch.fnmatchcase(name, pattern.replace("[", "[[]")):
                return rule
        return None

    def counted(self, mailbox: str) -> bool:
        """Do messages in ``mailbox`` count towards the quota?"""
        rule = self._rule_for(mailbox)
        return rule is None or not rule.ignore

    def limits(self, mailbox: str | None = None) -> Limits:
        """The limits that apply when saving into ``mailbox`` (None: the default rule's)."""
        rule = self._rule_for(mailbox) if mailbox is not None else None
        if rule is None:
            return self.default
        if rule.ignore:
            return Limits(None, None, ignored=True)
        return Limits(_apply(rule.storage, self.default.storage), _apply(rule.messages, self.default.messages))


def _absolute(limit: Limit | None) -> int | None:
    return None if limit is None else limit.value


def _apply(limit: Limit | None, default: int | None) -> int | None:
    """A mailbox rule's limit given the default one (None: unlimited)."""
    if limit is None:
        return default
    if limit.mode == "set":
        return limit.value
    if default is None:
        return None         # relative to unlimited stays unlimited
    # A relative limit at or below zero leaves no room (not "unlimited", which 0 means when set).
    if limit.mode == "add":
        return max(default + limit.value, 1)
    return max(default * limit.value // 100, 1)
