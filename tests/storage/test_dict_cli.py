"""`mailserver dict get|set|unset|inc|iter` as a subprocess, on both dictionary drivers."""

from __future__ import annotations

import subprocess
import sys

from tests.storage.dict_support import write_config
from tests.storage.test_dict import driver, sections  # noqa: F401  (fixtures)


def dict_cli(conf: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``mailserver dict ARGS --config CONF``."""
    return subprocess.run([sys.executable, "-m", "mailserver", "dict", *args, "--config", conf],
                          capture_output=True, text=True, timeout=60)


def test_set_get_inc_iter_unset(sections, tmp_path):
    conf = write_config(tmp_path / "m.toml", sections)
    assert dict_cli(conf, "set", "Ann", "priv/m/a", "hello wörld").returncode == 0
    assert dict_cli(conf, "set", "ann", "priv/m/sub/b", "deep").returncode == 0
    for amount in ("5", "-8"):
        done = dict_cli(conf, "inc", "ann", "priv/m/n", amount)
        assert done.returncode == 0 and done.stdout == "", done.stderr
    got = dict_cli(conf, "get", "ANN", "priv/m/a")       # the login's username rule: same user
    assert (got.returncode, got.stdout) == (0, "hello wörld\n"), got.stderr
    assert dict_cli(conf, "get", "ann", "priv/m/n").stdout == "-3\n"
    flat = dict_cli(conf, "iter", "ann", "priv/m/")
    assert (flat.returncode, flat.stdout) == (0, "priv/m/a\thello wörld\npriv/m/n\t-3\n")
    deep = dict_cli(conf, "iter", "--recursive", "ann", "priv/m/")
    assert deep.stdout == "priv/m/a\thello wörld\npriv/m/n\t-3\npriv/m/sub/b\tdeep\n"
    assert dict_cli(conf, "iter", "bob", "priv/").stdout == ""     # another user's space is empty
    assert dict_cli(conf, "unset", "ann", "priv/m/a").returncode == 0
    missing = dict_cli(conf, "get", "ann", "priv/m/a")
    assert missing.returncode == 1 and missing.stdout == "" and "not set" in missing.stderr


def test_bad_keys_and_counters_exit_nonzero_with_one_line(sections, tmp_path):
    conf = write_config(tmp_path / "m.toml", sections)
    for args in (["set", "ann", "public/x", "v"], ["get", "ann", "priv/x/"], ["inc", "ann", "priv//n", "1"],
                 ["iter", "ann", "priv/x"], ["unset", "ann", "x"]):
        bad = dict_cli(conf, *args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert bad.stderr.count("\n") == 1 and bad.stderr.startswith(f"mailserver dict {args[0]}: invalid: ")
    assert dict_cli(conf, "set", "ann", "priv/word", "text").returncode == 0
    notcounter = dict_cli(conf, "inc", "ann", "priv/word", "1")
    assert notcounter.returncode == 2 and "not a counter" in notcounter.stderr
    assert dict_cli(conf, "iter", "--recursive", "ann", "priv/").stdout == "priv/word\ttext\n"
    usage = dict_cli(conf, "inc", "ann", "priv/n", "one")
    assert usage.returncode == 2 and "invalid int value" in usage.stderr
