"""Fixtures shared by every test package."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ceph.fixtures import ceph_cluster
from tests.strato_process import Api, StratoServer, qemu_reachable_dir

__all__ = ["ceph_cluster"]  # one real Ceph cluster per session, started only for the tests that ask


@pytest.fixture(scope="session")
def strato_server() -> Iterator[StratoServer]:
    root = qemu_reachable_dir("tests")
    server = StratoServer(root / "data")
    try:
        server.cli("users", "create", "alice@example.com", "--password", "alice-pw")
        server.cli("users", "create", "bob@example.com", "--password", "bob-pw")
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def alice(strato_server: StratoServer) -> Api:
    return Api(strato_server.base, ("alice@example.com", "alice-pw"))


@pytest.fixture(scope="session")
def bob(strato_server: StratoServer) -> Api:
    return Api(strato_server.base, ("bob@example.com", "bob-pw"))


@pytest.fixture(scope="session")
def anonymous(strato_server: StratoServer) -> Api:
    return Api(strato_server.base, None)


def pytest_configure(config: pytest.Config) -> None:
    Path(config.rootpath, "build").mkdir(exist_ok=True)
