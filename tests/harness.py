"""Runs ``mailserver serve`` as a child process for protocol tests and benchmarks.

Listeners bind port 0 on loopback; the real ports come from ``STATE_DIR/listeners.json``.
Users are written to a passwd-file up front (the server reloads it when it changes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ceph_config(conf: str, tag: str, pool: str = "servertest", rbox: str = "", cephfs: str = "") -> str:
    """Extra configuration putting mail in RADOS, the index in CephFS (a root of its own) and the
    dictionary in RADOS omap (pool etc. from [rados]); ``rbox`` and ``cephfs``: more TOML lines
    for those sections.  ``tag`` names one storage: its CephFS root and the suffix of its RADOS
    namespaces (``_<tag>``), so servers of different tags never share a user's objects or
    dictionary even with the same usernames in one pool."""
    return (f'[rbox]\nobject_store = "rados"\nindex_store = "cephfs"\nnamespace_suffix = "_{tag}"\n{rbox}\n'
            f'[dict]\ndriver = "rados"\n\n'
            f'[rados]\nceph_conf = "{conf}"\npool = "{pool}"\nop_timeout = 5.0\n\n'
            f'[cephfs]\nceph_conf = "{conf}"\nroot = "/server-{tag}"\nop_timeout = 5.0\n{cephfs}')


class RunningServer:
    """A server process with its own state directory and passwd-file."""

    def __init__(self, base_dir: str, extra_config: str = "", users: int = 300, name: str = "server",
                 options: dict | None = None):
        self.base_dir = base_dir
        self.state_dir = os.path.join(base_dir, "state")
        self.config_path = os.path.join(base_dir, "mailserver.toml")
        self.passwd_path = os.path.join(base_dir, "passwd")
        self.log_path = os.path.join(base_dir, f"{name}.log")
        self.host = "127.0.0.1"
        self.extra_config = extra_config
        self.options = options or {}        # {"lmtp": {"save_to_detail_mailbox": True}, ...}
        self.proc: subprocess.Popen | None = None
        self.ports: dict = {}
        self._next_user = 0
        self._pool = users
        os.makedirs(self.state_dir, exist_ok=True)
        with open(self.passwd_path, "w") as f:
            for i in range(users):
                f.write(f"user{i:04d}@example.org:{{PLAIN}}pw-{i:04d}::::::\n")
        self.write_config()

    def write_config(self) -> None:
        with open(self.config_path, "w") as f:
            server = {"state_dir": self.state_dir, "log_format": "json", "log_level": "debug",
                      "shutdown_timeout": 10.0, **self.options.get("server", {})}
            f.write("[server]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in server.items()) + "\n")
            for proto in ("imap", "pop3", "lmtp"):
                f.write(f'[{proto}]\nlisten = ["127.0.0.1:0"]\n')
                for key, value in self.options.get(proto, {}).items():
                    f.write(f"{key} = {json.dumps(value)}\n")      # JSON scalars and lists are TOML
                f.write("\n")
            f.write(f"[auth]\npasswd_file = \"{self.passwd_path}\"\nfailure_delay = 0.0\n\n")
            f.write(self.extra_config)

    # --- process ------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        listeners = os.path.join(self.state_dir, "listeners.json")
        if os.path.exists(listeners):
            os.unlink(listeners)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "mailserver", "serve", "--config", self.config_path],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            if os.path.exists(listeners):
                with open(listeners) as f:
                    bound = json.load(f)
                self.ports = {p: int(addrs[0].rsplit(":", 1)[1]) for p, addrs in bound.items()}
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start within {timeout}s:\n{self.log_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        self._log.close()
        return code

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # --- users --------------------------------------------------------------------------------
    def new_user(self) -> tuple[str, str]:
        """A user no other test has touched."""
        if self._next_user >= self._pool:
            raise RuntimeError("test user pool exhausted: raise `users` in the harness")
        i = self._next_user
        self._next_user += 1
        return f"user{i:04d}@example.org", f"pw-{i:04d}"

    def add_user(self, name: str, password_field: str, extra: str = "") -> None:
        """Append a passwd-file line (``password_field`` with its {SCHEME}; ``extra``: the extra
        fields, e.g. ``userdb_quota_rule=*:storage=1M``); the server reloads it."""
        with open(self.passwd_path, "a") as f:
            f.write(f"{name}:{password_field}::::::{extra}\n")

    @property
    def imap_port(self) -> int:
        return self.ports["imap"]

    @property
    def pop3_port(self) -> int:
        return self.ports["pop3"]

    @property
    def lmtp_port(self) -> int:
        return self.ports["lmtp"]


def osd_read_ops(cluster_dir: str, osd: int = 0) -> int:
    """Client read operations the OSD has served so far, all pools together, from its admin
    socket. Counted as each read is served, unlike the pool statistics (see pool_read_ops),
    which reach the manager only when the OSD publishes them: seconds later, and in a cluster's
    first moments sometimes not at all, so a reading of zero there can be vacuous."""
    out = subprocess.run(["ceph", "--admin-daemon", f"{cluster_dir}/run/osd.{osd}.asok", "perf", "dump"],
                         capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)["osd"]["op_r"])


def pool_read_ops(conf: str, pool: str) -> int:
    """Read operations a RADOS pool has served, once the counter has settled: OSDs report
    their statistics every few seconds, so a value is taken when two readings 6 s apart
    agree (a reading just after some reads may not include them yet)."""
    def reading() -> int:
        out = subprocess.run(["rados", "-c", conf, "df", "--format", "json"], capture_output=True,
                             text=True, check=True).stdout
        return next((int(p["read_ops"]) for p in json.loads(out)["pools"] if p["name"] == pool), 0)
    value = reading()
    while True:
        time.sleep(6)
        again = reading()
        if again == value:
            return value
        value = again
