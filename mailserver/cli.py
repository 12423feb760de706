"""The ``mailserver`` command: run the server and operate it (what doveadm is to Dovecot).

Each subcommand imports its implementation lazily, so ``mailserver pw`` does not load Twisted
or the storage plugins.  Exit codes: 0 success, 1 operation failed, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

DEFAULT_CONFIG = "/etc/mailserver/mailserver.toml"


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailserver", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run IMAP, POP3 and LMTP in the foreground")
    _config_arg(p)
    p.add_argument("--lmtp-worker-channel", type=int, help=argparse.SUPPRESS)  # set by the server for its LMTP workers

    p = sub.add_parser("demo", help="run on the embedded default with a demo user (see README)")
    p.add_argument("--state-dir", required=True, help="directory for the demo's config, users and mail")
    p.add_argument("--host", default="127.0.0.1")

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="validate and print the effective configuration")
    _config_arg(c)
    csub.add_parser("doc", help="print the reference of every configuration key (Markdown)")

    p = sub.add_parser("pw", help="print a password hash for a passwd-file line (like doveadm pw)")
    p.add_argument("--scheme", "-s", default="SHA512-CRYPT", help="hash scheme (default SHA512-CRYPT)")
    p.add_argument("--password", "-p", help="password (default: asked on the terminal)")
    p.add_argument("--list", "-l", action="store_true", help="list the supported schemes")

    p = sub.add_parser("force-resync", help="rebuild a user's index from the mail objects and checkpoints")
    _config_arg(p)
    p.add_argument("user")
    p.add_argument("mailbox", nargs="?")

    p = sub.add_parser("rbox", help="inspect and clean rbox object storage")
    rsub = p.add_subparsers(dest="rbox_command", required=True, metavar="ACTION")
    r = rsub.add_parser("ls", help="list a user's objects with their metadata")
    _config_arg(r)
    r.add_argument("user")
    r = rsub.add_parser("get", help="write one object's data to stdout")
    _config_arg(r)
    r.add_argument("user")
    r.add_argument("oid")
    r = rsub.add_parser("gc", help="remove objects and references no index refers to")
    _config_arg(r)
    r.add_argument("--dry-run", action="store_true", help="only report")
    r.add_argument("--grace", type=float, help="seconds an unreferenced object is left alone (default [rbox] gc_grace)")

    p = sub.add_parser("quota", help="a user's quota usage and limits; recount the usage")
    qsub = p.add_subparsers(dest="quota_command", required=True, metavar="ACTION")
    q = qsub.add_parser("get", help="print usage and limits (STORAGE in bytes, MESSAGE in messages)")
    _config_arg(q)
    q.add_argument("user")
    q = qsub.add_parser("recalc", help="recount usage from every mailbox, rewrite the counters, print them")
    _config_arg(q)
    q.add_argument("user")

    from mailserver import dictcli
    dictcli.add_parser(sub, _config_arg)

    p = sub.add_parser("dev-ceph", help="a throwaway one-node Ceph cluster for tests and trials")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--dir", default="/tmp/mailserver-dev-ceph", help="where the cluster keeps its data")

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "serve": _serve,
        "demo": _demo,
        "config": _config,
        "pw": _pw,
        "dev-ceph": _dev_ceph,
        "force-resync": _admin,
        "rbox": _admin,
        "quota": _quota,
        "dict": _dict,
    }[args.command]
    return handler(args)


def _load_config(path: str):
    from mailserver import config
    try:
        return config.load(path)
    except config.ConfigError as e:
        print(f"mailserver: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args) -> int:
    cfg = _load_config(args.config)
    from mailserver import server
    return server.serve(cfg, args.lmtp_worker_channel)


def _demo(args) -> int:
    from mailserver import demo
    return demo.run(args.state_dir, args.host)


def _config(args) -> int:
    if args.config_command == "doc":
        from mailserver import config
        print(config.reference_markdown())
        return 0
    cfg = _load_config(args.config)
    print(f"# {args.config}: valid")
    print(json.dumps(_without_secrets(cfg.as_dict()), indent=2, sort_keys=True))
    return 0


_SECRET_KEYS = ("password", "secret")


def _without_secrets(value):
    """The configuration as printed: a secret (LDAP bind_password, OAuth2 client_secret...) set
    in the file is shown as "<hidden>", since the output lands in terminals, tickets and logs."""
    if isinstance(value, dict):
        return {k: "<hidden>" if isinstance(v, str) and v and k.endswith(_SECRET_KEYS) else _without_secrets(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


def _pw(args) -> int:
    from mailserver.auth import schemes
    if args.list:
        print(" ".join(schemes.supported()))
        return 0
    password = args.password
    if password is None:
        password = getpass.getpass("Enter new password: ")
        if getpass.getpass("Retype new password: ") != password:
            print("mailserver pw: passwords don't match", file=sys.stderr)
            return 1
    try:
        print(schemes.hash_password(args.scheme, password))
    except schemes.UnknownScheme as e:
        print(f"mailserver pw: {e}", file=sys.stderr)
        return 2
    return 0


def _admin(args) -> int:
    """Storage admin commands: run against the configured storage in a reactor of their own."""
    cfg = _load_config(args.config)
    from mailserver import admin
    return admin.run(cfg, args)


def _quota(args) -> int:
    """``quota get`` / ``quota recalc``: in a reactor of their own, like the storage admin commands."""
    cfg = _load_config(args.config)
    from mailserver import quota_admin
    return quota_admin.run(cfg, args)


def _dict(args) -> int:
    """``mailserver dict ...`` against the configured dictionary driver."""
    cfg = _load_config(args.config)
    from mailserver import dictcli
    return dictcli.run(cfg, args)


def _dev_ceph(args) -> int:
    from mailserver import devceph
    return devceph.main(args.action, args.dir)


if __name__ == "__main__":
    raise SystemExit(main())
