"""The static userdb: the same fields for every user (Dovecot's ``userdb static``).

By default a user exists only if a passdb knows it (``allow_all_users = false``, as Dovecot
checks with a passdb lookup); ``allow_all_users = true`` accepts every valid username, for
setups where the MTA already knows who exists.
"""

from __future__ import annotations

from mailserver.auth import UserDB, UserRecord
from mailserver.config import ConfigError, Key, absolute_path


def _fields(value: dict) -> str | None:
    for key, v in value.items():
        if not isinstance(v, str):
            return f"{key}: values must be strings"
    return None


class StaticUserDB(UserDB):
    """Entry point ``static`` in ``mailserver.userdbs``."""

    SETTINGS = {
        "home": Key(str, "", absolute_path, "Home directory (may contain %u, the username)."),
        "quota_rule": Key(str, "", None, "Quota rule, as Dovecot's userdb_quota_rule (e.g. *:storage=1G)."),
        "fields": Key(dict, {}, _fields, "Further userdb fields, name = value."),
        "allow_all_users": Key(bool, False, None, "Every valid username exists (no passdb check)."),
    }

    def __init__(self, home: str = "", quota_rule: str = "", fields: dict | None = None,
                 allow_all_users: bool = False):
        self.home = home
        self.extra = dict(fields or {})
        if quota_rule:
            self.extra["quota_rule"] = quota_rule
        # The authenticator checks the passdbs first when this is set.
        self.needs_passdb_check = not allow_all_users

    @classmethod
    def from_config(cls, config, settings) -> "StaticUserDB":
        if "%" in settings["home"].replace("%u", ""):
            raise ConfigError("[[auth.userdb]] (static) home: only %u may be used")
        return cls(settings["home"], settings["quota_rule"], settings["fields"], settings["allow_all_users"])

    async def lookup(self, username: str) -> UserRecord | None:
        """Every (normalised, valid) username, with the static fields."""
        return UserRecord(username=username, home=self.home.replace("%u", username), extra=dict(self.extra))
