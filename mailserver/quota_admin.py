"""``mailserver quota get|recalc USER``: a user's quota usage and limits, and a recount of the
usage counters from every mailbox (what ``doveadm quota get`` and ``doveadm quota recalc`` do).

They build the storage, dictionary and authenticator as the server does, wrap the storage in
quota, and are safe to run while the server runs: the counters change by dictionary
transactions, and a recount rewrites them in one.
"""

from __future__ import annotations

import sys

from mailserver import plugins
from mailserver.storage.errors import StorageError


def _table(user_root) -> list[str]:
    """Lines of ``quota get``: root, resource, usage, limit (``-``: unlimited), percent used.
    STORAGE is in bytes, MESSAGE in messages."""
    lines = [f"{'Quota name':<16} {'Type':<8} {'Value':>14} {'Limit':>14} {'%':>4}"]
    for res in user_root.resources:
        limit = "-" if res.limit is None else str(res.limit)
        percent = 0 if not res.limit else res.usage * 100 // res.limit
        lines.append(f"{user_root.name:<16} {res.name:<8} {res.usage:>14} {limit:>14} {percent:>4}")
    return lines


def run(config, args) -> int:
    """Run ``quota get`` or ``quota recalc``; exit status 0, or 1 when storage failed."""
    result = {"code": 0}
    from mailserver.auth.service import UsernameRule, build_authenticator
    username = UsernameRule.from_config(config).normalize(args.user)
    if not config.quota.enabled:
        print("mailserver quota: note: [quota] enabled is false, so the server does not keep these "
              "counters up to date", file=sys.stderr)

    async def main():
        from mailserver import log as logsetup
        from mailserver.server import build_quota_storage
        logsetup.setup("text", "warn")
        inner = plugins.load(plugins.MAILBOX_FORMATS, config.storage.format).from_config(config, plugins)
        dictionary = plugins.load(plugins.DICTS, config.dict.driver).from_config(config)
        storage = build_quota_storage(config, inner, dictionary, build_authenticator(config))
        try:
            await storage.start()
            await dictionary.start()
            user = await storage.open_user(username)
            try:
                if args.quota_command == "recalc":
                    size, messages = await user.recalc()
                    print(f"{username}: recounted: STORAGE {size} bytes, MESSAGE {messages} messages")
                root = await user.quota(storage.root_name)
                print("\n".join(_table(root)))
            finally:
                await user.close()
        except StorageError as e:
            print(f"mailserver: {e.kind.value}: {e.detail}", file=sys.stderr)
            result["code"] = 1
        finally:
            await dictionary.stop()
            await storage.stop()

    from mailserver.admin import run_in_reactor
    return run_in_reactor(main, result)
