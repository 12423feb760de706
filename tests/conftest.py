pytest_plugins = ["tests.ceph_cluster"]
