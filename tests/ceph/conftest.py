from tests.ceph.fixtures import ceph_cluster

__all__ = ["ceph_cluster"]
