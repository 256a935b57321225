"""Three real hosts (tests/hosts/harness.py) and one API node for the orchestration tests.

Each host is its own network and mount namespace with its own libvirtd, virtlogd and sshd; the API
node reaches each only over SSH, at its address on the harness's bridge.  Every host has a local
pool (``default``) and the ``shared`` pool: the harness's one directory that every host sees at the
same path (as an NFS mount would be), which is what tells the scheduler the hosts share it.  Where
a server runs is asked of each host's own libvirtd (``Cloud.running_on``), never of Strato.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from tests.hosts.conftest import Cloud, MiB, cloud_on
from tests.hosts.harness import Host, make_hosts
from tests.strato_process import wait_for

SERVERS_PER_HOST = 6          # capacity the tests configure: 6 servers of SERVER_CPU MHz per host
SERVER_CPU = 1000
SHUTDOWN_WINDOW = 5


@dataclass
class Cluster(Cloud):
    cpu_capacity: float = 0.0   # MHz per host, after overcommit
    mem_capacity: float = 0.0   # bytes per host

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts.hosts]

    @property
    def shared_dir(self) -> Path:
        return Path(self.hosts.shared)

    def wait_hosts_up(self, timeout: float = 60) -> None:
        wait_for(lambda: all(h["state"] == "up" for h in self.hosts_list().values()), timeout, "hosts up")

    def host_of(self, uuid: str) -> str:
        """The one host whose libvirtd runs this server."""
        found = self.running_on(uuid)
        assert len(found) == 1, f"server {uuid} runs on {found}"
        return found[0]

    def domain(self, host: str, uuid: str) -> str:
        return self.host(host).prefix + uuid

    def console_log(self, uuid: str) -> Path:
        """The serial console log of a running server, on the host that runs it."""
        host = self.host(self.host_of(uuid))
        return host.console_log(host.prefix + uuid)

    def qemu_pid(self, host: str, uuid: str) -> str:
        """The QEMU pid the host's libvirtd keeps for the server (its private /run/libvirt)."""
        return (self.host(host).path / "run" / "qemu" / f"{self.domain(host, uuid)}.pid").read_text().strip()

    def running_counts(self) -> dict[str, int]:
        """{host: how many domains its libvirtd runs}."""
        counts = {}
        for host in self.hosts.hosts:
            conn = self._open(host)
            if conn is not None:
                try:
                    counts[host.name] = len(conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
                finally:
                    conn.close()
        return counts

    def volume_files(self, drive_uuid: str) -> list[Path]:
        """Where the drive's volume file is: host pool directories and the shared one."""
        dirs = [h.pool_dir for h in self.hosts.hosts] + [self.shared_dir]
        return [d / f"{drive_uuid}.qcow2" for d in dirs if (d / f"{drive_uuid}.qcow2").exists()]

    def host_of_volume(self, drive_uuid: str) -> str:
        names = [h.name for h in self.hosts.hosts if (h.pool_dir / f"{drive_uuid}.qcow2").exists()]
        assert len(names) == 1, f"volume of {drive_uuid} in {names}"
        return names[0]


def node_info(host: Host) -> tuple[int, int]:
    """(MHz of all its cores, bytes of memory) as the host's libvirtd reports them."""
    conn = libvirt.open(host.uri)
    try:
        _, mem_mib, cpus, mhz, *_ = conn.getInfo()
        return cpus * mhz, mem_mib * MiB
    finally:
        conn.close()


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    hosts = make_hosts(3)
    try:
        server_mhz, mem = node_info(hosts.hosts[0])  # the three are this machine's CPUs and memory
        # Room for SERVERS_PER_HOST servers (and a half) of SERVER_CPU MHz on each host.
        overcommit = (SERVERS_PER_HOST + 0.5) * SERVER_CPU / server_mhz
        with cloud_on(hosts, {"STRATO_CPU_OVERCOMMIT": json.dumps(overcommit),
                              "STRATO_SHUTDOWN_WINDOW": str(SHUTDOWN_WINDOW)}) as cloud:
            yield Cluster(cloud.hosts, cloud.server, cloud.api, overcommit * server_mhz, mem)
    finally:
        hosts.close()
