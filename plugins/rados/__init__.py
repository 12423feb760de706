"""RADOS object store: one immutable object per mail, a namespace per user (``store.py``).
Entry point ``rados`` in ``mailserver.object_stores``; configuration section ``[rados]``;
see docs/ceph.md."""
