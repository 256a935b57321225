"""pycloudsigma (the ``cloudsigma`` package from PyPI, unchanged) through a server's whole life, chunked
uploads in both of its protocols, and its WebSocket client hearing the changes."""

from __future__ import annotations

import threading
from pathlib import Path
from types import ModuleType

import pytest

from tests.clients.conftest import Node
from tests.strato_process import wait_for


def test_lifecycle(cloudsigma: ModuleType, node: Node) -> None:
    drives, servers = cloudsigma.Drive(), cloudsigma.Server()
    disk = drives.clone(node.library_disk, {"name": "boot"})
    wait_for(lambda: drives.get(disk["uuid"])["status"] == "unmounted")
    server = servers.create({"name": "pycs-life", "cpu": 1000, "mem": 128 * 2**20, "vnc_password": "secret"})
    server = servers.update(server["uuid"], dict(server, name="pycs-life2", meta={"role": "test"}, drives=[
        {"drive": disk["uuid"], "device": "virtio", "dev_channel": "0:0", "boot_order": 1}]))
    assert server["name"] == "pycs-life2" and server["drives"][0]["drive"]["uuid"] == disk["uuid"]
    assert drives.get(disk["uuid"])["status"] == "mounted"
    servers.start(server["uuid"])
    wait_for(lambda: servers.get(server["uuid"])["status"] == "running")
    vnc = servers.open_vnc(server["uuid"])
    assert vnc["uuid"] == server["uuid"] and vnc["vnc_url"].startswith("vnc://")
    servers.close_vnc(server["uuid"])
    servers.stop(server["uuid"])
    wait_for(lambda: servers.get(server["uuid"])["status"] == "stopped")
    clone = servers.clone(server["uuid"], {"name": "pycs-clone"}, avoid=[server["uuid"]])
    assert clone["name"] == "pycs-clone" and clone["drives"][0]["drive"]["uuid"] != disk["uuid"]
    copy = clone["drives"][0]["drive"]["uuid"]
    wait_for(lambda: drives.get(copy)["status"] == "mounted")
    resized = drives.resize(copy, {"name": "copy", "size": 2 * 2**30, "media": "disk"})
    assert resized["size"] == 2 * 2**30
    wait_for(lambda: drives.get(copy)["status"] == "mounted")
    servers.delete_with_all_drives(clone["uuid"])
    servers.delete_with_all_drives(server["uuid"])
    left = {d["uuid"] for d in drives.list(query_params={"limit": 0})}
    assert not {disk["uuid"], copy} & left
    assert cloudsigma.LibDrive().get(node.library_disk)["uuid"] == node.library_disk


def test_attaching_library_disk_is_refused(cloudsigma: ModuleType, node: Node) -> None:
    from cloudsigma.errors import PermissionError as CSPermissionError

    with pytest.raises(CSPermissionError):
        cloudsigma.Server().create({"name": "preinst", "cpu": 1000, "mem": 128 * 2**20, "vnc_password": "x",
                                    "drives": [{"drive": node.library_disk, "device": "virtio", "dev_channel": "0:0"}]})


def test_resumable_upload(cloudsigma: ModuleType, node: Node, tmp_path: Path) -> None:
    from cloudsigma.resumable_upload import Upload

    image = tmp_path / "image.raw"
    image.write_bytes(bytes(range(256)) * (3 * 2**20 // 256) + b"tail")  # every byte value: binary-safe
    upload = Upload(str(image), chunk_size=2**20, n_threads=2, drive_name="resumed")
    worker = threading.Thread(target=upload.upload, daemon=True)  # its threads retry failed chunks forever
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "resumable upload did not finish"
    drives = cloudsigma.Drive()
    drive = drives.get(upload.drive_uuid)  # right away: the last chunk's answer came once imported (issue 11)
    assert drive["status"] == "unmounted" and drive["name"] == "resumed", drive
    job = cloudsigma.Jobs().get(drive["jobs"][0]["uuid"])
    assert (job["operation"], job["state"], job["data"]["progress"]) == ("drive_upload", "success", 100)
    downloaded = _download(node, drive["uuid"])
    assert downloaded[:image.stat().st_size] == image.read_bytes()
    drives.delete(drive["uuid"])


def test_upload_chunk_links(cloudsigma: ModuleType, node: Node, tmp_path: Path) -> None:
    # Drive.upload_chunk reads the image in text mode (Python 3): an ASCII image goes through unchanged.
    image = tmp_path / "ascii.raw"
    image.write_bytes(b"strato chunked upload\n" * 150_000)
    size = image.stat().st_size
    drive = cloudsigma.InitUpload().create({"media": "disk"}, image_path=str(image))
    assert drive["status"] == "uploading" and drive["name"] == "ascii.raw"
    drives = cloudsigma.Drive()
    chunk = 2**20
    for n in range(size // chunk):
        link = drives.get_upload_chunk_link(drive["uuid"], n, chunk)
        assert drives.upload_chunk(link, str(image), n, chunk).status_code == 200
    assert drives.get(drive["uuid"])["status"] == "unmounted"  # right away: the last chunk answered once imported
    from cloudsigma.errors import ClientError

    with pytest.raises(ClientError) as refused:  # 416: chunk 0 arrived already
        drives.get_upload_chunk_link(drive["uuid"], 0, chunk)
    assert refused.value.status_code == 416 and "already uploaded" in str(refused.value)
    assert _download(node, drive["uuid"])[:size] == image.read_bytes()
    drives.delete(drive["uuid"])


def _download(node: Node, uuid: str) -> bytes:
    import requests

    from tests.clients.conftest import EMAIL, PASSWORD

    r = requests.get(f"{node.server.base}/api/2.0/drives/{uuid}/download/", auth=(EMAIL, PASSWORD), timeout=120)
    assert r.status_code == 200
    return r.content


def test_websocket_notifications(cloudsigma: ModuleType) -> None:
    ws = cloudsigma.Websocket(timeout=30)
    drives = cloudsigma.Drive()
    made: dict[str, str] = {}
    threading.Timer(0.5, lambda: made.update(drives.create({"name": "", "size": 2**30, "media": "disk"}))).start()
    frame = ws.wait({"resource_type": "drives"})[-1]
    wait_for(lambda: "uuid" in made)
    assert frame["resource_uri"] == f"/api/2.0/drives/{made['uuid']}/"
    settled = ws.wait_for_status(frame["resource_uri"], cloudsigma.Drive, "unmounted", timeout=30)
    assert settled["uuid"] == made["uuid"]
    drives.delete(made["uuid"])
    ws.wait({"resource_uri": frame["resource_uri"]})  # the deletion is announced; a GET now 404s
    from cloudsigma.errors import ClientError

    with pytest.raises(ClientError):
        drives.get(made["uuid"])


def test_account_context_locations_and_keys(cloudsigma: ModuleType, node: Node) -> None:
    assert cloudsigma.Profile().get()["state"] == "REGULAR"  # pycloudsigma's own account test reads it
    context = cloudsigma.GlobalContext()
    assert context.update({"env": "lab"}) == {"env": "lab"}
    assert context.get() == {"env": "lab"}
    [location] = cloudsigma.Locations().list()
    assert location["api_endpoint"].startswith(node.server.base)

    class KeyPairs(cloudsigma.ResourceBase):  # pycloudsigma has no class of its own for them
        resource_name = "keypairs"

    keys = KeyPairs()
    made = keys.create({"name": "pycs-key", "algorithm_type": "ed25519"})
    assert made["public_key"].startswith("ssh-ed25519 ") and made["private_key"]
    server = cloudsigma.Server().create({"name": "pycs-keyed", "cpu": 1000, "mem": 128 * 2**20,
                                         "vnc_password": "secret", "pubkeys": [made["uuid"]]})
    assert [k["uuid"] for k in server["pubkeys"]] == [made["uuid"]]
    keys.delete(made["uuid"])
    assert cloudsigma.Server().get(server["uuid"])["pubkeys"] == []
    cloudsigma.Server().delete(server["uuid"])
