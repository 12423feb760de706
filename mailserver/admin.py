"""Storage admin commands of the ``mailserver`` CLI (force-resync, rbox ls/get/gc).

They build the configured mailbox format like the server does, then call its admin functions
(the rbox format's are in ``plugins/rbox/admin.py``).  Safe to run while the server runs: index
changes take the same locks the server takes.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import defer

from mailserver import plugins
from mailserver.storage.errors import StorageError


def run(config, args) -> int:
    """Run one admin command to completion; exit status 0 on success, 1 on failure."""
    result = {"code": 0}
    if getattr(args, "user", None):
        # The one username rule, so the admin reaches the namespace the user logs in to.
        from mailserver.auth.service import UsernameRule
        args.user = UsernameRule.from_config(config).normalize(args.user)

    async def main():
        from mailserver import log as logsetup
        logsetup.setup("text", "warn")
        storage = plugins.load(plugins.MAILBOX_FORMATS, config.storage.format).from_config(config, plugins)
        module = getattr(storage, "admin", None)
        if module is None:
            print(f"mailserver: the {config.storage.format} format has no admin commands", file=sys.stderr)
            result["code"] = 2
            return
        admin = module()
        try:
            await storage.start()
            if args.command == "force-resync":
                report = await admin.force_resync(storage, args.user, args.mailbox)
                if config.quota.enabled:
                    report["quota_counters"] = await _drop_quota_counters(config, args.user)
                print(json.dumps(report, indent=2))
            elif args.rbox_command == "ls":
                for o in await admin.list_objects(storage, args.user):
                    print(o.oid, " ".join(f"{k}={v}" for k, v in sorted(o.meta.items())),
                          "refs=" + ",".join(sorted(r or '""' for r in o.refs)))
            elif args.rbox_command == "get":
                data = await admin.get_object(storage, args.user, args.oid)
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            elif args.rbox_command == "gc":
                print(json.dumps(await admin.gc(storage, args.dry_run, args.grace), indent=2))
        except StorageError as e:
            print(f"mailserver: {e.kind.value}: {e.detail}", file=sys.stderr)
            result["code"] = 1
        finally:
            await storage.stop()

    return run_in_reactor(main, result)


async def _drop_quota_counters(config, username: str) -> str:
    """A resync adds and drops messages behind quota's back: drop the user's usage counters,
    which the server recounts from every mailbox the next time it needs them (as after a
    failed update)."""
    from mailserver.storage.quota import drop_counters
    dictionary = plugins.load(plugins.DICTS, config.dict.driver).from_config(config)
    await dictionary.start()
    try:
        await drop_counters(dictionary, username)
    finally:
        await dictionary.stop()
    return "dropped: recounted at their next use"


def run_in_reactor(main, result: dict) -> int:
    """Run the coroutine function ``main`` in a reactor of its own (the admin commands: ``rbox``,
    ``force-resync``, ``quota``, ``dict``) and return ``result["code"]``, which ``main`` sets;
    an unexpected exception prints its traceback to the admin's terminal and makes it 1."""
    from twisted.internet import reactor

    def go():
        d = defer.Deferred.fromCoroutine(main())
        d.addErrback(lambda f: (f.printTraceback(file=sys.stderr), result.update(code=1)))
        d.addBoth(lambda _: reactor.stop())
    reactor.callWhenRunning(go)
    reactor.run()
    return result["code"]
