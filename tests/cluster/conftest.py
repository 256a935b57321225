"""Two API nodes (two ``strato serve`` processes) on one real PostgreSQL, sharing their data
directory (uploads in progress) and two libvirt hosts (agents on this machine, each with its own
libvirt name prefix): what an operator runs behind a load balancer.  Each node connects to each
host's agent itself; the host leases decide which one polls and reconciles."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.store.conftest import new_database, postgres_url  # noqa: F401  (a fixture: one PostgreSQL)
from tests.strato_process import ROOT, Api, StratoServer, free_port, qemu_reachable_dir, remove_libvirt_objects

GUEST = ROOT / "build" / "guest" / "strato-guest.img"
# A drive whose copy takes seconds (a 2 GiB disk), so that a node dies in the middle of cloning it.
BIG = ROOT / "build" / "guest" / "debian-12-cloud.qcow2"
EMAIL, PASSWORD = "dana@example.com", "dana-pw"
LEASE = 10.0  # seconds: the default lease
SLOT = 128 * 2**20  # a test server's memory
SLOTS = 5           # test servers a host has memory for (both hosts are this machine)


def mem_overcommit() -> float:
    """The overcommit that leaves each host memory for ``SLOTS`` test servers, no more."""
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        total = conn.getInfo()[1] * 2**20  # what the agents report as the host's memory
    finally:
        conn.close()
    return (SLOTS + 0.5) * SLOT / total


@dataclass
class ClusterNode:
    server: StratoServer
    tls_port: int

    @property
    def base(self) -> str:
        return self.server.base

    @property
    def api(self) -> Api:
        return Api(self.server.base, (EMAIL, PASSWORD))


@dataclass
class Cluster:
    nodes: list[ClusterNode]
    db: str
    root: Path
    host_prefixes: dict[str, str]
    library_disk: str
    big_disk: str  # the library's slowest drive to copy

    @property
    def cert(self) -> Path:
        return self.root / "data" / "tls" / "cert.pem"

    def node(self, i: int) -> ClusterNode:
        return self.nodes[i % len(self.nodes)]

    def sql(self, query: str, *args: Any) -> list[Any]:
        """Rows of a query on the cluster's database (what the nodes share)."""
        import asyncpg

        async def run() -> list[Any]:
            conn = await asyncpg.connect(self.db)
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()

        return asyncio.run(run())


def agent_command(prefix: str, root: Path) -> str:
    return (f"env PYTHONPATH={ROOT} {sys.executable} -m agents.cli --stdio --prefix {prefix} "
            f"--pool default={root / 'pool'} --virt-type qemu --console-log-dir {root / 'console'} "
            f"--socket-dir {root / 's'}")


@pytest.fixture(scope="package")
def cluster(postgres_url: str) -> Iterator[Cluster]:  # noqa: F811
    if not GUEST.exists():
        pytest.skip(f"{GUEST} is missing (tests/guest/build-image.sh builds it)")
    db = new_database(postgres_url, f"cluster{secrets.token_hex(3)}")
    root = qemu_reachable_dir("cluster")
    base = f"mn{secrets.token_hex(2)}-"
    prefixes = {f"h{i}": f"{base}h{i}-" for i in range(2)}
    env = {"STRATO_LOCAL_HOST": "false", "STRATO_HEARTBEAT": "1", "STRATO_SHUTDOWN_WINDOW": "5",
           "STRATO_MEM_OVERCOMMIT": f"{mem_overcommit():.6f}"}
    nodes: list[ClusterNode] = []
    try:
        for i in range(2):
            tls = free_port()
            nodes.append(ClusterNode(StratoServer(root / "data", db=db, extra_env={
                **env, "STRATO_TLS_LISTEN": f"127.0.0.1:{tls}", "STRATO_AGENT_PREFIX": f"{base}n{i}-"}), tls))
        first = nodes[0].server
        first.data_dir.mkdir(parents=True)
        first.data_dir.chmod(0o755)
        for name, prefix in prefixes.items():
            for sub in ("pool", "console", "s"):
                (root / name / sub).mkdir(parents=True)
            for p in (root / name, *(root / name).iterdir()):
                p.chmod(0o755)
            first.cli("hosts", "add", name, "--local", "--agent-command", agent_command(prefix, root / name))
        first.cli("users", "create", EMAIL, "--password", PASSWORD)
        first.cli("users", "create", "eve@example.com", "--password", "eve-pw")
        library = first.cli("libdrives", "import", str(GUEST), "--name", "Strato guest", "--os", "linux", "--arch",
                            "64", "--media", "disk", "--host", "h0")
        big = library if not BIG.exists() else first.cli(
            "libdrives", "import", str(BIG), "--name", "Debian", "--os", "linux", "--arch", "64", "--media", "disk",
            "--host", "h0")
        for node in nodes:
            node.server.start()
        yield Cluster(nodes, db, root, prefixes, library, big)
    finally:
        for node in nodes:
            node.server.stop()
        for prefix in prefixes.values():
            remove_libvirt_objects(prefix)
        if os.environ.get("STRATO_KEEP_TEST_DIR") is None:
            shutil.rmtree(root, ignore_errors=True)
