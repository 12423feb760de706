"""Building a dictionary of either driver for tests, and the configuration file a child
process (tests/storage/dict_incrementer.py, the ``mailserver dict`` CLI) reads to reach the
same dictionary."""

from __future__ import annotations

import json

DRIVERS = ["local", "rados"]
POOL = "dicttest"


def overrides(driver: str, state_dir: str, tag: str, ceph_conf: str | None) -> dict:
    """Configuration sections for ``driver``: local files under ``state_dir``; or RADOS on the
    test cluster, with ``tag`` as namespace suffix so each test's users are its own."""
    out = {"server": {"state_dir": str(state_dir)}, "dict": {"driver": driver}}
    if driver == "rados":
        out["rados"] = {"ceph_conf": ceph_conf, "pool": POOL, "op_timeout": 5.0}
        out["rbox"] = {"namespace_suffix": f"_{tag}"}
    return out


def write_config(path, sections: dict) -> str:
    """``sections`` as a TOML file (JSON strings and numbers are TOML); its path."""
    with open(path, "w") as f:
        for name, values in sections.items():
            f.write(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()) + "\n")
    return str(path)
