"""A throwaway one-node Ceph cluster for tests, benchmarks and trials (``mailserver dev-ceph``).

One monitor, one manager, one memstore OSD, one MDS and a CephFS, all bound to 127.0.0.1, the
monitor on a free port so several clusters can run side by side.  Everything (configuration,
data, logs, admin sockets, pid files) lives under one directory; ``stop`` kills only the daemons
whose pid files are in that directory and whose command line names its ceph.conf, then removes
the directory.  Authentication is off (``auth ... required = none``): never expose it.

Python use::

    cluster = DevCeph("/tmp/x")
    cluster.start()            # returns when a pool is writable and the CephFS mounts
    cluster.conf_path          # hand this to librados / libcephfs
    cluster.stop()

The daemons are Debian's Ceph 16.2 binaries, daemonised (not children of this process), so a
cluster outlives the command that started it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

CONF_NAME = "ceph.conf"
FS_NAME = "cephfs"
FS_METADATA_POOL = "cephfs_metadata"
FS_DATA_POOL = "cephfs_data"
SESSION_TIMEOUT = 30   # seconds before the MDS declares a silent client stale (Ceph's minimum)
PROBE_POOL = "devceph"          # small pool the start-up probe writes to; free for scratch use
DAEMONS = ("mon.a", "osd.0", "mds.a", "mgr.x")
BINARIES = {"mon": "ceph-mon", "osd": "ceph-osd", "mds": "ceph-mds", "mgr": "ceph-mgr"}

# Subsystems whose default log level is above 0 somewhere on the hot path; all set to 0/0
# (Ceph debug logging costs noticeable CPU on a 2-core machine).
_DEBUG_SUBSYSTEMS = (
    "ms", "mon", "paxos", "osd", "mgr", "mgrc", "mds", "mds_balancer", "mds_locker", "mds_log",
    "journaler", "client", "objecter", "rados", "monc", "auth", "bluestore", "filestore",
    "memstore", "objectcacher", "optracker", "context", "crush", "asok", "throttle", "finisher",
    "heartbeatmap", "perfcounter", "timer", "lockdep", "ms", "osdc", "objclass", "rocksdb",
)


class DevCephError(Exception):
    """The cluster could not be started (the message names the daemon and quotes its log)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str, lines: int = 25, wait: float = 1.0) -> str:
    """The last lines of a daemon's log.  A dying daemon's log thread may not have written its
    last words yet: wait (up to ``wait`` s) for an error-level (-1) line to appear."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            text = None
        if (text and " -1 " in text) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if text is None:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(empty log {path})"


class DevCeph:
    """A one-node cluster living in ``directory``.

    ``memstore_bytes`` is the capacity the OSD announces (memory is only used as data is
    written).  ``osd_max_write_size_mb`` / ``osd_max_object_size`` let tests lower the OSD's
    limits; None keeps Ceph's defaults (90 MB, 128 MiB).  ``auth="cephx"`` turns
    authentication on (keys in DIR/keyring and the daemons' data directories), to test
    clients with restricted capabilities (``add_client``).
    """

    def __init__(self, directory: str, *, memstore_bytes: int = 4 << 30,
                 osd_max_write_size_mb: int | None = None, osd_max_object_size: int | None = None,
                 auth: str = "none", log=None):
        self.directory = os.path.abspath(directory)
        self.conf_path = os.path.join(self.directory, CONF_NAME)
        self.memstore_bytes = memstore_bytes
        self.osd_max_write_size_mb = osd_max_write_size_mb
        self.osd_max_object_size = osd_max_object_size
        if auth not in ("none", "cephx"):
            raise ValueError("auth must be 'none' or 'cephx'")
        self.auth = auth
        self.keyring = os.path.join(self.directory, "keyring")    # client.admin (and clients added)
        self.fs_name = FS_NAME
        self.probe_pool = PROBE_POOL
        self.mon_port: int | None = None
        self._log = log or (lambda msg: None)

    # --- paths ---------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    def pid_file(self, daemon: str) -> str:
        return self._path("run", f"{daemon}.pid")

    def log_file(self, daemon: str) -> str:
        return self._path("log", f"{daemon}.log")

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # --- daemons -------------------------------------------------------------------------------

    def pid(self, daemon: str) -> int | None:
        """The pid of one of this cluster's daemons (``"osd.0"``...) if it is running, else None.
        A pid is only believed if that process's command line names this cluster's ceph.conf
        (pids are reused)."""
        try:
            with open(self.pid_file(daemon)) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            return None
        if self.conf_path.encode() not in argv:
            return None
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":   # zombie: exited, not reaped
                    return None
        except OSError:
            return None
        return pid

    def pids(self) -> dict[str, int]:
        """Running daemons of this cluster, by name."""
        out = {}
        for daemon in DAEMONS:
            pid = self.pid(daemon)
            if pid is not None:
                out[daemon] = pid
        return out

    def signal_daemon(self, daemon: str, sig: int) -> None:
        """Send a signal to one of this cluster's daemons (tests: SIGSTOP/SIGCONT the OSD)."""
        pid = self.pid(daemon)
        if pid is None:
            raise DevCephError(f"{daemon} is not running in {self.directory}")
        os.kill(pid, sig)

    def _run(self, argv: list[str], what: str, timeout: float = 60) -> str:
        try:
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=timeout)
        except FileNotFoundError:
            raise DevCephError(f"{argv[0]} not found: install Debian's Ceph packages "
                               "(scripts/install --test)") from None
        except subprocess.TimeoutExpired:
            raise DevCephError(f"{what}: {argv[0]} did not finish in {timeout} s") from None
        out = p.stdout.decode("utf-8", "replace")
        if p.returncode != 0:
            raise DevCephError(f"{what} failed (exit {p.returncode}): {' '.join(argv)}\n{out.strip()}")
        return out

    def _start_daemon(self, daemon: str) -> None:
        kind, ident = daemon.split(".", 1)
        argv = [BINARIES[kind], "-c", self.conf_path, "-i", ident]
        t = time.monotonic()
        try:
            self._run(argv, f"starting {daemon}", timeout=60)
        except DevCephError as e:
            raise DevCephError(f"{e}\n--- tail of {self.log_file(daemon)} ---\n"
                               f"{_tail(self.log_file(daemon))}") from None
        # Daemonised: the launcher has exited; the daemon writes its pid file once running.
        deadline = time.monotonic() + 15
        while self.pid(daemon) is None:
            if time.monotonic() > deadline:
                raise DevCephError(f"{daemon} did not stay up (no live pid in {self.pid_file(daemon)})\n"
                                   f"--- tail of {self.log_file(daemon)} ---\n{_tail(self.log_file(daemon))}")
            time.sleep(0.02)
        self._log(f"{daemon} started (pid {self.pid(daemon)}, {time.monotonic() - t:.2f} s)")

    def _check_alive(self, daemons) -> None:
        for daemon in daemons:
            if self.pid(daemon) is None:
                raise DevCephError(f"{daemon} died\n--- tail of {self.log_file(daemon)} ---\n"
                                   f"{_tail(self.log_file(daemon))}")

    # --- configuration -------------------------------------------------------------------------

    def _write_conf(self, fsid: str) -> None:
        d = self.directory
        debug = "\n".join(f"debug {s} = 0/0" for s in dict.fromkeys(_DEBUG_SUBSYSTEMS))
        limits = ""
        if self.osd_max_write_size_mb is not None:
            limits += f"osd max write size = {self.osd_max_write_size_mb}\n"
        if self.osd_max_object_size is not None:
            limits += f"osd max object size = {self.osd_max_object_size}\n"
        conf = f"""# Written by `mailserver dev-ceph` -- a throwaway test cluster.  Auth: {self.auth}.
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{self.mon_port}
public addr = 127.0.0.1
public network = 127.0.0.1/32
cluster addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
ms bind msgr1 = false
ms bind msgr2 = true
auth cluster required = {self.auth}
auth service required = {self.auth}
auth client required = {self.auth}
auth allow insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
mon warn on pool no redundancy = false
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
run dir = {d}/run
crash dir = {d}/crash
keyring = {self.keyring}
log to stderr = false
err to stderr = true
log to syslog = false
mon cluster log file = {d}/log/cluster.log
{limits}{debug}

[mon]
mon data = {d}/$name
keyring = {d}/$name/keyring
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
mon data avail warn = 1
mon data avail crit = 0

[osd]
osd data = {d}/$name
keyring = {d}/$name/keyring
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log

[mgr]
mgr data = {d}/$name
keyring = {d}/$name/keyring
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log

[mds]
mds data = {d}/$name
keyring = {d}/$name/keyring
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log

[client]
log file = /dev/null
"""
        with open(self.conf_path, "w") as f:
            f.write(conf)

    # --- start / stop --------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Create and start the cluster; return when a pool is writable and the CephFS mounts.
        A stale directory (crashed run) is cleaned up first.  Raises DevCephError naming the
        daemon that failed, with the tail of its log; daemons already started are stopped."""
        for binary in ("monmaptool", *BINARIES.values()):
            if shutil.which(binary) is None:
                raise DevCephError(f"{binary} not found: install Debian's Ceph packages "
                                   "(ceph-mon ceph-osd ceph-mgr ceph-mds ceph-common; scripts/install --test)")
        try:
            import rados  # noqa: F401
            import cephfs  # noqa: F401
        except ImportError as e:
            raise DevCephError(f"Ceph Python bindings missing ({e}): install python3-rados python3-cephfs "
                               "and run scripts/install --test to link them into .venv") from None
        if os.path.exists(self.directory):
            self._log(f"removing stale {self.directory}")
            self.stop()
        try:
            self._start(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, deadline: float) -> None:
        t0 = time.monotonic()
        for sub in ("run", "log", "crash", "mon.a", "osd.0", "mgr.x", "mds.a"):
            os.makedirs(self._path(sub), exist_ok=True)
        fsid = str(uuid.uuid4())
        self.mon_port = _free_port()
        self._write_conf(fsid)
        monmap = self._path("monmap")
        self._run(["monmaptool", "--create", "--clobber", "--fsid", fsid,
                   "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]", monmap], "monmaptool")
        mkfs = ["ceph-mon", "-c", self.conf_path, "--mkfs", "-i", "a", "--monmap", monmap]
        if self.auth == "cephx":
            self._make_initial_keys()
            mkfs += ["--keyring", self._path("mon-initial.keyring")]
        self._run(mkfs, "ceph-mon --mkfs")
        self._start_daemon("mon.a")

        import rados
        cluster = rados.Rados(conffile=self.conf_path, conf={"client_mount_timeout": "15",
                                                             "rados_mon_op_timeout": "15",
                                                             "rados_osd_op_timeout": "15"})
        try:
            cluster.connect(timeout=15)
        except rados.Error as e:
            raise DevCephError(f"cannot connect to the new monitor: {e}\n--- tail of mon.a log ---\n"
                               f"{_tail(self.log_file('mon.a'))}") from None
        try:
            osd_uuid = str(uuid.uuid4())
            out = self._mon(cluster, {"prefix": "osd new", "uuid": osd_uuid})
            if out.strip() != b"0":
                raise DevCephError(f"osd new returned id {out!r}, expected 0")
            if self.auth == "cephx":        # the OSD's key must exist before its mkfs asks the mon
                osd_keyring = self._path("osd.0", "keyring")
                self._run(["ceph-authtool", "--create-keyring", osd_keyring, "--gen-key", "-n", "osd.0"],
                          "ceph-authtool (osd.0)")
                with open(osd_keyring, "rb") as f:
                    self._mon_in(cluster, {"prefix": "auth add", "entity": "osd.0",
                                           "caps": ["mon", "allow profile osd", "mgr", "allow profile osd",
                                                    "osd", "allow *"]}, f.read())
            self._run(["ceph-osd", "-c", self.conf_path, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid],
                      "ceph-osd --mkfs")
            if self.auth == "cephx":
                self._daemon_key(cluster, "mgr.x", ["mon", "allow profile mgr", "osd", "allow *",
                                                    "mds", "allow *"])
                self._daemon_key(cluster, "mds.a", ["mon", "allow profile mds", "osd", "allow rwx",
                                                    "mds", "allow", "mgr", "allow profile mds"])
            self._start_daemon("osd.0")
            self._start_daemon("mgr.x")   # not needed for I/O; it comes up while we go on
            for pool, pg in ((PROBE_POOL, 8), (FS_METADATA_POOL, 8), (FS_DATA_POOL, 8)):
                self._mon(cluster, {"prefix": "osd pool create", "pool": pool, "pg_num": pg})
            self._mon(cluster, {"prefix": "osd pool application enable", "pool": PROBE_POOL,
                                "app": "rados"})
            self._mon(cluster, {"prefix": "fs new", "fs_name": FS_NAME, "metadata": FS_METADATA_POOL,
                                "data": FS_DATA_POOL})
            # A client killed without unmounting holds its flocks until the MDS times its session
            # out (60 s by default): crash tests restart servers, so keep that short here.
            self._mon(cluster, {"prefix": "fs set", "fs_name": FS_NAME, "var": "session_timeout",
                                "val": str(SESSION_TIMEOUT)})
            self._start_daemon("mds.a")
            self._wait_writable(cluster, deadline)
            self._log(f"pool writable after {time.monotonic() - t0:.1f} s")
            self._wait_mds_active(cluster, deadline)
        finally:
            cluster.shutdown()
        self._wait_mountable(deadline)
        self._log(f"cluster ready after {time.monotonic() - t0:.1f} s")

    def _make_initial_keys(self) -> None:
        """cephx: the mon. key and client.admin's, in the keyring the monitor is created with."""
        initial = self._path("mon-initial.keyring")
        self._run(["ceph-authtool", "--create-keyring", initial, "--gen-key", "-n", "mon.",
                   "--cap", "mon", "allow *"], "ceph-authtool (mon.)")
        self._run(["ceph-authtool", "--create-keyring", self.keyring, "--gen-key", "-n", "client.admin",
                   "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mds", "allow *",
                   "--cap", "mgr", "allow *"], "ceph-authtool (client.admin)")
        self._run(["ceph-authtool", initial, "--import-keyring", self.keyring], "ceph-authtool (import)")

    def _daemon_key(self, cluster, entity: str, caps: list[str]) -> None:
        keyring = self._mon(cluster, {"prefix": "auth get-or-create", "entity": entity, "caps": caps})
        with open(self._path(entity, "keyring"), "wb") as f:
            f.write(keyring)

    def add_client(self, name: str, caps: list[str]) -> None:
        """cephx: create ``client.NAME``-style entity ``name`` with ``caps`` (``["mon", "allow r",
        "osd", "allow rw pool=x"]``) and append its key to DIR/keyring, which ceph.conf names."""
        import rados
        cluster = rados.Rados(conffile=self.conf_path)
        cluster.connect(timeout=15)
        try:
            keyring = self._mon(cluster, {"prefix": "auth get-or-create", "entity": name, "caps": caps})
        finally:
            cluster.shutdown()
        with open(self.keyring, "ab") as f:
            f.write(b"\n" + keyring)

    def _mon_in(self, cluster, cmd: dict, inbuf: bytes) -> bytes:
        ret, out, err = cluster.mon_command(json.dumps(cmd), inbuf, timeout=15)
        if ret != 0:
            raise DevCephError(f"ceph {cmd['prefix']} failed: {err} ({ret})")
        return out

    def _mon(self, cluster, cmd: dict) -> bytes:
        ret, out, err = cluster.mon_command(json.dumps(cmd), b"", timeout=15)
        if ret != 0:
            raise DevCephError(f"ceph {cmd['prefix']} failed: {err} ({ret})")
        return out

    def _wait_writable(self, cluster, deadline: float) -> None:
        import rados
        ioctx = cluster.open_ioctx(PROBE_POOL)
        try:
            while True:
                self._check_alive(("mon.a", "osd.0"))
                try:
                    ioctx.write_full("devceph-probe", b"probe")
                    ioctx.remove_object("devceph-probe")
                    return
                except rados.Error as e:
                    if time.monotonic() > deadline:
                        raise DevCephError(f"pool {PROBE_POOL} not writable: {e}\n"
                                           f"--- tail of osd.0 log ---\n{_tail(self.log_file('osd.0'))}") from None
                    time.sleep(0.1)
        finally:
            ioctx.close()

    def _wait_mds_active(self, cluster, deadline: float) -> None:
        while True:
            self._check_alive(("mon.a", "osd.0", "mds.a"))
            dump = json.loads(self._mon(cluster, {"prefix": "fs dump", "format": "json"}))
            for fs in dump.get("filesystems", []):
                if fs["mdsmap"]["fs_name"] == FS_NAME and any(
                        info.get("state") == "up:active" for info in fs["mdsmap"]["info"].values()):
                    return
            if time.monotonic() > deadline:
                raise DevCephError("no active MDS\n--- tail of mds.a log ---\n" + _tail(self.log_file("mds.a")))
            time.sleep(0.1)

    def _wait_mountable(self, deadline: float) -> None:
        import cephfs
        while True:
            fs = cephfs.LibCephFS(conffile=self.conf_path)
            try:
                fs.conf_set("client_mount_timeout", "10")
                fs.mount(filesystem_name=FS_NAME)
                fs.stat("/")
                fs.unmount()
                return
            except cephfs.Error as e:
                if time.monotonic() > deadline:
                    raise DevCephError(f"CephFS {FS_NAME} not mountable: {e}") from None
                time.sleep(0.2)
            finally:
                fs.shutdown()

    def stop(self, timeout: float = 20.0) -> None:
        """Kill this cluster's daemons (by their pid files, checked against /proc), wait for them
        to exit and remove the directory.  Safe on a half-started or already stopped cluster.

        SIGKILL, not SIGTERM: the data is thrown away anyway, and a terminated OSD or MDS waits
        seconds for a monitor that may already be gone."""
        pids = self.pids()
        for daemon, pid in pids.items():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while pids:
            pids = {d: p for d, p in pids.items() if _alive(p)}
            if pids and time.monotonic() > deadline:
                raise DevCephError(f"daemons did not exit after SIGKILL: {pids}")
            time.sleep(0.02)
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- status --------------------------------------------------------------------------------

    def status(self) -> dict:
        """``{"daemons": {name: pid or None}, "health": "HEALTH_OK"|... or None, "ceph_s": text}``."""
        daemons = {d: self.pid(d) for d in DAEMONS}
        health, text = None, ""
        if daemons["mon.a"] is not None:
            try:
                p = subprocess.run(["ceph", "-c", self.conf_path, "--connect-timeout", "5", "-s",
                                    "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, timeout=20)
                if p.returncode == 0:
                    s = json.loads(p.stdout)
                    health = s["health"]["status"]
                    text = subprocess.run(["ceph", "-c", self.conf_path, "--connect-timeout", "5", "-s"],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, timeout=20).stdout.decode()
                else:
                    text = p.stderr.decode("utf-8", "replace")
            except (OSError, subprocess.TimeoutExpired, ValueError, KeyError) as e:
                text = f"ceph -s failed: {e}"
        return {"daemons": daemons, "health": health, "ceph_s": text}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main(action: str, directory: str) -> int:
    """``mailserver dev-ceph start|stop|status --dir DIR``."""
    cluster = DevCeph(directory, log=lambda msg: print(f"dev-ceph: {msg}", file=sys.stderr))
    if action == "start":
        t = time.monotonic()
        try:
            cluster.start()
        except DevCephError as e:
            print(f"dev-ceph: start failed: {e}", file=sys.stderr)
            return 1
        print(f"dev-ceph: ready in {time.monotonic() - t:.1f} s (auth none, 127.0.0.1 only)", file=sys.stderr)
        print(cluster.conf_path)
        return 0
    if action == "stop":
        if not os.path.exists(cluster.directory):
            print(f"dev-ceph: nothing at {cluster.directory}", file=sys.stderr)
            return 0
        cluster.stop()
        return 0
    if action == "status":
        if not os.path.exists(cluster.conf_path):
            print(f"dev-ceph: no cluster at {cluster.directory}")
            return 1
        st = cluster.status()
        for daemon, pid in st["daemons"].items():
            print(f"{daemon}: {'running, pid %d' % pid if pid else 'NOT running'}")
        print(f"health: {st['health'] or 'unknown'}")
        if st["ceph_s"]:
            print(st["ceph_s"].rstrip())
        return 0 if all(st["daemons"].values()) and st["health"] is not None else 1
    print(f"dev-ceph: unknown action {action!r}", file=sys.stderr)
    return 2
