"""The storage a transcript test (one that builds its own server context) runs on.

Set by the ``transcript_backend`` fixture (tests/conftest.py): empty overrides for the embedded
default, RADOS + CephFS settings for the throwaway Ceph cluster.  Context builders merge
``overrides`` into their configuration and hand their storage to ``started`` so the fixture
stops it after the test (a Ceph client left connected keeps the interpreter from exiting).
"""

from __future__ import annotations

overrides: dict = {}
created: list = []


def merged(config_overrides: dict) -> dict:
    """``config_overrides`` with the backend's settings added.  On Ceph, each state directory
    gets its own CephFS root and RADOS namespaces, so two contexts on different directories
    are as separate as on local disk and two on the same directory share their storage."""
    out = {name: dict(values) for name, values in config_overrides.items()}
    for name, values in overrides.items():
        out.setdefault(name, {}).update(values)
    if "cephfs" in overrides:
        import hashlib
        tag = hashlib.sha1(str(out.get("server", {}).get("state_dir", "")).encode()).hexdigest()[:10]
        out["cephfs"]["root"] = f"{overrides['cephfs']['root']}/{tag}"
        out["rbox"]["namespace_suffix"] = f"_{tag}"
    return out


def started(storage):
    created.append(storage)
    return storage
