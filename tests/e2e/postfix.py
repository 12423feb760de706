"""A throwaway Postfix (Debian's package) delivering to our LMTP listener.

Its own config, queue and data directories in a temporary directory; no network listener at all
(mail is injected with its ``sendmail -C``); every domain in ``domains`` is a virtual mailbox
domain whose transport is ``lmtp:inet:127.0.0.1:PORT``, and no recipient is checked against
/etc/passwd.  ``stop`` stops only this instance's master process.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"

# No smtpd: nothing listens.  chroot off: the temporary queue has none of the files a chroot needs.
MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    def __init__(self, lmtp_port: int, domains: list[str]):
        if not os.path.exists(POSTFIX):
            raise RuntimeError("Postfix is not installed: run scripts/install --test (apt-get install postfix)")
        # Postfix's daemons run as the postfix user and must reach the queue: not under pytest's
        # root-only tmp_path.
        self.base = tempfile.mkdtemp(prefix="mailserver-postfix-")
        os.chmod(self.base, 0o755)
        self.etc = os.path.join(self.base, "etc")
        self.queue = os.path.join(self.base, "queue")
        self.data = os.path.join(self.base, "data")
        self.maillog = os.path.join(self.base, "maillog")
        os.makedirs(self.etc)
        os.mkdir(self.queue, 0o755)
        os.mkdir(self.data, 0o700)
        shutil.chown(self.data, "postfix")
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(MASTER_CF)
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(f"""\
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = mta.test.example
mydomain = test.example
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
virtual_mailbox_domains = {", ".join(domains)}
virtual_mailbox_maps =
virtual_transport = lmtp:inet:127.0.0.1:{lmtp_port}
recipient_delimiter = +
maillog_file = {self.maillog}
maillog_file_prefixes = {self.base}
biff = no
""")
        self.master_pid: int | None = None

    def _run(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(args, input=input, capture_output=True, timeout=60)

    def start(self) -> None:
        done = self._run(POSTFIX, "-c", self.etc, "start")
        if done.returncode != 0:
            raise RuntimeError(f"postfix start failed: {done.stderr.decode()}\n{self.log()}")
        pid_file = os.path.join(self.queue, "pid", "master.pid")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with open(pid_file) as f:
                    self.master_pid = int(f.read().strip())
                return
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)
        raise RuntimeError(f"postfix master did not start\n{self.log()}")

    def sendmail(self, sender: str, recipients: list[str], message: bytes) -> None:
        """Inject through Postfix's sendmail with this instance's configuration."""
        done = self._run(SENDMAIL, "-C", self.etc, "-f", sender, "-i", "--", *recipients, input=message)
        if done.returncode != 0:
            raise RuntimeError(f"sendmail failed: {done.stderr.decode()}")

    def log(self) -> str:
        try:
            with open(self.maillog, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_sent(self, count: int, timeout: float = 60.0) -> list[str]:
        """Wait until ``count`` recipients were delivered (``status=sent`` lines); fail on a
        bounce or deferral, showing the log."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            sent = [line for line in text.splitlines() if "status=sent" in line]
            bad = re.search(r"^.*status=(bounced|deferred).*$", text, re.M)
            if bad:
                raise AssertionError(f"Postfix could not deliver: {bad.group(0)}\n{text[-4000:]}")
            if len(sent) >= count:
                return sent
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(sent)} of {count} recipients delivered\n{text[-4000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop this instance (its master and the daemons it started), then remove its files."""
        if self.master_pid is not None:
            self._run(POSTFIX, "-c", self.etc, "stop")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _alive(self.master_pid):
                time.sleep(0.1)
            if _alive(self.master_pid):
                os.kill(self.master_pid, signal.SIGKILL)
            self.master_pid = None
        shutil.rmtree(self.base, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
