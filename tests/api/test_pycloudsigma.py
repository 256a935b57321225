"""The real ``cloudsigma`` client library (pycloudsigma) against ``strato serve``.

pycloudsigma reads its config file (path in ``CLOUDSIGMA_CONFIG``) when ``cloudsigma.conf`` is imported, so
the fixture writes the file, sets the variable and reloads the modules that hold the parsed config."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.api.conftest import wait_idle
from tests.strato_process import Api, StratoServer


@pytest.fixture
def cloudsigma(strato_server: StratoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    conf = tmp_path / "cloudsigma.conf"
    conf.write_text(f"api_endpoint = {strato_server.base}/api/2.0/\nws_endpoint = ws://127.0.0.1:1/websocket\n"
                    "username = alice@example.com\npassword = alice-pw\n")
    monkeypatch.setenv("CLOUDSIGMA_CONFIG", str(conf))
    for name in ("cloudsigma.conf", "cloudsigma.generic", "cloudsigma.resource"):
        if name in sys.modules:
            importlib.reload(sys.modules[name])
    import cloudsigma.resource

    yield cloudsigma.resource


def test_servers(cloudsigma: ModuleType) -> None:
    servers = cloudsigma.Server()
    made = servers.create({"name": "pycs", "cpu": 1000, "mem": 512 * 2**20, "vnc_password": "secret"})
    assert made["status"] == "stopped" and made["smp"] == 1
    assert made["uuid"] in {s["uuid"] for s in servers.list(query_params={"limit": 0})}
    assert servers.get(made["uuid"])["name"] == "pycs"
    edited = servers.update(made["uuid"], dict(made, name="pycs2", cpu=2000, meta={"k": "v"}))
    assert (edited["name"], edited["cpu"], edited["meta"]) == ("pycs2", 2000, {"k": "v"})
    assert any(s["uuid"] == made["uuid"] for s in servers.list_detail())
    assert servers.runtime(made["uuid"]) == {}
    servers.delete(made["uuid"])
    assert made["uuid"] not in {s["uuid"] for s in servers.list(query_params={"limit": 0})}


def test_drives_and_attach(cloudsigma: ModuleType, alice: Api) -> None:
    drives, servers = cloudsigma.Drive(), cloudsigma.Server()
    bulk = drives.create([{"name": f"d{i}", "size": "1024000000", "media": "disk"} for i in range(2)])
    assert [d["name"] for d in bulk] == ["d0", "d1"] and bulk[0]["size"] % 4096 == 0
    wait_idle(alice, *(d["uuid"] for d in bulk))
    edited = drives.update(bulk[0]["uuid"], {"name": "renamed", "media": "cdrom", "size": bulk[0]["size"]})
    assert (edited["name"], edited["media"]) == ("renamed", "cdrom")
    server = servers.create({"name": "with-drive", "cpu": 1000, "mem": 512 * 2**20, "vnc_password": "x",
                             "drives": [{"drive": bulk[1]["uuid"], "device": "virtio", "dev_channel": "0:0"}]})
    assert drives.get(bulk[1]["uuid"])["mounted_on"][0]["uuid"] == server["uuid"]
    servers.delete_with_all_drives(server["uuid"])
    drives.delete(bulk[0]["uuid"])
    remaining = {d["uuid"] for d in drives.list(query_params={"limit": 0})}
    assert not remaining & {d["uuid"] for d in bulk}
