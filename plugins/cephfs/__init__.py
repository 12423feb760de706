"""CephFS index store: the per-mailbox index files in a CephFS tree through libcephfs
(``store.py``).  Entry point ``cephfs`` in ``mailserver.index_stores``; configuration section
``[cephfs]``; see docs/ceph.md."""
