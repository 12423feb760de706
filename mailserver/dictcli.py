"""``mailserver dict get|set|unset|inc|iter``: the configured dictionary from the command line
(as ``doveadm dict``).  Safe while the server runs: the drivers' transactions are atomic across
processes.

Output: ``get`` prints the value; ``iter`` prints ``key<TAB>value`` lines in key order.  Exit
status: 0 done, 1 storage failure (or ``get`` of a key that is not set), 2 bad key, value or
amount (one line on stderr, nothing written).
"""

from __future__ import annotations

import sys

# No Twisted here: cli.py imports this module to build its parser for every subcommand.
from mailserver.storage.errors import ErrorKind, StorageError


def add_parser(sub, config_arg) -> None:
    """The ``dict`` subcommand and its actions, on the CLI's subparsers."""
    p = sub.add_parser("dict", help="read and change the dictionary (quota, METADATA, URLAUTH keys)")
    dsub = p.add_subparsers(dest="dict_command", required=True, metavar="ACTION")
    a = dsub.add_parser("get", help="print a key's value")
    a.add_argument("user")
    a.add_argument("key")
    a = dsub.add_parser("set", help="set a key")
    a.add_argument("user")
    a.add_argument("key")
    a.add_argument("value")
    a = dsub.add_parser("unset", help="remove a key")
    a.add_argument("user")
    a.add_argument("key")
    a = dsub.add_parser("inc", help="add AMOUNT (may be negative) to a counter, atomically")
    a.add_argument("user")
    a.add_argument("key")
    a.add_argument("amount", type=int)
    a = dsub.add_parser("iter", help="print key<TAB>value for the keys under PREFIX")
    a.add_argument("--recursive", "-r", action="store_true", help="also keys below sub-paths of PREFIX")
    a.add_argument("user")
    a.add_argument("prefix")
    for action in dsub.choices.values():
        config_arg(action)


async def _action(dictionary, args) -> int:
    """Run one action on a started dictionary; the exit status."""
    cmd = args.dict_command
    if cmd == "get":
        value = await dictionary.get(args.user, args.key)
        if value is None:
            print(f"mailserver dict get: {args.key}: not set", file=sys.stderr)
            return 1
        print(value)
    elif cmd == "set":
        await dictionary.set(args.user, args.key, args.value)
    elif cmd == "unset":
        await dictionary.unset(args.user, args.key)
    elif cmd == "inc":
        await dictionary.increment(args.user, args.key, args.amount)
    elif cmd == "iter":
        for key, value in sorted((await dictionary.iterate(args.user, args.prefix, args.recursive)).items()):
            print(f"{key}\t{value}")
    return 0


def run(config, args) -> int:
    """Build and start the configured driver, run the action in a reactor of its own, stop."""
    from mailserver import log as logsetup
    from mailserver import plugins
    from mailserver.auth.service import UsernameRule
    args.user = UsernameRule.from_config(config).normalize(args.user)   # the namespace it logs in to
    result = {"code": 0}

    async def main():
        logsetup.setup("text", "warn")
        dictionary = plugins.load(plugins.DICTS, config.dict.driver).from_config(config)
        started = False
        try:
            await dictionary.start()
            started = True
            result["code"] = await _action(dictionary, args)
        except StorageError as e:
            bad_input = e.kind in (ErrorKind.INVALID, ErrorKind.LIMIT)
            print(f"mailserver dict {args.dict_command}: {e.kind.value}: {e.detail}", file=sys.stderr)
            result["code"] = 2 if bad_input else 1
        finally:
            if started:
                await dictionary.stop()

    from mailserver.admin import run_in_reactor
    return run_in_reactor(main, result)
