"""mailserver.devceph: a second cluster beside the session's, stale directories, failures."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mailserver.devceph import DAEMONS, DevCeph, DevCephError, _alive

pytestmark = pytest.mark.ceph


def test_second_cluster_coexists_restarts_over_stale_dir_and_stops_only_its_own(ceph_cluster, tmp_path):
    session_pids = ceph_cluster.pids()
    assert set(session_pids) == set(DAEMONS)
    other = DevCeph(str(tmp_path / "other"))
    try:
        other.start()
        assert other.mon_port != ceph_cluster.mon_port
        first = other.pids()
        assert set(first) == set(DAEMONS)
        # as after a crash of the process that started it: start again over the same directory
        restarted = DevCeph(str(tmp_path / "other"))
        restarted.start()
        assert not any(_alive(pid) for pid in first.values())
        assert set(restarted.pids()) == set(DAEMONS)
        st = restarted.status()
        assert st["health"] in ("HEALTH_OK", "HEALTH_WARN"), st
        import rados
        r = rados.Rados(conffile=restarted.conf_path)
        r.connect(timeout=10)
        try:
            with r.open_ioctx(restarted.probe_pool) as io:
                io.write_full("x", b"y")
                assert io.read("x") == b"y"
        finally:
            r.shutdown()
        restarted.stop()
        assert not os.path.exists(restarted.directory)
        assert not any(_alive(pid) for pid in first.values())
    finally:
        other.stop()
    assert ceph_cluster.pids() == session_pids          # the session's cluster was not touched


def test_failing_daemon_reported_with_its_log(tmp_path):
    import shutil

    class BrokenMon(DevCeph):
        def _start_daemon(self, daemon):
            if daemon == "mon.a":                  # as if its data had been lost
                shutil.rmtree(self._path("mon.a"))
            super()._start_daemon(daemon)
    cluster = BrokenMon(str(tmp_path / "broken"))
    with pytest.raises(DevCephError) as info:
        cluster.start()
    message = str(info.value)
    assert message.startswith("starting mon.a failed (exit ")
    tail = message.split(f"--- tail of {cluster.log_file('mon.a')} ---\n", 1)[1]
    assert "ceph-mon" in tail                     # the daemon's log lines (its wording is Ceph's)
    assert not os.path.exists(cluster.directory)


def test_cli_status_and_stop_of_missing_cluster(tmp_path):
    cmd = [sys.executable, "-m", "mailserver", "dev-ceph"]
    missing = str(tmp_path / "none")
    st = subprocess.run(cmd + ["status", "--dir", missing], capture_output=True, text=True, timeout=60)
    assert st.returncode == 1 and "no cluster" in st.stdout
    stop = subprocess.run(cmd + ["stop", "--dir", missing], capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0


def test_cli_status_of_running_cluster(ceph_cluster):
    st = subprocess.run([sys.executable, "-m", "mailserver", "dev-ceph", "status", "--dir", ceph_cluster.directory],
                        capture_output=True, text=True, timeout=60)
    assert st.returncode == 0, st.stdout + st.stderr
    for daemon in DAEMONS:
        assert f"{daemon}: running, pid {ceph_cluster.pid(daemon)}" in st.stdout
    assert "health: HEALTH_" in st.stdout
