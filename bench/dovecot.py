"""Dovecot 2.3 from Debian's packages as a side-by-side baseline: Maildir, loopback, its own
temporary directory, started and stopped by the benchmark (never the system service)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Dovecot:
    """One Dovecot instance.  By default: plaintext listeners only, the users in a passwd-file
    with ``{PLAIN}`` passwords, Dovecot's built-in defaults for every service.  Options (all off
    by default, so existing callers get the same configuration):

    ``tls``        (cert, key) PEM paths: ``ssl = yes`` and an implicit-TLS IMAP listener
                   (``ports["imaps"]``) besides the plaintext ones
    ``stored``     user -> password field for the passwd-file (``{SHA512-CRYPT}$6$...``)
                   instead of ``{PLAIN}password``
    ``passdb``     a whole ``passdb { ... }`` block replacing the passwd-file one (e.g. LDAP)
    ``imap_login`` lines added inside ``service imap-login { }`` (e.g. ``service_count = 0``)
    ``extra``      lines appended to the configuration (limits, protocol sections)
    """

    def __init__(self, base: str, users: list[tuple[str, str]], *, tls: tuple[str, str] | None = None,
                 stored: dict[str, str] | None = None, passdb: str | None = None, imap_login: str = "",
                 extra: str = ""):
        if not shutil.which("dovecot"):
            raise RuntimeError("dovecot is not installed: apt-get install dovecot-imapd dovecot-pop3d dovecot-lmtpd")
        self.base = base
        self.ports = {"imap": free_port(), "pop3": free_port(), "lmtp": free_port()}
        if tls:
            self.ports["imaps"] = free_port()
        stored = stored or {}
        self.conf = os.path.join(base, "dovecot.conf")
        os.makedirs(os.path.join(base, "run"), exist_ok=True)
        for d in (base, os.path.dirname(base)):
            os.chmod(d, 0o755)   # its auth process runs as the dovecot user and must reach the passwd file
        os.makedirs(os.path.join(base, "mail"), exist_ok=True)
        shutil.chown(os.path.join(base, "mail"), "nobody", "nogroup")   # mail is stored as nobody
        with open(os.path.join(base, "passwd"), "w") as f:
            for user, pw in users:
                field = stored.get(user) or f"{{PLAIN}}{pw}"
                f.write(f"{user}:{field}::::::\n")
        if passdb is None:
            passdb = f"passdb {{\n  driver = passwd-file\n  args = {base}/passwd\n}}"
        ssl = f"ssl = yes\nssl_cert = <{tls[0]}\nssl_key = <{tls[1]}" if tls else "ssl = no"
        imaps_port = self.ports.get("imaps", 0)
        with open(self.conf, "w") as f:
            f.write(f"""
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = imap pop3 lmtp
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
mail_location = maildir:{base}/mail/%u
default_login_user = dovenull
default_internal_user = dovecot
{passdb}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={base}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {self.ports['imap']}
  }}
  inet_listener imaps {{
    port = {imaps_port}
  }}
{imap_login}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.ports['pop3']}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.ports['lmtp']}
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@example.org
}}
{extra}
""")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.ports["lmtp"]), 0.5).close()
                socket.create_connection(("127.0.0.1", self.ports["imap"]), 0.5).close()
                if "imaps" in self.ports:
                    socket.create_connection(("127.0.0.1", self.ports["imaps"]), 0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"dovecot did not start; see {self.base}/dovecot.log")

    def pids(self) -> list[int]:
        """Dovecot's processes (master and children), for CPU and memory accounting."""
        if self.proc is None:
            return []
        from bench.common import with_children    # bench/common.py put the repository on sys.path
        return with_children(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
