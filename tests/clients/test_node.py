"""HTTPS and its fingerprint, session login with CSRF, library drive rules, download with Range."""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import subprocess
import sys
from pathlib import Path

import requests

from tests.api.conftest import assert_error
from tests.clients.conftest import EMAIL, GUEST, PASSWORD, Node
from tests.strato_process import ROOT, Api, load_dump, wait_for


def test_tls_fingerprint_printed_and_served(node: Node, carol: Api) -> None:
    printed = re.search(r"SHA-256 fingerprint ([0-9A-F:]{95})", node.server.log.read_text())
    assert printed, node.server.log.read_text()[-2000:]
    der = ssl.PEM_cert_to_DER_cert(node.cert.read_text())
    assert printed[1] == ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert str(node.cert.resolve()) in node.server.log.read_text()
    served = ssl.get_server_certificate(("127.0.0.1", node.tls_port))
    assert ssl.PEM_cert_to_DER_cert(served) == der
    r = requests.get(f"{node.https}/api/2.0/libdrives/", auth=carol.auth, verify=str(node.cert), timeout=30)
    assert r.status_code == 200 and r.json()["meta"]["total_count"] >= 1


def test_session_login_csrf_logout(node: Node) -> None:
    s = requests.Session()
    base = f"{node.server.base}/api/2.0"
    assert s.post(f"{base}/accounts/action/?do=login", json={"username": EMAIL, "password": "wrong"}).status_code == 401
    r = s.post(f"{base}/accounts/action/?do=login", json={"username": EMAIL, "password": PASSWORD})
    assert r.status_code == 200 and "uuid" in r.json()
    assert {"sessionid", "csrftoken"} <= set(s.cookies.keys())
    assert "httponly" in r.raw.headers.getlist("Set-Cookie")[0].lower()  # sessionid first
    assert s.get(f"{base}/drives/").status_code == 200
    body = {"name": "by-session", "size": 2**30, "media": "disk"}
    assert_error(s.post(f"{base}/drives/", json=body), 403, None, "permission")  # no X-CSRFToken
    assert_error(s.post(f"{base}/drives/", json=body, headers={"X-CSRFToken": "nope"}), 403)
    made = s.post(f"{base}/drives/", json=body, headers={"X-CSRFToken": s.cookies["csrftoken"]})
    assert made.status_code == 201, made.text
    r = s.post(f"{base}/accounts/action/?do=logout", json={}, headers={"X-CSRFToken": s.cookies["csrftoken"]})
    assert r.status_code == 200
    assert s.get(f"{base}/drives/").status_code == 401
    async_auth = requests.post(f"{base}/accounts/action/?do=authenticate_asynchronous", json={},
                               auth=(EMAIL, PASSWORD))
    assert async_auth.status_code == 200 and async_auth.json() == {}
    assert "Max-Age=120" in async_auth.headers["Set-Cookie"] and async_auth.cookies["async_auth"]


def test_cookies_over_https_are_secure(node: Node) -> None:
    """Issue 16 item 9: over HTTPS every credential cookie is Secure; async_auth is HttpOnly and SameSite too."""
    base = f"{node.https}/api/2.0"
    r = requests.post(f"{base}/accounts/action/?do=authenticate_asynchronous", auth=(EMAIL, PASSWORD),
                      verify=str(node.cert), timeout=30)
    cookie = r.headers["Set-Cookie"]
    assert all(flag in cookie for flag in ("Secure", "HttpOnly", "SameSite=Lax")), cookie
    r = requests.post(f"{base}/accounts/action/?do=login", json={"username": EMAIL, "password": PASSWORD},
                      verify=str(node.cert), timeout=30)
    assert all("Secure" in c for c in r.raw.headers.getlist("Set-Cookie")), r.raw.headers.getlist("Set-Cookie")


def test_library_views_and_rules(node: Node, carol: Api) -> None:
    listed = carol.ok("GET", "libdrives/")
    entry = next(o for o in listed["objects"] if o["uuid"] == node.library_disk)
    assert entry["owner"] is None and entry["storage_type"] is None and entry["status"] == "unmounted"
    assert (entry["os"], entry["arch"], entry["image_type"], entry["media"]) == ("linux", "64", "preinst", "disk")
    assert carol.ok("GET", "libdrives/detail/")["objects"] == listed["objects"]
    assert carol.ok("GET", f"libdrives/{node.library_disk}/") == entry
    assert carol.ok("GET", "libdrives/?os=windows")["objects"] == []
    assert carol.ok("GET", "libdrives/?name__icontains=strato")["meta"]["total_count"] == 1
    # The schema against the dump: same fields with the same type/required/readonly/default.
    ours, (_, theirs) = carol.ok("GET", "libdrives/schema/"), load_dump("response_libdrive_schema")
    assert set(ours["fields"]) == set(theirs["fields"])
    for name, field in theirs["fields"].items():
        for flag in ("type", "required", "readonly", "default"):
            assert ours["fields"][name][flag] == field[flag], (name, flag)
    assert set(ours["filtering"]) >= set(theirs["filtering"])
    _, dump_entry = load_dump("response_libdrive_get")
    assert set(entry) == set(dump_entry)
    # Through /drives/: drive shape, owner null; never in the user's lists.
    through = carol.ok("GET", f"drives/{node.library_disk}/")
    assert through["owner"] is None and through["resource_uri"] == f"/api/2.0/drives/{node.library_disk}/"
    assert node.library_disk not in {d["uuid"] for d in carol.ok("GET", "drives/?limit=0")["objects"]}
    assert carol.put(f"libdrives/{node.library_disk}/", {"name": "x"}).status_code == 405
    assert_error(carol.delete(f"drives/{node.library_disk}/"), 404)
    # A library disk cannot be attached, it is cloned first; its attributes land in the clone's meta.
    server = {"name": "lib", "cpu": 1000, "mem": 2**27, "vnc_password": "secret",
              "drives": [{"drive": node.library_disk, "device": "virtio", "dev_channel": "0:0"}]}
    assert_error(carol.post("servers/", server), 403, "drives.0.drive", "permission")
    clone = carol.ok("POST", f"libdrives/{node.library_disk}/action/?do=clone", {"name": "my-guest"}, 202)["objects"][0]
    assert clone["owner"]["uuid"] and clone["status"] == "unmounted" and clone["jobs"]  # copy-on-write: at once
    assert {("os", "linux"), ("arch", "64"), ("distribution", "Strato"), ("version", "1"),
            ("image_type", "preinst")} <= set(clone["meta"].items())
    wait_for(lambda: carol.ok("GET", f"drives/{clone['uuid']}/")["status"] == "unmounted")
    assert carol.ok("GET", f"libdrives/{node.library_disk}/")["status"] == "unmounted"


def test_library_cdrom_attaches_directly(node: Node, carol: Api, tmp_path: Path) -> None:
    iso = tmp_path / "tiny.bin"  # an ISO 9660 volume descriptor, named like nothing in particular
    data = bytearray(64 * 1024)
    data[0x8001:0x8006] = b"CD001"
    iso.write_bytes(bytes(data))
    refused = subprocess.run([sys.executable, "-m", "orchestrator.cli", "libdrives", "import", str(iso), "--name",
                              "tiny", "--os", "linux", "--arch", "64", "--media", "disk", "--data-dir",
                              str(node.server.data_dir)], cwd=ROOT, env={**os.environ, **node.server.env},
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "ISO 9660" in refused.stderr  # the format comes from the content
    uuid = node.server.cli("libdrives", "import", str(iso), "--name", "tiny", "--os", "linux", "--arch", "64",
                           "--media", "cdrom")
    assert carol.ok("GET", f"libdrives/{uuid}/")["image_type"] == "install"
    made = carol.ok("POST", "servers/", {"name": "cd", "cpu": 1000, "mem": 2**27, "vnc_password": "secret", "drives": [
        {"drive": uuid, "device": "ide", "dev_channel": "0:0"}]}, 201)["objects"][0]
    assert made["drives"][0]["drive"]["uuid"] == uuid
    assert carol.ok("GET", f"libdrives/{uuid}/")["mounted_on"] == []
    carol.ok("DELETE", f"servers/{made['uuid']}/?recurse=all_drives", status=204)
    assert carol.ok("GET", f"libdrives/{uuid}/")["uuid"] == uuid  # library drives survive recursive deletes


def test_download_with_range(node: Node, carol: Api) -> None:
    uuid = carol.request("POST", "drives/upload/ranged.img/", raw=GUEST.read_bytes()[:4 * 2**20],
                         headers={"Content-Type": "application/octet-stream"}).text.strip()
    wait_for(lambda: carol.ok("GET", f"drives/{uuid}/")["status"] == "unmounted")
    original = GUEST.read_bytes()[:4 * 2**20]
    r = carol.get(f"drives/{uuid}/download/", headers={"Range": "bytes=0-1023"})
    assert r.status_code == 206 and r.content == original[:1024], (r.status_code, r.headers)
    assert r.headers["Content-Range"].startswith("bytes 0-1023/")
    whole = carol.get(f"drives/{uuid}/download/")
    assert whole.status_code == 200 and whole.content[:len(original)] == original
    assert whole.headers["Content-Disposition"] == f"attachment; filename={uuid}"
    assert not whole.content[len(original):].strip(b"\0")  # zero padding up to the drive size
    tail = carol.get(f"drives/{uuid}/download/", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and len(tail.content) == 10
    assert carol.get(f"drives/{uuid}/download/", headers={"Range": "bytes=999999999999-"}).status_code == 416
