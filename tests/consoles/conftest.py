"""One API node with a running test guest per module, for the console tests (and bench/vnc.py).

The node's data directory is under /var/tmp and world-traversable: QEMU runs as libvirt-qemu and
opens the drives and sockets there.  Tunnel ports come from a range of their own, so a closed
tunnel's port is not taken by another node running on this machine at the same time.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.strato_process import ROOT, Api, StratoServer, serial_log, upload, wait_for

GUEST_IMAGE = ROOT / "build" / "guest" / "strato-guest.img"
MiB = 2**20
VNC_PASSWORD = "Vnc-pw-1234"          # longer than 8: RFB uses the first 8 characters
TOKEN_TTL = 10.0                      # seconds; short so the expiry test can wait it out



@dataclass
class Guest:
    node: StratoServer
    api: Api            # the owner
    other: Api          # another user
    uuid: str
    root: Path

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

    def domain(self) -> str:
        return f"{self.node.prefix}{self.uuid}"

    def serial_log(self) -> str:
        return serial_log(self.domain())

    def direct_vnc(self) -> tuple[str, int]:
        """The guest's own VNC display on this host (``virsh domdisplay``), bypassing Strato."""
        out = subprocess.run(["virsh", "domdisplay", self.domain()], capture_output=True, text=True, check=True)
        netloc = out.stdout.strip().removeprefix("vnc://")
        host, _, port = netloc.rpartition(":")
        return host.strip("[]"), 5900 + int(port)


def wait_host_up(node: StratoServer, timeout: float = 60) -> None:
    def states() -> list[str]:
        con = sqlite3.connect(node.data_dir / "strato.db", timeout=30)
        try:
            return [row[0] for row in con.execute("SELECT state FROM hosts")]
        finally:
            con.close()

    wait_for(lambda: "up" in states(), timeout, f"the local host up; see {node.log}", 0.2)


def guest_node(extra_env: dict[str, str] | None = None) -> Iterator[Guest]:
    """An API node, two users and one running (freshly booted) test guest owned by the first."""
    if not GUEST_IMAGE.exists():
        pytest.skip("build the test guest first: tests/guest/build-image.sh")
    root = Path(tempfile.mkdtemp(prefix="strato-consoles-", dir="/var/tmp"))
    root.chmod(0o755)
    base = random.randrange(30000, 45000, 100)
    env = {"STRATO_TUNNEL_PORTS": f"{base}-{base + 99}", "STRATO_CONSOLE_TOKEN_TTL": str(TOKEN_TTL),
           **(extra_env or {})}
    node = StratoServer(root / "data", extra_env=env)
    try:
        node.data_dir.mkdir()
        node.data_dir.chmod(0o755)
        api = node.add_user("owner@example.com", "owner-pw")
        other = node.add_user("other@example.com", "other-pw")
        node.start()
        wait_host_up(node)
        image = upload(api, "strato-guest.img", GUEST_IMAGE.read_bytes())
        body = {"name": "console-guest", "cpu": 1000, "mem": 128 * MiB, "vnc_password": VNC_PASSWORD,
                "drives": [{"drive": image, "device": "virtio", "dev_channel": "0:0", "boot_order": 1}]}
        uuid = api.ok("POST", "servers/", {"objects": [body]}, 201)["objects"][0]["uuid"]
        guest = Guest(node, api, other, uuid, root)
        try:
            guest.start()
            wait_for(lambda: "STRATO-READY" in guest.serial_log(), 120, "STRATO-READY in the serial log", 0.2)
        except AssertionError as err:
            raise AssertionError(f"{err}; server {api.get(f'servers/{uuid}/').text}; "
                                 f"log: {node.log.read_text()[-3000:]}") from None
        yield guest
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    yield from guest_node()
