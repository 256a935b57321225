"""Two hosts on this machine for the networking tests, both local agents of one libvirtd.

Each agent has its own name prefix and pool, and a VXLAN endpoint on 127.0.0.1 with its own UDP
port (two VXLAN devices with one VNI coexist in a namespace only on different ports), so a VLAN
spanning both hosts really crosses a VXLAN link.  Drives live in a shared pool so a server can
start on either host.  The operator's setup (a NAT public network, a granted IP, three VLANs, two
users) is made with the ``strato`` command line before the API node starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.strato_process import ROOT, Api, StratoServer, remove_libvirt_objects

SUBNET, GATEWAY, RANGE = "10.231.77.0/24", "10.231.77.1", ("10.231.77.100", "10.231.77.120")
STATIC_IP = "10.231.77.10"


@dataclass
class NetHost:
    name: str
    prefix: str
    root: Path
    vxlan_port: int

    def agent_command(self, shared: Path) -> str:
        return (f"env PYTHONPATH={ROOT} {sys.executable} -m agents.cli --stdio --prefix {self.prefix} "
                f"--pool default={self.root / 'pool'} --pool shared={self.root / 'shared'} --virt-type qemu "
                f"--console-log-dir {self.root / 'console'} --socket-dir {self.root / 's'} "
                f"--vxlan-local 127.0.0.1 --vxlan-port {self.vxlan_port}")

    def console_log(self, uuid: str) -> Path:
        return self.root / "console" / f"{self.prefix}{uuid}.log"


@dataclass
class NetCluster:
    server: StratoServer
    hosts: dict[str, NetHost]
    alice: Api
    bob: Api
    vlans: list[str] = field(default_factory=list)  # alice's VLANs (2), then bob's (1)


def remove_networks(prefix: str) -> None:
    out = subprocess.run(["virsh", "-q", "net-list", "--all", "--name"], capture_output=True, text=True).stdout
    for name in (n for n in out.split() if n.startswith(prefix)):
        subprocess.run(["virsh", "-q", "net-destroy", name], capture_output=True)
        subprocess.run(["virsh", "-q", "net-undefine", name], capture_output=True)


def remove_vxlans(prefix_hosts: list[NetHost]) -> None:
    from agents.networks import _vxlan_dev  # the agent's own naming

    out = subprocess.run(["virsh", "-q", "net-list", "--all", "--name"], capture_output=True, text=True).stdout
    for name in out.split():
        if any(name.startswith(h.prefix) for h in prefix_hosts):
            subprocess.run(["ip", "link", "del", _vxlan_dev(name)], capture_output=True)


@pytest.fixture(scope="package")
def net() -> Iterator[NetCluster]:
    root = Path(tempfile.mkdtemp(prefix="strato-net-", dir="/var/tmp"))
    root.chmod(0o755)
    shared = root / "shared"
    shared.mkdir(mode=0o755)
    server = StratoServer(root / "data", extra_env={
        "STRATO_LOCAL_HOST": "false", "STRATO_HEARTBEAT": "1", "STRATO_SHUTDOWN_WINDOW": "5",
        "STRATO_CPU_OVERCOMMIT": "8", "STRATO_STORAGE_POOLS": json.dumps({"zadara": "shared"})})
    hosts: dict[str, NetHost] = {}
    try:
        for i in range(2):
            h = NetHost(f"h{i}", f"{server.prefix}h{i}-", root / f"h{i}", 47890 + (server.port % 500) * 2 + i)
            for sub in ("pool", "console", "s"):
                (h.root / sub).mkdir(parents=True)
            (h.root / "shared").symlink_to(shared)
            for p in (h.root, h.root / "pool", h.root / "console", h.root / "s"):
                p.chmod(0o755)
            hosts[h.name] = h
        server.data_dir.mkdir(parents=True)
        alice = server.add_user("alice@example.com", "alice-pw")
        bob = server.add_user("bob@example.com", "bob-pw")
        for h in hosts.values():
            server.cli("hosts", "add", h.name, "--local", "--agent-command", h.agent_command(shared))
        server.cli("networks", "add", "public", "--subnet", SUBNET, "--gateway", GATEWAY,
                   "--range", "-".join(RANGE), "--nameserver", GATEWAY)
        server.cli("ips", "assign", STATIC_IP, "alice@example.com")
        vlans = [v["uuid"] for v in json.loads(server.cli("vlans", "add", "--count", "3"))]
        for uuid, email in zip(vlans, ("alice@example.com", "alice@example.com", "bob@example.com"), strict=True):
            server.cli("vlans", "assign", uuid, email)
        server.start()
        yield NetCluster(server, hosts, alice, bob, vlans)
    finally:
        server.stop()
        for h in hosts.values():
            remove_libvirt_objects(h.prefix)
        remove_vxlans(list(hosts.values()))
        for h in hosts.values():
            remove_networks(h.prefix)
        if os.environ.get("STRATO_KEEP_TEST_DIR") is None:
            shutil.rmtree(root, ignore_errors=True)
