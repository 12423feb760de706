"""IMAP logins per second over implicit TLS (IMAPS): our server against Dovecot, in the same run.

    .venv/bin/python -m bench.logins [--seconds 8] [--rounds 3] [--clients 8] [--only ROW ...]
        [--dovecot-performance-mode] [--key-type rsa|ec] [--set SECTION.KEY=JSON] [--json FILE]

Rows (each measured on every server, one server at a time):

  tls-only       connect, TLS handshake, read the greeting, LOGOUT: no login, the TLS cost floor
  PLAIN, SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT, ARGON2ID, SSHA512
                 connect, handshake, greeting, LOGIN user pass, LOGOUT, the user in a passwd-file
                 with the password stored in that scheme; the hashes come from ``mailserver pw
                 --scheme S`` (default cost parameters) and both servers read the same strings
  ldap-lookup    the same login with the passdb in LDAP (a throwaway slapd, tests/slapd.py):
                 the server binds as a reader, reads userPassword ({SSHA}) and checks it itself
  ldap-bind      the same with authentication binds: the server searches for the user's DN, then
                 binds as the user and slapd checks the password

Servers: ours (``mailserver serve``, tests/harness.py) and Dovecot 2.3 from Debian's packages
(bench/dovecot.py) with Dovecot's built-in defaults for every service: an imap-login process per
connection (service_count = 1), no auth cache.  ``--dovecot-performance-mode`` adds a second
baseline, Dovecot with ``service imap-login { service_count = 0; process_min_avail = <cores> }``
(long-lived login processes, each serving many connections).  Every server runs on loopback
with its own temporary directory, the same users and the same certificate from a throwaway CA
(``--key-type``: RSA 2048, the default, or ECDSA P-256; tests.authtls_support.Certificates, the
one the TLS tests use), and logs at
its usual level (ours: info, JSON lines to a file, as ``serve`` logs when stderr is not a
terminal; Dovecot: its default, to a file).  The userdb is static for Dovecot; ours answers from
its passdbs (it does no userdb lookup at IMAP login).

Limits opened for the benchmark (every connection comes from 127.0.0.1 and all logins succeed):
ours ``[server] max_connections_per_ip = 10000`` (default 50) and ``[auth]
penalty_exempt_networks = ["127.0.0.0/8"]`` (the penalty only counts failures, so this is a
safeguard); Dovecot ``protocol imap { mail_max_userip_connections = 10000 }`` (default 10).
Failures are not expected: a row with any failed or refused login is aborted and reported.

The client: ``--clients`` worker processes (fork), each with one blocking ``ssl`` socket at a
time, doing sessions back to back for ``--seconds`` (a session started before the end finishes
and counts).  Each worker's rate is its sessions divided by the time from the common start to its
last session's end; the row's rate is the sum over workers.  Every LOGIN must get its tagged OK
(and the greeting ``* OK``, the LOGOUT a tagged OK).  Python does little per session (a few
reads and writes, about a tenth of the client's CPU); OpenSSL's client handshake does the rest,
about as much CPU as a server-side handshake, so on a small machine the client shares the CPU
with the server in the fastest rows: its CPU per session is printed beside the servers'.  Each
client logs in as a user of its own (``--clients`` users per row), never resuming TLS sessions
(a full handshake every time).  Before starting, the CPU is sampled for 2 s: above 10 % busy the
run prints a warning.

Each round runs every row on every server, the server order rotating from round to round;
reported per row: the median over rounds of logins/s, the ratio of the medians ours / Dovecot
(above 1: ours is faster), and medians of server CPU ms per session (all of Dovecot's processes;
slapd's CPU is not counted for either), client CPU ms per session and server log lines per
session (the per-round lines and ``--json`` have them all).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.common import cpu_seconds, settings_from  # noqa: E402
from bench.dovecot import Dovecot  # noqa: E402
from tests import slapd as slapd_mod  # noqa: E402
from tests.authtls_support import Certificates, ConfiguredServer  # noqa: E402

SCHEMES = ("PLAIN", "SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "ARGON2ID", "SSHA512")
ROWS = ("tls-only",) + SCHEMES + ("ldap-lookup", "ldap-bind")
SETUP_OF = {**{r: "passwd" for r in ("tls-only",) + SCHEMES}, "ldap-lookup": "ldap-lookup", "ldap-bind": "ldap-bind"}
LDAP_SCHEME = "SSHA"          # what slapd itself can check (auth binds) and both servers can verify
TIMEOUT = 60.0                # seconds for one socket operation (an ARGON2ID login queue can be long)


class SessionError(Exception):
    pass


# --- the client ------------------------------------------------------------------------------------

def client_context(cafile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)          # the test CA: we talk to the right server
    return ctx


class _Lines:
    """Reads CRLF-terminated lines from a socket (IMAP responses here carry no literals)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 2:]
                return line
            data = self.sock.recv(16384)
            if not data:
                raise SessionError("connection closed by the server")
            self.buf += data

    def tagged(self, tag: bytes) -> bytes:
        while True:
            line = self.line()
            if line.startswith(tag + b" "):
                return line


def session(ctx: ssl.SSLContext, port: int, login: tuple[str, str] | None) -> str:
    """One session; raises SessionError unless the greeting is ``* OK`` and LOGIN (when given) and
    LOGOUT get a tagged OK.  Returns the TLS version and cipher."""
    raw = socket.create_connection(("127.0.0.1", port), TIMEOUT)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
        try:
            r = _Lines(sock)
            greeting = r.line()
            if not greeting.startswith(b"* OK"):
                raise SessionError(f"greeting: {greeting[:200]!r}")
            if login is not None:
                user, password = login
                sock.sendall(b'a LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode()))
                line = r.tagged(b"a")
                if not line.startswith(b"a OK"):
                    raise SessionError(f"LOGIN {user}: {line[:200]!r}")
            sock.sendall(b"b LOGOUT\r\n")
            line = r.tagged(b"b")
            if not line.startswith(b"b OK"):
                raise SessionError(f"LOGOUT: {line[:200]!r}")
            return f"{sock.version()} {sock.cipher()[0]}"
        finally:
            sock.close()
    finally:
        raw.close()


def _worker(cafile: str, port: int, login, start: float, end: float, conn) -> None:
    ctx = client_context(cafile)
    done, last, error = 0, start, ""
    while time.monotonic() < start:
        time.sleep(0.001)
    while time.monotonic() < end:
        try:
            session(ctx, port, login)
        except (SessionError, OSError) as e:
            error = f"{type(e).__name__}: {e}"
            break
        done += 1
        last = time.monotonic()
    conn.send({"sessions": done, "seconds": last - start, "error": error})
    conn.close()


def drive(cafile: str, port: int, logins: list, seconds: float) -> dict:
    """``len(logins)`` worker processes doing sessions back to back for ``seconds``."""
    ctx = multiprocessing.get_context("fork")
    start = time.monotonic() + 0.3 + 0.02 * len(logins)       # every worker forked and waiting
    workers = []
    for login in logins:
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(cafile, port, login, start, start + seconds, child))
        p.start()
        child.close()
        workers.append((p, parent))
    results = []
    for p, parent in workers:
        try:
            results.append(parent.recv())
        except EOFError:
            results.append({"sessions": 0, "seconds": 0.0, "error": "client worker died"})
        p.join()
    errors = [r["error"] for r in results if r["error"]]
    sessions = sum(r["sessions"] for r in results)
    rate = sum(r["sessions"] / r["seconds"] for r in results if r["sessions"] and r["seconds"] > 0)
    return {"sessions": sessions, "per_s": rate, "errors": errors}


# --- set-up ------------------------------------------------------------------------------------------

def mailserver_pw(scheme: str, password: str) -> str:
    """A ``{SCHEME}hash`` field from our CLI (``mailserver pw``)."""
    script = os.path.join(os.path.dirname(sys.executable), "mailserver")
    cmd = [script] if os.path.exists(script) else [sys.executable, "-m", "mailserver"]
    out = subprocess.run(cmd + ["pw", "--scheme", scheme, "--password", password], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    if not out.startswith("{"):
        raise RuntimeError(f"mailserver pw --scheme {scheme}: unexpected output {out!r}")
    return out


def make_users(clients: int) -> tuple[dict, dict]:
    """Per row: [(user, password)]; and user -> password field, every hash from our CLI."""
    users = {"tls-only": [None] * clients}
    jobs = []
    for scheme in SCHEMES:
        users[scheme] = [(f"{scheme.lower()}-{i}", f"pw-{scheme.lower()}-{i}") for i in range(clients)]
        jobs += [(scheme, u, p) for u, p in users[scheme]]
    ldap_users = [(f"ldapuser-{i}", f"pw-ldap-{i}") for i in range(clients)]
    users["ldap-lookup"] = users["ldap-bind"] = ldap_users
    jobs += [(LDAP_SCHEME, u, p) for u, p in ldap_users]
    with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        fields = dict(zip([u for _, u, _ in jobs], pool.map(lambda j: mailserver_pw(j[0], j[2]), jobs)))
    return users, fields


def ours_ldap_table(directory, auth_bind: bool) -> dict:
    return {"driver": "ldap", "uris": [directory.uri], "base": slapd_mod.PEOPLE,
            "bind_dn": slapd_mod.READER_DN, "bind_password": slapd_mod.READER_PW,
            "user_filter": "(&(objectClass=inetOrgPerson)(uid=%u))", "auth_bind": auth_bind}


def dovecot_ldap_passdb(base: str, directory, auth_bind: bool) -> str:
    conf = os.path.join(base + "-ldap.conf.ext")
    with open(conf, "w") as f:
        f.write(f"uris = {directory.uri}\ndn = {slapd_mod.READER_DN}\ndnpass = {slapd_mod.READER_PW}\n"
                f"base = {slapd_mod.PEOPLE}\nscope = subtree\nldap_version = 3\n"
                f"pass_filter = (&(objectClass=inetOrgPerson)(uid=%u))\n"
                f"pass_attrs = uid=user,userPassword=password\ndefault_pass_scheme = CRYPT\n"
                f"auth_bind = {'yes' if auth_bind else 'no'}\n")
    os.chmod(conf, 0o644)
    return f"passdb {{\n  driver = ldap\n  args = {conf}\n}}"


class Instance:
    """One running server for one set-up (passwd-file, LDAP lookup, LDAP bind)."""

    def __init__(self, name: str, port: int, pids, log_path: str, stop, describe):
        self.name, self.port, self.pids, self.log_path, self.stop, self.describe = \
            name, port, pids, log_path, stop, describe

    def log_lines(self) -> int:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().count(b"\n")
        except FileNotFoundError:
            return 0


def start_ours(base: str, setup: str, tls: tuple[str, str], fields: dict, directory,
               options: dict | None = None) -> Instance:
    auth: dict = {"penalty_exempt_networks": ["127.0.0.0/8", "::1/128"]}
    if setup != "passwd":
        auth.update({"passwd_file": "", "passdb": [ours_ldap_table(directory, setup == "ldap-bind")]})
    sections = {
        "server": {"log_level": "info", "max_connections_per_ip": 10000},
        "imap": {"listen_tls": ["127.0.0.1:0"]},
        "tls": {"cert": tls[0], "key": tls[1]},
        "auth": auth,
    }
    for section, values in (options or {}).items():
        sections.setdefault(section, {}).update(values)
    server = ConfiguredServer(base, sections, users=0, name="ours")
    if setup == "passwd":
        for user, field in fields.items():
            if not user.startswith("ldapuser-"):
                server.add_user(user, field)
    server.start()
    return Instance("ours", server.ports["imaps"], lambda: [server.proc.pid], server.log_path, server.stop,
                    lambda: server.log_text()[-3000:])


def start_dovecot(base: str, setup: str, tls: tuple[str, str], users: dict, fields: dict, directory,
                  name: str, performance: bool) -> Instance:
    passwd_users = sorted({u for row in SCHEMES for u in users[row]})
    passdb = None if setup == "passwd" else dovecot_ldap_passdb(base, directory, setup == "ldap-bind")
    imap_login = (f"  service_count = 0\n  process_min_avail = {os.cpu_count() or 1}\n" if performance else "")
    dc = Dovecot(base, passwd_users, tls=tls, stored=fields, passdb=passdb, imap_login=imap_login,
                 extra="protocol imap {\n  mail_max_userip_connections = 10000\n}\n")
    dc.start()

    def describe() -> str:
        try:
            with open(os.path.join(base, "dovecot.log"), errors="replace") as f:
                return f.read()[-3000:]
        except FileNotFoundError:
            return ""
    return Instance(name, dc.ports["imaps"], dc.pids, os.path.join(base, "dovecot.log"), dc.stop, describe)


# --- measuring ---------------------------------------------------------------------------------------

def measure(inst: Instance, cafile: str, logins: list, seconds: float) -> dict:
    cpu0 = cpu_seconds(inst.pids())
    client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines0 = inst.log_lines()
    res = drive(cafile, inst.port, logins, seconds)
    time.sleep(0.5)           # let the last sessions' processes exit and their logs be written
    cpu1 = cpu_seconds(inst.pids())
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    n = max(1, res["sessions"])
    res["server_cpu_ms"] = (cpu1 - cpu0) * 1000 / n
    res["client_cpu_ms"] = ((client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)) * 1000 / n
    res["log_lines"] = (inst.log_lines() - lines0) / n
    return res


def cpu_busy(seconds: float = 2.0) -> float:
    """The fraction of all CPUs busy over ``seconds`` (from /proc/stat; the load average lags
    a minute behind, and would still show a benchmark that has just ended)."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)          # idle + iowait, total
    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per row and server (default 8)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, the server order rotating (default 3)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent connections (default 8)")
    ap.add_argument("--only", choices=ROWS, action="append", help="run only these rows")
    ap.add_argument("--dovecot-performance-mode", action="store_true",
                    help="also measure Dovecot with long-lived login processes (a second baseline)")
    ap.add_argument("--no-dovecot", action="store_true", help="only our server")
    ap.add_argument("--key-type", choices=("rsa", "ec"), default="rsa",
                    help="the certificate's key: RSA 2048 (default) or ECDSA P-256")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                    help="a configuration value for our server, e.g. server.log_level='\"warn\"'")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = ap.parse_args()
    options = settings_from(args.set)
    rows = [r for r in ROWS if not args.only or r in args.only]
    setups = sorted({SETUP_OF[r] for r in rows})
    if any(s != "passwd" for s in setups) and not slapd_mod.available():
        print("slapd is not installed (scripts/install --test): the ldap rows cannot run", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    busy = cpu_busy()
    print(f"{len(rows)} rows x {args.rounds} rounds x {args.seconds:g} s, {args.clients} clients, "
          f"{os.cpu_count()} CPUs, CPU {busy:.0%} busy before the start (load average {load:.2f})", flush=True)
    if busy > 0.10:
        print(f"WARNING: the machine is not idle ({busy:.0%} of the CPU busy): figures may be disturbed", flush=True)
    t_start = time.monotonic()
    users, fields = make_users(args.clients)
    print(f"hashes made with `mailserver pw` in {time.monotonic() - t_start:.1f} s", flush=True)
    servers = ["ours"] + ([] if args.no_dovecot else ["dovecot"]) + \
        (["dovecot-perf"] if args.dovecot_performance_mode and not args.no_dovecot else [])
    results: dict = {r: {s: [] for s in servers} for r in rows}
    failed: dict[str, str] = {}
    tls_seen: dict[str, str] = {}
    instances: dict[tuple[str, str], Instance] = {}
    tmp = tempfile.mkdtemp(prefix="bench-logins-")
    directory = None
    try:
        os.chmod(tmp, 0o755)
        tls_dir = os.path.join(tmp, "tls")
        os.makedirs(tls_dir)
        certs = Certificates(tls_dir, key_type=args.key_type)
        cert, key, cafile = certs.cert_path, certs.key_path, certs.ca_path
        for path in (tls_dir, cert, key, cafile):
            os.chmod(path, 0o644)      # Dovecot's config process reads them; temporary anyway
        if any(s != "passwd" for s in setups):
            entries = [slapd_mod.person(u, fields[u]) for u, _ in users["ldap-lookup"]]
            directory = slapd_mod.Slapd(os.path.join(tmp, "slapd"), entries)
            directory.start()
        for setup in setups:
            for name in servers:
                base = os.path.join(tmp, f"{name}-{setup}")
                if name == "ours":
                    inst = start_ours(base, setup, (cert, key), fields, directory, options)
                else:
                    os.makedirs(base, exist_ok=True)
                    inst = start_dovecot(base, setup, (cert, key), users, fields, directory, name,
                                         name == "dovecot-perf")
                instances[(name, setup)] = inst
        # Warm-up: every user logs in once on every server (first-login work such as creating the
        # mail directory is not measured); this also checks every configuration.
        for row in rows:
            for name in servers:
                inst = instances[(name, SETUP_OF[row])]
                try:
                    for login in dict.fromkeys(users[row]):
                        tls_seen[name] = session(client_context(cafile), inst.port, login)
                except (SessionError, OSError) as e:
                    failed[row] = f"{name} warm-up: {type(e).__name__}: {e}"
                    print(f"ROW {row} ABORTED: {failed[row]}\n--- {name} log tail ---\n{inst.describe()}",
                          flush=True)
                    break
        for name in servers:
            print(f"  {name}: {tls_seen.get(name, '?')}", flush=True)
        for rnd in range(args.rounds):
            shift = rnd % len(servers)
            order = servers[shift:] + servers[:shift]
            for row in rows:
                if row in failed:
                    continue
                for name in order:
                    inst = instances[(name, SETUP_OF[row])]
                    res = measure(inst, cafile, users[row], args.seconds)
                    if res["errors"]:
                        failed[row] = f"{name}: {len(res['errors'])} of {args.clients} clients failed: {res['errors'][0]}"
                        print(f"ROW {row} ABORTED: {failed[row]}\n--- {name} log tail ---\n{inst.describe()}",
                              flush=True)
                        break
                    results[row][name].append(res)
                    print(f"round {rnd + 1} {row:>13} {name:>12}: {res['per_s']:8.1f} /s  "
                          f"({res['sessions']} sessions)  server {res['server_cpu_ms']:6.2f} ms CPU  "
                          f"client {res['client_cpu_ms']:5.2f} ms CPU  {res['log_lines']:.1f} log lines",
                          flush=True)
    finally:
        for inst in instances.values():
            inst.stop()
        if directory is not None:
            directory.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(row, name, key):
        rs = results[row][name]
        return statistics.median(r[key] for r in rs) if rs else None

    summary: dict = {}
    for row in rows:
        entry = {"failed": failed.get(row, "")}
        for name in servers:
            entry[name] = {"per_s": med(row, name, "per_s"), "server_cpu_ms": med(row, name, "server_cpu_ms"),
                           "client_cpu_ms": med(row, name, "client_cpu_ms"),
                           "log_lines": med(row, name, "log_lines"),
                           "rounds": [{k: v for k, v in r.items() if k != "errors"} for r in results[row][name]]}
        for base in servers[1:]:
            a, b = entry["ours"]["per_s"], entry[base]["per_s"]
            entry[f"ratio_ours_{base}"] = a / b if a and b and not failed.get(row) else None
        summary[row] = entry

    print()
    print(f"medians over {args.rounds} rounds, logins/s over implicit TLS ({args.clients} clients, "
          f"{args.key_type} certificate); CPU: server ms per session")
    head = f"{'row':>13} {'ours':>9}"
    for base in servers[1:]:
        head += f" {base:>12} {'ratio':>6}"
    head += "   CPU ms: " + " / ".join(servers)
    print(head)
    for row in rows:
        e = summary[row]
        if e["failed"]:
            print(f"{row:>13}  FAILED: {e['failed']}")
            continue
        line = f"{row:>13} {e['ours']['per_s']:9.1f}"
        for base in servers[1:]:
            line += f" {e[base]['per_s']:12.1f} {e[f'ratio_ours_{base}']:6.2f}"
        line += "   " + " / ".join(f"{e[n]['server_cpu_ms']:.2f}" for n in servers)
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "args": vars(args), "cpus": os.cpu_count(), "cpu_busy_before": busy,
                       "load_average_before": load,
                       "tls": tls_seen, "rows": summary}, f, indent=2)
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
