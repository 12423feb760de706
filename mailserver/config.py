"""The one configuration loader: TOML, validated entirely at start.

Every key the server understands is declared in ``SCHEMA`` (and, for third-party drivers,
in a plugin class's ``CONFIG_SCHEMA``).  Unknown sections or keys, wrong types and bad
values raise ``ConfigError`` naming the file, the key and what is wrong.
``docs/configuration.md`` documents every key declared here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
from typing import Any, Callable


class ConfigError(Exception):
    """A configuration problem, worded for the admin: ``FILE: [section] key: what is wrong``."""


@dataclasses.dataclass(frozen=True)
class Key:
    """One configuration key: its type, default and an optional check returning an error text."""

    type: Any
    default: Any = None
    check: Callable[[Any], str | None] | None = None
    doc: str = ""
    required: bool = False
    item: type = str            # element type of a list (str, or dict for arrays of tables)
    auto: bool = False          # the string "auto" is accepted too (resolved by the loader)


# --- value checks -------------------------------------------------------------------------------

_ENDPOINT_PREFIXES = ("tcp:", "tcp6:", "unix:", "systemd:", "haproxy:", "ssl:")


def check_listen(value: list) -> str | None:
    for item in value:
        problem = listen_problem(item)
        if problem:
            return f"{item!r}: {problem}"
    return None


def listen_problem(item: str) -> str | None:
    """Why a listen entry is invalid, or None.  Accepts ``host:port``, ``[v6]:port`` or a
    Twisted endpoint description (``unix:``, ``systemd:``, ``haproxy:``...)."""
    if item.startswith(_ENDPOINT_PREFIXES):
        return None
    host, port = split_host_port(item)
    if port is None:
        return 'expected "host:port" or an endpoint description such as "unix:/path" or "systemd:domain=INET:index=0"'
    if not 0 <= port <= 65535:
        return "port out of range"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            return "host is neither an IP address nor a host name"
    return None


def split_host_port(item: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", item)
    if not m:
        return item, None
    host = m.group(1) if m.group(1) is not None else m.group(3)
    return (host or "0.0.0.0"), int(m.group(2) or m.group(4))


def positive(value) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def metadata_value_size(value) -> str | None:
    """[imap] metadata_max_value_size: positive, and small enough that its base64 fits a dict value."""
    from mailserver.storage.metadata import MAX_VALUE_LIMIT
    return None if 0 < value <= MAX_VALUE_LIMIT else f"must be between 1 and {MAX_VALUE_LIMIT}"


def metadata_entries(value) -> str | None:
    """[imap] metadata_max_entries: positive and bounded."""
    return None if 0 < value <= 100000 else "must be between 1 and 100000"


def metadata_admin(value: str) -> str | None:
    """[imap] metadata_admin: a printable ASCII URI of bounded length (or empty)."""
    if len(value) > 1024 or any(not (" " <= c <= "~") for c in value):
        return "must be printable ASCII of at most 1024 characters"
    return None


def lmtp_processes(value) -> str | None:
    if value != "auto" and not 1 <= value <= 64:
        return 'must be 1 to 64, or "auto"'
    return None


AUTO_LMTP_PROCESSES_MAX = 8


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    return max(1, len(os.sched_getaffinity(0)))


def auto_lmtp_processes(index_store: str) -> int:
    """``[lmtp] processes = "auto"``: one per CPU this process may run on (at most 8) with the
    local index; 1 with another index store (see ``_check_lmtp``)."""
    if index_store != "local":
        return 1
    return min(usable_cpus(), AUTO_LMTP_PROCESSES_MAX)


def one_of(*choices) -> Callable[[Any], str | None]:
    def check(value):
        return None if value in choices else "must be one of " + ", ".join(repr(c) for c in choices)
    return check


def absolute_path(value: str) -> str | None:
    return None if value == "" or os.path.isabs(value) else "must be an absolute path"


def networks(value: list) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r}: not an address or network (such as 192.0.2.0/24 or ::1)"
    return None


def mailbox_name(value: str) -> str | None:
    if not value or value.upper() == "INBOX":
        return "must name a mailbox other than INBOX"
    return None


def keyword(value: str) -> str | None:
    if not value or value.startswith("\\") or any(c in value for c in ' (){%*"]\\') or not value.isascii() \
            or not value.isprintable():
        return "must be an IMAP keyword (an atom such as $POP3Deleted)"
    return None


def special_use_map(value: dict) -> str | None:
    from mailserver.storage.api import SPECIAL_USES
    for name, use in value.items():
        if not isinstance(use, str) or use not in SPECIAL_USES:
            return f"{name!r}: special use must be one of " + ", ".join(SPECIAL_USES)
    return None


def quota_rule(value: str) -> str | None:
    from mailserver.storage.quota_rules import RuleError, parse_rule
    if not value:
        return None
    try:
        parse_rule(value)
    except RuleError as e:
        return str(e)
    return None


def quota_grace(value: str) -> str | None:
    from mailserver.storage.quota_rules import RuleError, parse_grace
    try:
        parse_grace(value)
    except RuleError as e:
        return str(e)
    return None


def quota_rule_list(value: list) -> str | None:
    for item in value:
        problem = quota_rule(item) if item else f"{item!r}: empty rule"
        if problem:
            return problem
    return None


# --- the schema ---------------------------------------------------------------------------------

DEFAULT_MAILBOXES = {"Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash",
                     "Junk": "\\Junk", "Archive": "\\Archive"}

SCHEMA: dict[str, dict[str, Key]] = {
    "server": {
        "state_dir": Key(str, "/var/lib/mailserver", absolute_path,
                         "Where the embedded default keeps objects, index and dictionary."),
        "hostname": Key(str, "", None, "Name used in greetings and Received headers (default: this host's FQDN)."),
        "log_format": Key(str, "auto", one_of("auto", "text", "json"),
                          "auto: text on a terminal, JSON lines otherwise (one object per event: its "
                          "fields such as session, user and peer, log_level, text, and traceback for an "
                          "error)."),
        "log_level": Key(str, "info", one_of("debug", "info", "warn", "error"), "Least severe level logged."),
        "shutdown_timeout": Key(float, 30.0, positive, "Seconds to wait for in-flight writes on SIGTERM."),
        "io_threads": Key(int, 2, positive,
                          "Threads per pool for the embedded default's blocking file I/O (objects and "
                          "index), in each process.  More let more fsyncs overlap, but each thread costs "
                          "GIL hand-offs with the reactor: on 2 cores, 2 beat 1, 4 and 8."),
        "max_connections": Key(int, 5000, positive, "Open connections over all listeners; more are refused."),
        "max_connections_per_ip": Key(int, 50, positive,
                                      "Open IMAP and POP3 connections from one client address; more are refused."),
    },
    "imap": {
        "listen": Key(list, ["127.0.0.1:143"], check_listen,
                      'Addresses: "host:port", "[v6]:port", or Twisted endpoint descriptions '
                      '("unix:/path", "systemd:domain=INET:index=0", "haproxy:tcp:143").'),
        "listen_tls": Key(list, [], check_listen, "Implicit-TLS listeners (port 993); needs [tls]."),
        "max_line_length": Key(int, 65536, positive, "Longest command line (without literals), bytes."),
        "max_literal_size": Key(int, 50 * 1024 * 1024, positive, "Largest literal and APPEND message, bytes (APPENDLIMIT)."),
        "max_pipelined_commands": Key(int, 100, positive, "Commands queued before the server stops reading."),
        "idle_check_interval": Key(float, 1.0, positive, "Seconds between checks for changes by other processes "
                                    "(the local index store also watches with inotify: at once on this host)."),
        "max_auth_failures": Key(int, 3, positive, "Failed logins before the connection is closed."),
        "idle_timeout": Key(float, 1800.0, positive, "Seconds of client silence before disconnect (30 min, RFC 3501)."),
        "literal_plus": Key(bool, True, None, "Advertise LITERAL+ (non-synchronising literals of any size); "
                                              "false: LITERAL- (only up to 4096 bytes, RFC 7888)."),
        "max_idle_per_user": Key(int, 50, positive, "Sessions of one user in IDLE at once; past it IDLE "
                                                    "answers NO [LIMIT]."),
        "max_search_keys": Key(int, 200, positive, "Search keys in one SEARCH program; past it BAD [LIMIT]."),
        "alert": Key(str, "", None, "Text sent to every client after login as OK [ALERT] (maintenance "
                                    "notices); empty: none."),
        "urlauth_submit_user": Key(str, "", None, "The user a submission server logs in as to URLFETCH "
                                                  "submit+ URLAUTH URLs (RFC 4467); empty: nobody can."),
        "metadata_max_value_size": Key(int, 64 * 1024, metadata_value_size,
                                       "METADATA (RFC 5464): largest entry value, bytes; larger ones get "
                                       "NO [METADATA MAXSIZE n]."),
        "metadata_max_entries": Key(int, 256, metadata_entries,
                                    "METADATA: entries per mailbox, and for the server, of each user; past "
                                    "it SETMETADATA answers NO [METADATA TOOMANY]."),
        "metadata_private": Key(bool, True, None, "METADATA: allow /private entries (false: SETMETADATA of "
                                                  "one answers NO [METADATA NOPRIVATE])."),
        "metadata_admin": Key(str, "", metadata_admin,
                              "METADATA: the read-only /shared/admin server entry (RFC 5464 3.2.1.2), a URI "
                              "such as \"mailto:postmaster@example.org\"; empty: none."),
    },
    "pop3": {
        "listen": Key(list, ["127.0.0.1:110"], check_listen, "Addresses, as for [imap] listen."),
        "listen_tls": Key(list, [], check_listen, "Implicit-TLS listeners (port 995); needs [tls]."),
        "max_line_length": Key(int, 1024, positive, "Longest command line, bytes."),
        "max_auth_failures": Key(int, 3, positive, "Failed logins before the connection is closed."),
        "idle_timeout": Key(float, 600.0, positive, "Seconds of client silence before disconnect."),
        "uidl_format": Key(str, "%g", None, "Like Dovecot's pop3_uidl_format: %u UID, %v UIDVALIDITY, %g mail GUID. "
                                            "A UIDL recorded at migration (object metadata) wins."),
        "delete_mode": Key(str, "expunge", one_of("expunge", "move", "seen", "hide"),
                           "What DELE does at QUIT: expunge; move to delete_mailbox (like lazy_expunge); "
                           "seen: only mark \\Seen, keep the mail; hide: set deleted_keyword, the mail stays "
                           "for IMAP but POP3 no longer lists it (Dovecot's pop3_deleted_flag)."),
        "delete_mailbox": Key(str, "Trash", mailbox_name, "delete_mode = \"move\": where deleted mail goes "
                                                          "(created when missing)."),
        "deleted_keyword": Key(str, "$POP3Deleted", keyword, "delete_mode = \"hide\": the keyword set on "
                                                             "deleted mail."),
        "no_flag_updates": Key(bool, False, None, "RETR does not set \\Seen (Dovecot's pop3_no_flag_updates)."),
    },
    "lmtp": {
        "listen": Key(list, ["127.0.0.1:24"], check_listen, "Addresses, as for [imap] listen (keep LMTP private)."),
        "max_message_size": Key(int, 50 * 1024 * 1024, positive, "Largest message accepted (SIZE), bytes."),
        "max_recipients": Key(int, 1000, positive, "Recipients per transaction (more: 452 4.5.3)."),
        "max_line_length": Key(int, 4096, positive, "Longest command line, bytes."),
        "idle_timeout": Key(float, 300.0, positive, "Seconds of client silence before 421 and disconnect."),
        "recipient_delimiter": Key(str, "+", None,
                                   "Characters separating user and detail in user+detail@domain; empty: none."),
        "save_to_detail_mailbox": Key(bool, False, None, "Deliver user+detail@domain into the mailbox named "
                                                         "detail when it exists (else INBOX), as Dovecot's "
                                                         "lmtp_save_to_detail_mailbox."),
        "add_received_header": Key(bool, True, None, "Add a Received: trace header (Return-Path and, for a "
                                                     "single recipient, Delivered-To are always added)."),
        "max_body_line_length": Key(int, 1000, non_negative,
                                    "Longest message line accepted, CRLF included (RFC 5321: 1000); 0: no limit. "
                                    "Longer lines and NUL bytes are refused with 554 5.6.0 unless BODY=BINARYMIME."),
        "trusted_networks": Key(list, ["127.0.0.0/8", "::1/128"], networks,
                                "Networks allowed to use XCLIENT (CIDR); connections over UNIX sockets are trusted."),
        "processes": Key(int, "auto", lmtp_processes,
                         "Processes serving LMTP connections: the server accepts them and gives each to "
                         "the least busy of itself and the processes - 1 LMTP-only workers it starts (each "
                         "process runs Python on one core at a time).  \"auto\": one per CPU core, at "
                         "most 8, with [rbox] index_store = \"local\", else 1.  More than 1 needs [rbox] "
                         "index_store = \"local\".", auto=True),
    },
    "auth": {
        "passwd_file": Key(str, "", absolute_path, "Dovecot passwd-file with users and password hashes."),
        "username_case": Key(str, "lower", one_of("lower", "keep"), "Normalise usernames to lower case."),
        "username_chars": Key(str, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@", None,
                              "Characters allowed in a username (Dovecot's auth_username_chars); empty: any."),
        "strip_domain": Key(bool, False, None,
                            "Drop '@domain' from usernames (Dovecot's auth_username_format=%Ln), for a "
                            "passwd-file without domains."),
        "failure_delay": Key(float, 2.0, non_negative,
                             "Seconds to wait before answering a failed login (Dovecot's auth_failure_delay)."),
        "passdb": Key(list, [], None, "Password databases, tried in order ([[auth.passdb]] tables).", item=dict),
        "userdb": Key(list, [], None, "User databases ([[auth.userdb]] tables); default: the passdbs.", item=dict),
        "mechanisms": Key(list, ["PLAIN", "LOGIN"], None, "SASL mechanisms offered (when they can work)."),
        "master_user_separator": Key(str, "", None,
                                     "Separator of 'user*master' logins (Dovecot's auth_master_user_separator)."),
        "plaintext_networks": Key(list, ["127.0.0.0/8", "::1/128"], networks,
                                  "Client networks allowed plaintext logins without TLS."),
        "penalty_exempt_networks": Key(list, [], networks, "Client networks never delayed after failures."),
        "penalty_threshold": Key(int, 3, non_negative, "Failures from an address before its logins are delayed."),
        "penalty_initial": Key(float, 2.0, non_negative, "First delay (seconds); doubles with each further failure."),
        "penalty_max": Key(float, 15.0, non_negative, "Longest delay (seconds)."),
        "penalty_forget": Key(float, 3600.0, positive,
                              "Seconds after its last failure that an address or user is forgiven."),
        "user_max_failures": Key(int, 30, positive,
                                 "Failures for one user (from anywhere) before its logins are refused unchecked "
                                 "until penalty_forget passes."),
    },
    "auth.oauth2": {
        "introspection_url": Key(str, "", None, "RFC 7662 token introspection endpoint (OAUTHBEARER, XOAUTH2)."),
        "client_id": Key(str, "", None, "Client id for the introspection endpoint (HTTP basic auth)."),
        "client_secret": Key(str, "", None, "Its secret (keep the file private)."),
        "username_claim": Key(str, "username", None, "Introspection field holding the username."),
        "timeout": Key(float, 10.0, positive, "Seconds to wait for the introspection endpoint."),
        "ca_file": Key(str, "", absolute_path, "CA certificates for an https endpoint (default: system)."),
    },
    "tls": {
        "cert": Key(str, "", absolute_path, "Certificate chain (PEM, server certificate first)."),
        "key": Key(str, "", absolute_path, "Private key (PEM)."),
        "min_version": Key(str, "TLSv1.2", one_of("TLSv1.2", "TLSv1.3"), "Oldest TLS version accepted."),
        "ciphers": Key(str, "", None, "OpenSSL cipher list for TLS 1.2 (empty: OpenSSL's default)."),
    },
    "storage": {
        "format": Key(str, "rbox", None, "Mailbox format (entry point in mailserver.mailbox_formats)."),
        "mailboxes": Key(dict, DEFAULT_MAILBOXES, special_use_map,
                         "Mailboxes created for a new user, name = special use."),
        "max_mailboxes": Key(int, 1000, positive, "Mailboxes per user (more: NO [LIMIT])."),
        "max_mailbox_name_length": Key(int, 255, positive, "Longest mailbox name, bytes of UTF-8."),
        "max_mailbox_depth": Key(int, 16, positive, "Most hierarchy levels in a mailbox name."),
        "max_keywords": Key(int, 200, positive, "Keywords per mailbox."),
    },
    "dict": {
        "driver": Key(str, "local", None, "Dictionary driver (entry point in mailserver.dicts) for quota, "
                                          "IMAP METADATA and URLAUTH keys."),
        "ceph_conf": Key(str, "", absolute_path, "rados driver: ceph.conf of the cluster; empty: [rados] ceph_conf."),
        "pool": Key(str, "", None, "rados driver: pool holding the dictionary objects (created if missing); "
                                   "empty: [rados] pool."),
        "client_name": Key(str, "", None, "rados driver: Ceph client (cephx user) name; empty: [rados] client_name."),
        "op_timeout": Key(float, 0.0, non_negative, "rados driver: seconds before a dictionary operation (or "
                                                    "connecting) fails as temporary; 0: [rados] op_timeout."),
    },
    "quota": {
        "enabled": Key(bool, False, None, "Track and enforce quota (usage kept in the dictionary under "
                                          "priv/quota/storage and priv/quota/messages); IMAP QUOTA."),
        "rule": Key(str, "", quota_rule, "Default quota rule, Dovecot's quota_rule (e.g. \"*:storage=1G\"); "
                                         "a userdb field quota_rule replaces it."),
        "rules": Key(list, [], quota_rule_list, "Default rules in slot order (quota_rule, quota_rule2...), "
                                                "instead of rule; a userdb field quota_ruleN replaces slot N."),
        "grace": Key(str, "10%", quota_grace, "Dovecot's quota_grace: a user under the storage limit may "
                                              "save one more change past it by this much (a percentage of "
                                              "the limit or a size such as 10M; 0: none); a userdb field "
                                              "quota_grace replaces it."),
        "root_name": Key(str, "User quota", None, "Name of the quota root shown to IMAP clients."),
        "full_tempfail": Key(bool, False, None, "LMTP answers an over-quota recipient 452 4.2.2 (try "
                                                "again later) instead of 552 5.2.2, as Dovecot's "
                                                "quota_full_tempfail."),
        "warnings": Key(list, [], None, "Warnings when usage crosses a threshold upward "
                                        "([[quota.warnings]] tables: resource, percent, message, subject, "
                                        "script); only the first crossed one fires, so list the highest first.",
                        item=dict),
        "rules_cache_seconds": Key(float, 60.0, non_negative, "How long a user's rules looked up in the "
                                                              "userdb are reused."),
    },
    "rbox": {
        "object_store": Key(str, "local", None, "Object store driver (entry point in mailserver.object_stores)."),
        "index_store": Key(str, "local", None, "Index store driver (entry point in mailserver.index_stores)."),
        "object_path": Key(str, "", absolute_path, "local object store: directory (default STATE_DIR/objects)."),
        "index_path": Key(str, "", absolute_path, "local index store: directory (default STATE_DIR/index)."),
        "namespace_suffix": Key(str, "_namespace", None, "Appended to the username to name its RADOS namespace."),
        "snapshot_threshold": Key(int, 256 * 1024, positive,
                                  "Rewrite a mailbox's snapshot when its log grows past this many bytes."),
        "body_cache_bytes": Key(int, 64 * 1024 * 1024, non_negative, "In-memory cache of recent message bodies."),
        "body_cache_dir": Key(str, "", absolute_path,
                              "Directory caching message bodies read from the object store, on "
                              "local disk (empty: off).  Useful with object_store = \"rados\"."),
        "body_cache_dir_bytes": Key(int, 1024 * 1024 * 1024, positive,
                                    "Size cap of body_cache_dir (least recently used bodies go first)."),
        "prefetch": Key(int, 256, positive, "Message bodies read ahead during FETCH and SEARCH, per "
                        "object-store call (two such batches, each also at most 2 MB, are in flight)."),
        "parallel_commit": Key(bool, True, None,
                               "Write a saved message's object and its index record at once (the save "
                               "still returns only when both are durable); a crash in between can leave "
                               "a record without its object, which force-resync drops."),
        "checkpoint_interval": Key(float, 60.0, non_negative,
                                   "Seconds between index checkpoints into the object store (0: only at close)."),
        "gc_grace": Key(float, 3600.0, non_negative,
                        "Seconds before `rbox gc` removes an object no index refers to."),
    },
}

# Plugins add sections of their own (CONFIG_SECTION / CONFIG_SCHEMA class attributes).
_PLUGIN_SCHEMAS: dict[str, dict[str, Key]] = {}


def register_section(name: str, keys: dict[str, Key]) -> None:
    """Let a plugin declare a configuration section (called when the plugin module is imported)."""
    _PLUGIN_SCHEMAS[name] = keys


class Section:
    """Read-only attribute access to one validated section."""

    def __init__(self, name: str, values: dict):
        self._name = name
        self._values = dict(values)

    def __getattr__(self, key):
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"[{self._name}] has no key {key!r}") from None

    def get(self, key, default=None):
        return self._values.get(key, default)

    def as_dict(self) -> dict:
        return dict(self._values)


class Config:
    """The validated configuration: ``config.imap.listen``, ``config.section("rados")``."""

    def __init__(self, path: str | None, sections: dict[str, dict]):
        self.path = path
        self._sections = {name: Section(name, values) for name, values in sections.items()}

    def __getattr__(self, name):
        try:
            return self._sections[name]
        except KeyError:
            raise AttributeError(f"no configuration section [{name}]") from None

    def section(self, name: str) -> Section:
        return self._sections[name]

    def as_dict(self) -> dict:
        return {name: s.as_dict() for name, s in self._sections.items()}


def _type_name(t) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list", dict: "a table"}.get(t, t.__name__)


def _coerce(key: Key, value):
    """Value converted to the key's type, or raise ValueError with what is wrong."""
    if key.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if key.auto and value == "auto":
        return value
    if key.type is int and isinstance(value, bool):
        raise ValueError(f"expected {_type_name(int)}, got {value!r}")
    if not isinstance(value, key.type):
        raise ValueError(f"expected {_type_name(key.type)}, got {type(value).__name__} {value!r}")
    if key.type is list and not all(isinstance(v, key.item) for v in value):
        raise ValueError("expected a list of tables" if key.item is dict else "expected a list of strings")
    return value


def schema() -> dict[str, dict[str, Key]]:
    merged = dict(SCHEMA)
    merged.update(_PLUGIN_SCHEMAS)
    return merged


def load(path: str | None, overrides: dict | None = None) -> Config:
    """Read and validate a TOML file (``path`` None: defaults only), then apply ``overrides``
    (a dict of sections, used by tests and the demo).  Raises ConfigError."""
    raw: dict = {}
    where = path or "<defaults>"
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except PermissionError:
            raise ConfigError(f"{path}: permission denied") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    return validate(raw, where)


def validate(raw: dict, where: str) -> Config:
    _load_plugin_schemas(raw)
    known = schema()
    raw = _lift_subsections(raw, known)
    sections: dict[str, dict] = {}
    for name, values in raw.items():
        if name not in known:
            raise ConfigError(f"{where}: unknown section [{name}] (known: {', '.join(sorted(known))})")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{name}] must be a table")
        for key in values:
            if key not in known[name]:
                raise ConfigError(f"{where}: [{name}] {key}: unknown key "
                                  f"(known: {', '.join(sorted(known[name]))})")
    for name, keys in known.items():
        given = raw.get(name, {})
        out = {}
        for key_name, key in keys.items():
            if key_name in given:
                try:
                    value = _coerce(key, given[key_name])
                except ValueError as e:
                    raise ConfigError(f"{where}: [{name}] {key_name}: {e}") from None
                if key.check:
                    problem = key.check(value)
                    if problem:
                        raise ConfigError(f"{where}: [{name}] {key_name}: {problem}")
            elif key.required:
                raise ConfigError(f"{where}: [{name}] {key_name}: required")
            else:
                value = key.default
            out[key_name] = value
        sections[name] = out
    _derive(sections)
    _check_drivers(sections, where)
    _check_auth(sections, where)
    _check_quota(sections, where)
    _check_lmtp(sections, where)
    return Config(None if where == "<defaults>" else where, sections)


def _lift_subsections(raw: dict, known: dict) -> dict:
    """``[auth.oauth2]`` arrives as ``raw["auth"]["oauth2"]``: make it the section ``auth.oauth2``."""
    out = {}
    for name, values in raw.items():
        if isinstance(values, dict):
            values = dict(values)
            for key in list(values):
                if f"{name}.{key}" in known and isinstance(values[key], dict):
                    out[f"{name}.{key}"] = values.pop(key)
        out[name] = values
    return out


def validate_table(table: dict, keys: dict[str, Key], label: str) -> dict:
    """One table checked against ``keys`` (unknown keys, types, checks, defaults), as a section
    is.  ``label`` names it in errors (``FILE: [[auth.passdb]] #2 (ldap)``).  Raises ConfigError."""
    for key in table:
        if key not in keys:
            raise ConfigError(f"{label} {key}: unknown key (known: {', '.join(sorted(keys))})")
    out = {}
    for key_name, key in keys.items():
        if key_name in table:
            try:
                value = _coerce(key, table[key_name])
            except ValueError as e:
                raise ConfigError(f"{label} {key_name}: {e}") from None
            problem = key.check(value) if key.check else None
            if problem:
                raise ConfigError(f"{label} {key_name}: {problem}")
        elif key.required:
            raise ConfigError(f"{label} {key_name}: required")
        else:
            value = key.default
        out[key_name] = value
    return out


# Keys every [[auth.passdb]] / [[auth.userdb]] table has besides its driver's SETTINGS.
DB_COMMON_KEYS = {
    "driver": Key(str, "", None, "Entry point in mailserver.passdbs / mailserver.userdbs.", required=True),
    "master": Key(bool, False, None, "passdb only: a master passdb (user*master logins)."),
}


def _check_auth(sections: dict, where: str) -> None:
    """Validate the passdb and userdb tables against their drivers' settings; ``passwd_file``
    becomes the first passdb.  Each table ends up as a validated dict with its ``driver``."""
    from mailserver import plugins
    auth = sections["auth"]
    for kind, group in (("passdb", plugins.PASSDBS), ("userdb", plugins.USERDBS)):
        tables = [(f"[[auth.{kind}]] #{n}", t) for n, t in enumerate(auth[kind], 1)]
        if kind == "passdb" and auth["passwd_file"]:
            tables.insert(0, ("[auth] passwd_file:", {"driver": "passwd-file", "path": auth["passwd_file"]}))
        checked = []
        for name, table in tables:
            driver = table.get("driver")
            label = f"{where}: {name}" + (f" ({driver})" if isinstance(driver, str) and "#" in name else "")
            if not isinstance(driver, str) or not driver:
                raise ConfigError(f"{label} driver: required (one of {', '.join(plugins.available(group))})")
            if driver not in plugins.available(group):
                raise ConfigError(f"{label} driver: no {group} plugin named {driver!r} "
                                  f"(installed: {', '.join(plugins.available(group)) or 'none'})")
            try:
                cls = plugins.load(group, driver)
            except plugins.PluginError as e:
                raise ConfigError(f"{label}: {e}") from None
            keys = dict(DB_COMMON_KEYS)
            keys.update(getattr(cls, "SETTINGS", {}))
            if kind == "userdb":
                keys.pop("master")
            checked.append(validate_table(table, keys, label))
        auth[kind] = checked
    if any(db["master"] for db in auth["passdb"]) and not auth["master_user_separator"]:
        raise ConfigError(f"{where}: [auth] master_user_separator: required when a passdb has master = true "
                          "(Dovecot uses \"*\")")


# Keys of one [[quota.warnings]] table.
QUOTA_WARNING_KEYS = {
    "resource": Key(str, "storage", one_of("storage", "messages"), "Which usage is watched."),
    "percent": Key(int, 0, lambda v: None if 0 < v <= 1000 else "must be 1..1000", "Threshold, percent of "
                   "the user's limit.", required=True),
    "message": Key(str, "", None, "Text of a warning mail delivered to the user's INBOX (empty: none); "
                                  "%u is the user, %p the percentage."),
    "subject": Key(str, "Mailbox quota warning", None, "Subject of the warning mail."),
    "script": Key(str, "", absolute_path, "Program run with the username and the percentage as arguments."),
}


def _check_quota(sections: dict, where: str) -> None:
    """``rule`` and ``rules`` exclude each other; each warning table is validated and completed."""
    quota = sections["quota"]
    if quota["rule"] and quota["rules"]:
        raise ConfigError(f"{where}: [quota] rule: give rule or rules, not both")
    checked = []
    for n, table in enumerate(quota["warnings"], 1):
        label = f"{where}: [[quota.warnings]] #{n}"
        warning = validate_table(table, QUOTA_WARNING_KEYS, label)
        if not warning["message"] and not warning["script"]:
            raise ConfigError(f"{label}: needs a message or a script")
        checked.append(warning)
    quota["warnings"] = checked


def _check_lmtp(sections: dict, where: str) -> None:
    """Several LMTP processes write the same users' indexes: fine on a local index (flock), but
    CephFS clients in several processes appending to one user's log take its capabilities from
    each other at every write (measured: 0.44x the deliveries of one process)."""
    lmtp = sections["lmtp"]
    if lmtp["processes"] == "auto":
        lmtp["processes"] = auto_lmtp_processes(sections["rbox"]["index_store"])
    if lmtp["processes"] > 1 and sections["rbox"]["index_store"] != "local":
        raise ConfigError(f'{where}: [lmtp] processes: more than 1 needs [rbox] index_store = "local" '
                          f'(not {sections["rbox"]["index_store"]!r}: several clients of one user\'s '
                          f'index would slow each other down)')


def _derive(sections: dict) -> None:
    """Defaults that depend on other keys."""
    server = sections["server"]
    if not server["hostname"]:
        server["hostname"] = socket.getfqdn()
    rbox = sections["rbox"]
    if not rbox["object_path"]:
        rbox["object_path"] = os.path.join(server["state_dir"], "objects")
    if not rbox["index_path"]:
        rbox["index_path"] = os.path.join(server["state_dir"], "index")


def _load_plugin_schemas(raw: dict) -> None:
    """Import the drivers the file names so their CONFIG_SCHEMA sections are known."""
    from mailserver import plugins
    storage = raw.get("storage", {})
    rbox = raw.get("rbox", {})
    wanted = [(plugins.MAILBOX_FORMATS, storage.get("format", "rbox")),
              (plugins.OBJECT_STORES, rbox.get("object_store", "local")),
              (plugins.INDEX_STORES, rbox.get("index_store", "local")),
              (plugins.DICTS, raw.get("dict", {}).get("driver", "local"))]
    for group, name in wanted:
        if isinstance(name, str):
            plugins.try_load(group, name)


def _check_drivers(sections: dict, where: str) -> None:
    from mailserver import plugins
    checks = [("storage", "format", plugins.MAILBOX_FORMATS),
              ("dict", "driver", plugins.DICTS),
              ("rbox", "object_store", plugins.OBJECT_STORES),
              ("rbox", "index_store", plugins.INDEX_STORES)]
    for section, key, group in checks:
        name = sections[section][key]
        if name not in plugins.available(group):
            raise ConfigError(f"{where}: [{section}] {key}: no {group} plugin named {name!r} "
                              f"(installed: {', '.join(sorted(plugins.available(group))) or 'none'})")


# --- reference documentation --------------------------------------------------------------------

def _render_default(key: Key) -> str:
    if key.auto and key.default == "auto":
        return '"auto"'
    if key.type is str:
        return f'"{key.default}"' if key.default else '""'
    if key.type is bool:
        return "true" if key.default else "false"
    if key.type is list:
        return "[" + ", ".join(f'"{v}"' for v in key.default) + "]"
    if key.type is dict:
        return "{" + ", ".join(f'{k} = "{v}"' for k, v in key.default.items()) + "}"
    return repr(key.default)


def reference_markdown() -> str:
    """Every section and key the loader knows (installed plugins included), as Markdown."""
    from mailserver import plugins
    for group in plugins.GROUPS:
        for name in plugins.available(group):
            plugins.try_load(group, name)
    out = []
    for section, keys in sorted(schema().items()):
        out.append(f"### [{section}]\n\n| key | type | default | meaning |\n| --- | --- | --- | --- |")
        for name, key in keys.items():
            default = _render_default(key).replace("|", "\\|")
            doc = key.doc.replace("|", "\\|")
            kind = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
                    dict: "table"}.get(key.type, key.type.__name__) + (' or "auto"' if key.auto else "")
            out.append(f"| `{name}` | {kind} | `{default}` | {doc} |")
        out.append("")
    for kind, group in (("passdb", plugins.PASSDBS), ("userdb", plugins.USERDBS)):
        for driver in plugins.available(group):
            cls = plugins.try_load(group, driver)
            keys = dict(DB_COMMON_KEYS)
            if kind == "userdb":
                keys.pop("master")
            keys.update(getattr(cls, "SETTINGS", {}) if cls else {})
            out.append(f'### [[auth.{kind}]] driver = "{driver}"\n\n| key | type | default | meaning |\n'
                       "| --- | --- | --- | --- |")
            for name, key in keys.items():
                if name == "driver":
                    continue
                default = "required" if key.required else _render_default(key).replace("|", "\\|")
                kind_name = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
                             dict: "table"}.get(key.type, key.type.__name__)
                doc = key.doc.replace("|", "\\|")
                out.append(f"| `{name}` | {kind_name} | `{default}` | {doc} |")
            out.append("")
    return "\n".join(out)
