"""A real Debian 12 cloud image on Strato, configured by real cloud-init from the server context.

The everyday workflow of a cloud: a user clones the library's Debian drive, creates a server
with their SSH key, a name and user data, starts it, and it comes up configured.  What the
guest did is read from its first serial port (cloud-init and getty write there), never from its
network.  One boot for the module: under software emulation it takes about a minute.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.strato_process import ROOT, Api, StratoServer, serial_log, wait_for

pytestmark = pytest.mark.libvirt

IMAGE = ROOT / "build" / "guest" / "debian-12-cloud.qcow2"
MARKER = "STRATO-USERDATA-OK"
USER_DATA = f"#cloud-config\nruncmd:\n - echo {MARKER} > /dev/ttyS0\n"
NAME = "web-1"


@dataclass
class Booted:
    node: StratoServer
    api: Api
    server: dict
    key: dict

    def serial_log(self) -> str:
        return serial_log(f"{self.node.prefix}{self.server['uuid']}")


@pytest.fixture(scope="module")
def booted() -> Iterator[Booted]:
    if not IMAGE.exists():
        pytest.skip("build the Debian image first: tests/guest/build-debian-image.sh")
    root = Path(tempfile.mkdtemp(prefix="strato-cloudinit-", dir="/var/tmp"))
    root.chmod(0o755)  # QEMU runs as libvirt-qemu and opens the drives here
    node = StratoServer(root / "data")
    try:
        node.data_dir.mkdir()
        node.data_dir.chmod(0o755)
        api = node.add_user("dora@example.com", "dora-pw")
        library = node.cli("libdrives", "import", str(IMAGE), "--name", "Debian 12 (cloud)", "--os", "linux",
                           "--arch", "64", "--media", "disk", "--distribution", "Debian", "--version", "12")
        for p in node.data_dir.rglob("*"):
            if p.is_dir():
                p.chmod(0o755)
        node.start()
        node.wait_host_up()
        key = api.ok("POST", "keypairs/", {"name": "laptop", "algorithm_type": "ed25519"}, 201)["objects"][0]
        disk = api.ok("POST", f"libdrives/{library}/action/?do=clone", {"name": "web-1-disk"}, 202)["objects"][0]
        wait_for(lambda: api.ok("GET", f"drives/{disk['uuid']}/")["status"] == "unmounted", 180, "the clone")
        body = {"name": NAME, "cpu": 2000, "mem": 512 * 2**20, "vnc_password": "debian-pw",
                "drives": [{"drive": disk["uuid"], "device": "virtio", "dev_channel": "0:0", "boot_order": 1}],
                "pubkeys": [key["uuid"]], "meta": {"cloudinit-user-data": USER_DATA}}
        server = api.ok("POST", "servers/", body, 201)["objects"][0]
        api.ok("POST", f"servers/{server['uuid']}/action/?do=start", status=202)
        booted = Booted(node, api, server, key)
        try:
            wait_for(lambda: MARKER in booted.serial_log(), 420, "the user data's marker on the console", 1)
        except AssertionError as err:
            raise AssertionError(f"{err}; console: {booted.serial_log()[-3000:]}; "
                                 f"log: {node.log.read_text()[-2000:]}") from None
        yield booted
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_cloud_init_used_the_cloudsigma_datasource(booted: Booted) -> None:
    finished = re.compile(r"Cloud-init v\. \S+ finished at .* Datasource DataSourceCloudSigma")
    wait_for(lambda: finished.search(booted.serial_log()), 120, "cloud-init's final line naming the datasource")


def test_the_hostname_is_the_server_name(booted: Booted) -> None:
    wait_for(lambda: f"{NAME} login:" in booted.serial_log(), 120, "the login prompt with the server's name")


def test_the_users_key_is_authorized_for_the_default_user(booted: Booted) -> None:
    _kind, blob, *_ = booted.key["public_key"].split()
    digest = hashlib.sha256(base64.b64decode(blob)).hexdigest()  # cloud-init prints sha256 as colon hex
    fingerprint = ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
    log = booted.serial_log()
    table = log[log.index("Authorized keys from /home/debian/.ssh/authorized_keys for user debian"):]
    assert fingerprint in table[:2000], table[:2000]


def test_the_user_data_ran(booted: Booted) -> None:
    assert any(line.strip() == MARKER for line in booted.serial_log().splitlines())
