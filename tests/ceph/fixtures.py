"""The Ceph cluster fixture, registered for every test package by ``tests/conftest.py``: one cluster
per session, started by the first test that asks for ``ceph_cluster``, removed at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ceph.cluster import CephCluster, running_cluster

POOL = "strato"  # the Ceph pool the tests give Strato


@pytest.fixture(scope="session")
def ceph_cluster() -> Iterator[CephCluster]:
    with running_cluster((POOL,)) as cluster:
        yield cluster
