"""Shared fixtures.  ``mail_server`` runs a real server process per backend for the session;
``account`` hands each test a user nobody else touched."""

import pytest

from tests.harness import RunningServer

pytest_plugins = ["tests.ceph_cluster"]

BACKENDS = ["local"]


@pytest.fixture(scope="session", params=BACKENDS)
def mail_server(request, tmp_path_factory):
    server = RunningServer(str(tmp_path_factory.mktemp(f"server-{request.param}")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def account(mail_server):
    return mail_server.new_user()
