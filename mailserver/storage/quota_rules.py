"""Quota rules in Dovecot's ``quota_rule`` syntax, and the limits they give each mailbox.

A rule is ``MAILBOX:LIMIT[:LIMIT...]`` or ``MAILBOX:ignore``:

- ``MAILBOX`` is ``*`` (the default rule: the user's quota) or a mailbox name, which may use the
  wildcards ``*`` and ``?`` (``INBOX`` matches case-insensitively, as everywhere).
- ``LIMIT`` is ``storage=N`` (KiB unless a unit follows, as in Dovecot), ``bytes=N`` (bytes unless
  a unit follows) or ``messages=N``.  Units are ``B``, ``K``, ``M``, ``G`` and ``T`` (powers of
  1024, either case).  In the default rule ``0`` (or ``none``) means unlimited.
- In a mailbox rule every limit is relative to the default rule, as in Dovecot: ``+100M`` (or
  plain ``100M``, Dovecot's older spelling) adds to it, ``-10M`` takes away, ``10%`` adds that
  share of it (``+10%`` likewise, ``-10%`` takes it away).  If the default is unlimited, the
  mailbox stays unlimited.  Dovecot treats a total at or below zero as unlimited. Here it
  leaves no room, because a smaller allowance was clearly what the rule meant.
- ``ignore``: messages in that mailbox are not counted and saving there is never refused.

Grace, as Dovecot's ``quota_grace``: a user still under the storage limit may save one more
change that takes them past it by at most the grace (``10%`` of the limit, Dovecot's default, or
a size such as ``10M``; ``0``: none), so the last mail of a nearly full mailbox is not bounced.
The message count has no grace.  The ``[quota] grace`` setting, replaced by a userdb field
``quota_grace``.

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
_SIZE = re.compile(r"([+-]?)(\d{1,19})([bkmgt]?)(%?)", re.IGNORECASE)
_SLOT = re.compile(r"(?:userdb_)?quota_rule(\d*)")
_GRACE_FIELDS = ("userdb_quota_grace", "quota_grace")


class RuleError(ValueError):
    """A rule that cannot be parsed; the text says what is wrong, for the admin."""


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """One resource's limit in a rule: ``mode`` is ``"set"`` (default rule; ``value`` None:
    unlimited), ``"add"`` (mailbox rule: bytes or messages added to the default's, may be
    negative) or ``"percent"`` (mailbox rule: that share of the default's added)."""

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
    grace: int = 0          # bytes past ``storage`` a change may reach while usage is under it


def parse_rule(text: str) -> Rule:
    """Parse one rule; RuleError with the reason when it is not valid."""
    text = text.strip()
    if ":" not in text:
        raise RuleError(f"{text!r}: expected MAILBOX:storage=SIZE, MAILBOX:messages=N or MAILBOX:ignore")
    mailbox, _, rest = text.partition(":")
    if not mailbox:
        raise RuleError(f"{text!r}: the mailbox part is empty (use * for the default rule)")
    if rest.strip().lower() == "ignore":
        if mailbox == DEFAULT:
            raise RuleError(f"{text!r}: the default rule cannot be ignore (use storage=0 for unlimited)")
        return Rule(mailbox, ignore=True)
    limits: dict = {}
    for part in rest.split(":"):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if key not in ("storage", "bytes", "messages") or not eq:
            raise RuleError(f"{text!r}: unknown limit {part!r} (storage=SIZE, bytes=SIZE, messages=N or ignore)")
        resource = "messages" if key == "messages" else "storage"
        default_unit = "k" if key == "storage" else "b"
        limits[resource] = _parse_limit(text, key, value.strip(), default_unit, relative=mailbox != DEFAULT)
    return Rule(mailbox, False, limits.get("storage"), limits.get("messages"))


def _parse_limit(text: str, key: str, value: str, default_unit: str, relative: bool) -> Limit:
    if value.lower() in ("none", "unlimited") and not relative:
        return Limit("set", None)
    m = _SIZE.fullmatch(value)
    if not m:
        raise RuleError(f"{text!r}: {key}={value!r} is not a number with an optional unit B, K, M, G, T or %")
    sign, digits, unit, percent = m.groups()
    if not relative:
        if sign or percent:
            raise RuleError(f"{text!r}: the default rule cannot be relative (+N, -N, N%)")
        return Limit("set", int(digits) * _UNITS[(unit or default_unit).lower()] or None)   # 0: unlimited
    amount = -int(digits) if sign == "-" else int(digits)
    if percent:
        if unit:
            raise RuleError(f"{text!r}: {key}={value!r}: a percentage takes no unit")
        if amount <= -100:
            raise RuleError(f"{text!r}: {key}={value!r}: cannot take away 100% or more")
        return Limit("percent", amount)
    return Limit("add", amount * _UNITS[(unit or default_unit).lower()])


@dataclasses.dataclass(frozen=True, slots=True)
class Grace:
    """``quota_grace``: ``percent`` of the storage limit, or ``size`` bytes."""

    percent: int = 0
    size: int = 0

    def of(self, storage: int | None) -> int:
        """The grace in bytes for a storage limit (none for an unlimited one)."""
        if storage is None:
            return 0
        return storage * self.percent // 100 if self.percent else self.size


def parse_grace(text: str) -> Grace:
    """``10%``, ``10M``, ``512K``, ``1024`` (bytes) or ``0``; RuleError when not valid."""
    m = _SIZE.fullmatch(text.strip())
    if not m or m.group(1):
        raise RuleError(f"quota_grace {text!r}: expected a percentage (10%) or a size (10M), not signed")
    _, digits, unit, percent = m.groups()
    if percent:
        if unit:
            raise RuleError(f"quota_grace {text!r}: a percentage takes no unit")
        return Grace(percent=int(digits))
    return Grace(size=int(digits) * _UNITS[unit.lower()])


def grace_from_fields(fields: dict) -> str | None:
    """The userdb's ``quota_grace`` (or ``userdb_quota_grace``), if it has one."""
    for name in _GRACE_FIELDS:
        value = fields.get(name)
        if isinstance(value, str):
            return value
    return None


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

    def __init__(self, rules: list[Rule] = (), grace: Grace = Grace()):
        self.grace = grace
        merged: dict[str, Rule] = {}
        for rule in rules:
            old = merged.get(rule.mailbox)
            if old is None:
                merged[rule.mailbox] = rule
            elif rule.ignore or old.ignore:
                merged[rule.mailbox] = Rule(rule.mailbox, ignore=True)     # ignore sticks, as in Dovecot
            else:
                merged[rule.mailbox] = Rule(rule.mailbox, False, rule.storage or old.storage,
                                            rule.messages or old.messages)
        default = merged.pop(DEFAULT, Rule(DEFAULT))
        storage = _absolute(default.storage)
        self.default = Limits(storage, _absolute(default.messages), grace=grace.of(storage))
        self.mailbox_rules = list(merged.values())

    @classmethod
    def from_slots(cls, slots: dict[int, str], grace: str = "0") -> "QuotaRules":
        """Parse the rules of numbered slots (empty ones skipped) and the grace.  RuleError
        when one is bad."""
        return cls([parse_rule(text) for _, text in sorted(slots.items()) if text.strip()], parse_grace(grace))

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
        storage = _apply(rule.storage, self.default.storage)
        return Limits(storage, _apply(rule.messages, self.default.messages), grace=self.grace.of(storage))


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
    if limit.mode == "add":
        extra = limit.value
    else:   # truncated towards zero, as Dovecot's integer arithmetic does
        extra = default * abs(limit.value) // 100 * (1 if limit.value >= 0 else -1)
    # At or below zero: no room (Dovecot would make it unlimited; see the module docstring).
    return max(default + extra, 1)
