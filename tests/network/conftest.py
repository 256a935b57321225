"""Two real hosts (tests/hosts/harness.py) for the networking tests, reached by the API node over SSH.

Each host is its own network namespace (with its own libvirtd, virtlogd and sshd), its agent's
VXLAN endpoint is the host's address on the harness's bridge (``--vxlan-local``), so a VLAN that
spans both hosts crosses a real VXLAN link between two network namespaces.  The NAT public network
is made by each host's own libvirtd inside that host's namespace: its bridge, DHCP server and
guests' traffic never leave it.  Drives live in the shared pool so a server can start on either
host.  The operator's setup (a NAT public network, a granted IP, three VLANs, two users) is made
with the ``strato`` command line while the API node starts and its agents connect.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.hosts.conftest import Cloud
from tests.hosts.harness import Host, make_hosts
from tests.strato_process import Api, StratoServer, wait_for

SUBNET, GATEWAY, RANGE = "10.231.77.0/24", "10.231.77.1", ("10.231.77.100", "10.231.77.120")
STATIC_IP = "10.231.77.10"


@dataclass
class NetCluster(Cloud):
    """The API node and its hosts (``api`` is alice's); where a guest runs is asked of each host's libvirtd."""

    bob: Api
    vlans: list[str] = field(default_factory=list)  # alice's VLANs (2), then bob's (1)

    @property
    def alice(self) -> Api:
        return self.api

    def host_of(self, uuid: str) -> Host:
        """The one host whose own libvirtd runs the domain (waits for it to be running there)."""
        found = wait_for(lambda: (h := self.running_on(uuid)) and len(h) == 1 and h, 120, f"{uuid} running")
        return self.host(found[0])

    def inside(self, host: Host, *argv: str) -> str:
        """A command's output, run in the host's namespaces (what an operator on that host would see)."""
        return subprocess.run(host.inside(*argv), check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="package")
def net() -> Iterator[NetCluster]:
    hosts = make_hosts(2)
    data = Path(hosts.root) / "api"
    server = StratoServer(data, extra_env={
        "STRATO_LOCAL_HOST": "false", "STRATO_HEARTBEAT": "1", "STRATO_SHUTDOWN_WINDOW": "5",
        "STRATO_CPU_OVERCOMMIT": "8", "STRATO_STORAGE_POOLS": json.dumps({"zadara": "shared"})})
    try:
        data.mkdir()
        hosts.register(server.cli, lambda host: f"--vxlan-local {host.address}")
        server.start()  # first: its agents connect over SSH while the operator's commands below run
        alice = server.add_user("alice@example.com", "alice-pw")
        bob = server.add_user("bob@example.com", "bob-pw")
        server.cli("networks", "add", "public", "--subnet", SUBNET, "--gateway", GATEWAY,
                   "--range", "-".join(RANGE), "--nameserver", GATEWAY)
        server.cli("ips", "assign", STATIC_IP, "alice@example.com")
        vlans = [v["uuid"] for v in json.loads(server.cli("vlans", "add", "--count", "3"))]
        for uuid, email in zip(vlans, ("alice@example.com", "alice@example.com", "bob@example.com"), strict=True):
            server.cli("vlans", "assign", uuid, email)
        # Both up before any guest starts: a VLAN's VXLAN peers are the hosts up when it is made.
        server.wait_host_up(90, count=2)
        cluster = NetCluster(hosts, server, alice, bob, vlans)
        yield cluster
    finally:
        server.stop()
        hosts.close()  # every process, namespace (with its bridges and VXLAN devices), directory (the API's too)
