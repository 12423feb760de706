"""The admin subcommands of the `mailserver` CLI on the embedded default."""

import json
import shutil
import subprocess
import sys

import pytest_twisted

from tests.storage.test_rbox_storage import mail, make_storage, save


def cli(tmp_path, *args):
    conf = tmp_path / "m.toml"
    conf.write_text(f'[server]\nstate_dir = "{tmp_path}"\n')
    return subprocess.run([sys.executable, "-m", "mailserver", *args, "--config", str(conf)],
                          capture_output=True, timeout=60)


@pytest_twisted.ensureDeferred
async def test_ls_get_resync_gc(tmp_path):
    st = make_storage(tmp_path)
    await st.start()
    user = await st.open_user("lee")
    await save(user, "INBOX", mail(1), mail(2))
    box = await user.open_mailbox("INBOX")
    oid = box.info(2).oid
    await box.close()
    await st.stop()

    ls = cli(tmp_path, "rbox", "ls", "lee")
    assert ls.returncode == 0, ls.stderr
    lines = ls.stdout.decode().splitlines()
    assert len(lines) == 2 and any(line.startswith(oid) and "B=INBOX" in line for line in lines)
    get = cli(tmp_path, "rbox", "get", "lee", oid)
    assert get.returncode == 0 and get.stdout == mail(2)
    missing = cli(tmp_path, "rbox", "get", "lee", "0" * 32)
    assert missing.returncode == 1 and b"not_found" in missing.stderr

    shutil.rmtree(tmp_path / "index")
    resync = cli(tmp_path, "force-resync", "lee")
    assert resync.returncode == 0, resync.stderr
    report = json.loads(resync.stdout)
    assert "INBOX" in report["restored_from_checkpoint"] and report["linked"] == 0
    gc = cli(tmp_path, "rbox", "gc", "--dry-run")
    assert gc.returncode == 0 and json.loads(gc.stdout)["removed"] == 0

    st2 = make_storage(tmp_path)
    await st2.start()
    box2 = await (await st2.open_user("lee")).open_mailbox("INBOX")
    assert list(box2.uids()) == [1, 2] and box2.info(2).oid == oid
