"""One API node for the real-client tests: plain HTTP on loopback plus HTTPS with the self-signed
certificate it makes on first start, and the test guest image imported as a library drive.

Its data directory is under /var/tmp and world-traversable: QEMU (libvirt-qemu) opens the volumes."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.strato_process import ROOT, Api, StratoServer, free_port

GUEST = ROOT / "build" / "guest" / "strato-guest.img"
EMAIL, PASSWORD = "carol@example.com", "carol-pw"


@dataclass
class Node:
    server: StratoServer
    tls_port: int
    library_disk: str

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def cert(self) -> Path:
        return self.server.data_dir / "tls" / "cert.pem"


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    if not GUEST.exists():
        pytest.skip(f"{GUEST} is missing (tests/guest/build-image.sh builds it)")
    root = Path(tempfile.mkdtemp(prefix="strato-clients-", dir="/var/tmp"))
    root.chmod(0o755)
    tls_port = free_port()
    server = StratoServer(root / "data", extra_env={"STRATO_AGENT_PREFIX": f"stcl{os.getpid()}-",
                                                    "STRATO_TLS_LISTEN": f"127.0.0.1:{tls_port}"})
    server.data_dir.mkdir(parents=True)
    server.data_dir.chmod(0o755)
    server.cli("users", "create", EMAIL, "--password", PASSWORD)
    library_disk = server.cli("libdrives", "import", str(GUEST), "--name", "Strato guest", "--os", "linux",
                              "--arch", "64", "--media", "disk", "--distribution", "Strato", "--version", "1")
    for p in server.data_dir.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    server.start()
    try:
        server.wait_host_up()
        yield Node(server, tls_port, library_disk)
    finally:
        server.stop()
        subprocess.run(["virsh", "-q", "pool-destroy", f"stcl{os.getpid()}-default"], capture_output=True)
        subprocess.run(["virsh", "-q", "pool-undefine", f"stcl{os.getpid()}-default"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def carol(node: Node) -> Api:
    return Api(node.server.base, (EMAIL, PASSWORD))


@pytest.fixture
def cloudsigma(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """pycloudsigma reads its config file when imported: write it, point CLOUDSIGMA_CONFIG at it, reload."""
    conf = tmp_path / "cloudsigma.conf"
    conf.write_text(f"api_endpoint = {node.server.base}/api/2.0/\n"
                    f"ws_endpoint = ws://127.0.0.1:{node.server.port}/websocket\n"
                    f"username = {EMAIL}\npassword = {PASSWORD}\n")
    monkeypatch.setenv("CLOUDSIGMA_CONFIG", str(conf))
    for name in ("cloudsigma.conf", "cloudsigma.generic", "cloudsigma.resource", "cloudsigma.resumable_upload"):
        if name in sys.modules:
            importlib.reload(sys.modules[name])
    import cloudsigma.resource

    yield cloudsigma.resource


