"""One API node with a running test guest per module, for the console tests (and bench/vnc.py).

The console tests' guest runs on a real host (tests/hosts/harness.py: its own network namespace,
libvirtd and sshd; one per package): the API node has no local host and reaches that host only
over SSH, so every VNC and serial console below goes through the node's SSH tunnels to it, and
the guest's VNC display listens on that host's loopback only.  ``guest_node()`` without hosts puts
the guest on the node's local host (this machine's libvirtd) instead (tests/context).

The node's data directory is under /var/tmp and world-traversable: QEMU runs as libvirt-qemu and
opens the drives and sockets there.  Tunnel ports come from a range of their own, so a closed
tunnel's port is not taken by another node running on this machine at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.consoles.rfb import TcpStream
from tests.hosts.conftest import cloud_on
from tests.hosts.harness import Host, Hosts, make_hosts
from tests.strato_process import ROOT, Api, StratoServer, serial_log, upload, wait_for

GUEST_IMAGE = ROOT / "build" / "guest" / "strato-guest.img"
MiB = 2**20
VNC_PASSWORD = "Vnc-pw-1234"          # longer than 8: RFB uses the first 8 characters
TOKEN_TTL = 10.0                      # seconds; short so the expiry test can wait it out
LOCAL_URI = "qemu:///system"
USERS = (("owner@example.com", "owner-pw"), ("other@example.com", "other-pw"))


@dataclass
class Guest:
    node: StratoServer
    api: Api            # the owner
    other: Api          # another user
    uuid: str
    host: Host | None   # the harness host that runs it; None: the node's local host (this machine's libvirtd)

    @property
    def origin(self) -> str:
        return self.node.base

    def status(self) -> str:
        return self.api.ok("GET", f"servers/{self.uuid}/")["status"]

    def action(self, do: str, api: Api | None = None) -> Any:
        return (api or self.api).post(f"servers/{self.uuid}/action/?do={do}")

    def open(self, do: str) -> dict[str, Any]:
        r = self.action(do)
        assert r.status_code == 202, f"{do}: {r.status_code} {r.text}"
        return r.json()

    def start(self) -> None:
        r = self.action("start")
        assert r.status_code == 202, r.text
        wait_for(lambda: self.status() == "running", 120, "running")

    def stop(self) -> None:
        r = self.action("stop")
        assert r.status_code == 202, r.text
        wait_for(lambda: self.status() == "stopped", 60, "stopped")

    @property
    def uri(self) -> str:
        """The libvirtd that runs the guest."""
        return self.host.uri if self.host else LOCAL_URI

    def domain(self) -> str:
        return f"{self.host.prefix if self.host else self.node.prefix}{self.uuid}"

    def serial_log(self) -> str:
        return serial_log(self.domain(), self.uri)

    def direct_vnc(self) -> tuple[str, int]:
        """The guest's own VNC display (``virsh domdisplay``), as its host sees it: bypassing Strato."""
        out = subprocess.run(["virsh", "-c", self.uri, "domdisplay", self.domain()], capture_output=True, text=True,
                             check=True)
        netloc = out.stdout.strip().removeprefix("vnc://")
        host, _, port = netloc.rpartition(":")
        return host.strip("[]"), 5900 + int(port)

    async def connect_direct_vnc(self) -> TcpStream:
        """A TCP connection to the guest's own VNC display, made from inside its host if it has one."""
        host, port = self.direct_vnc()
        if self.host is None:
            return await TcpStream.connect(host, port)
        return TcpStream(*await asyncio.open_connection(sock=self.host.connect_inside(host, port)))


def guest_node(extra_env: dict[str, str] | None = None, hosts: Hosts | None = None) -> Iterator[Guest]:
    """An API node, two users and one running (freshly booted) test guest owned by the first: on the first of
    ``hosts``, the node's only host, reached over SSH; without hosts, on the node's local host."""
    if not GUEST_IMAGE.exists():
        pytest.skip("build the test guest first: tests/guest/build-image.sh")
    base = random.randrange(30000, 45000, 100)
    env = {"STRATO_TUNNEL_PORTS": f"{base}-{base + 99}", "STRATO_CONSOLE_TOKEN_TTL": str(TOKEN_TTL),
           **(extra_env or {})}
    with contextlib.ExitStack() as stack:
        if hosts is not None:
            cloud = stack.enter_context(cloud_on(hosts, env, USERS))
            node, host = cloud.server, hosts.hosts[0]
        else:
            node, host = stack.enter_context(local_node(env)), None
        api, other = (Api(node.base, user) for user in USERS)
        image = upload(api, "strato-guest.img", GUEST_IMAGE.read_bytes())
        body = {"name": "console-guest", "cpu": 1000, "mem": 128 * MiB, "vnc_password": VNC_PASSWORD,
                "drives": [{"drive": image, "device": "virtio", "dev_channel": "0:0", "boot_order": 1}]}
        uuid = api.ok("POST", "servers/", {"objects": [body]}, 201)["objects"][0]["uuid"]
        guest = Guest(node, api, other, uuid, host)
        try:
            guest.start()
            wait_for(lambda: "STRATO-READY" in guest.serial_log(), 120, "STRATO-READY in the serial log", 0.2)
        except AssertionError as err:
            raise AssertionError(f"{err}; server {api.get(f'servers/{uuid}/').text}; "
                                 f"log: {node.log.read_text()[-3000:]}") from None
        yield guest


@contextlib.contextmanager
def local_node(env: dict[str, str]) -> Iterator[StratoServer]:
    """An API node whose one host is its local host (this machine's libvirtd), with the USERS."""
    root = Path(tempfile.mkdtemp(prefix="strato-consoles-", dir="/var/tmp"))
    root.chmod(0o755)
    node = StratoServer(root / "data", extra_env=env)
    try:
        node.data_dir.mkdir()
        node.data_dir.chmod(0o755)
        for email, password in USERS:
            node.add_user(email, password)
        node.start()
        node.wait_host_up()
        yield node
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
def hosts() -> Iterator[Hosts]:
    """One real host for the package's guests (each module's API node adds it afresh)."""
    made = make_hosts(1)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def guest(hosts: Hosts) -> Iterator[Guest]:
    yield from guest_node(hosts=hosts)
