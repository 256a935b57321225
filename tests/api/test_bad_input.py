"""Bad input for every writable field of servers, drives and tags (and nested drives[]/nics[]):
each answers 4xx in the error format with the right ``error_point``, never 500, and changes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import assert_error, drive_body, make_drive, make_server, make_tag, server_body, uuids
from tests.strato_process import Api

UNKNOWN = "00000000-0000-4000-8000-000000000000"
NESTED = {"a": {"b": "c"}}

# (field, bad value, error_point, status) — values that must fail on create and on PUT.
SERVER_BAD = [
    ("name", 5, "name", 400), ("name", "a\x00b", "name", 400), ("name", "x" * 2000, "name", 400),
    ("cpu", "fast", "cpu", 400), ("cpu", 1.5, "cpu", 400), ("cpu", True, "cpu", 400), ("cpu", 10, "cpu", 400),
    ("cpu", 10**9, "cpu", 400), ("mem", "lots", "mem", 400), ("mem", 1, "mem", 400), ("mem", 2**60, "mem", 400),
    ("smp", "two", "smp", 400), ("smp", 0, "smp", 400), ("smp", 1000, "smp", 400),
    ("vnc_password", 1234, "vnc_password", 400), ("vnc_password", "", "vnc_password", 400),
    ("vnc_password", "p\x00w", "vnc_password", 400), ("vnc_password", "x" * 65, "vnc_password", 400),
    ("cpu_type", "sparc_t4", "cpu_type", 400), ("cpu_type", 1, "cpu_type", 400),
    ("hypervisor", "solaris-kz", "hypervisor", 400), ("cpu_model", "pentium", "cpu_model", 400),
    ("cpus_instead_of_cores", "yes", "cpus_instead_of_cores", 400), ("enable_numa", 1, "enable_numa", 400),
    ("hv_relaxed", "true", "hv_relaxed", 400), ("hv_tsc", None, "hv_tsc", 400), ("context", 0, "context", 400),
    ("auto_start", "no", "auto_start", 400), ("is_grey", [], "is_grey", 400),
    ("allocation_pool", 7, "allocation_pool", 400),
    ("meta", "text", "meta", 400), ("meta", NESTED, "meta", 400), ("meta", {"k": "a\x00"}, "meta", 400),
    ("meta", {"k" * 33: "v"}, "meta", 400), ("meta", {"k": [1]}, "meta", 400),
    ("tags", "nope", "tags", 400), ("tags", [UNKNOWN], "tags.0", 400), ("tags", ["not-a-uuid"], "tags", 400),
    ("pubkeys", [UNKNOWN], "pubkeys.0", 400), ("pubkeys", "x", "pubkeys", 400),
    ("requirements", "x", "requirements", 400), ("requirements", [1], "requirements", 400),
    ("gpus", [{"model": "nvidia"}], "gpus", 400), ("gpus", [{}], "gpus.0.model", 400),
    ("epcs", [{"size": 0}], "epcs.0.size", 400), ("epcs", [{"size": 4096}], "epcs", 400),
    ("drives", "x", "drives", 400), ("drives", ["x"], "drives.0", 400),
    ("drives", [{"device": "virtio", "dev_channel": "0:0"}], "drives.0.drive", 400),
    ("drives", [{"drive": UNKNOWN, "device": "virtio", "dev_channel": "0:0"}], "drives.0.drive", 400),
    ("drives", [{"drive": "bad", "device": "virtio", "dev_channel": "0:0"}], "drives.0.drive", 400),
    ("nics", "x", "nics", 400), ("nics", [5], "nics.0", 400),
    ("nics", [{"model": "ne2k_pci"}], "nics.0.model", 400), ("nics", [{"boot_order": 0}], "nics.0.boot_order", 400),
    ("nics", [{"mac": "22:00:00:00:00:01"}], "nics.0.mac", 400),
    ("nics", [{"vlan": UNKNOWN}], "nics.0.vlan", 400),
    ("nics", [{"ip_v4_conf": {"conf": "bogus"}}], "nics.0.ip_v4_conf.conf", 400),
    ("nics", [{"ip_v4_conf": "dhcp"}], "nics.0.ip_v4_conf", 400),
    ("nics", [{"ip_v4_conf": {"conf": "static", "ip": "10.0.0.1"}}], "nics.0.ip_v4_conf.ip", 400),
    ("nics", [{"ip_v4_conf": {"conf": "dhcp", "ip": "10.0.0.1"}}], "nics.0.ip_v4_conf.ip", 400),
    ("nics", [{"ip_v6_conf": {"conf": "manual", "ip": "::1"}}], "nics.0.ip_v6_conf.ip", 400),
]
DRIVE_ATTACHMENT_BAD = [
    ({"device": "floppy"}, "drives.0.device", 400), ({"dev_channel": "0"}, "drives.0.dev_channel", 400),
    ({"dev_channel": 0}, "drives.0.dev_channel", 400),
    ({"dev_channel": "2:0", "device": "ide"}, "drives.0.dev_channel", 400),
    ({"dev_channel": "171:0"}, "drives.0.dev_channel", 400), ({"dev_channel": "0:6"}, "drives.0.dev_channel", 400),
    ({"boot_order": 0}, "drives.0.boot_order", 400), ({"boot_order": "first"}, "drives.0.boot_order", 400),
]
DRIVE_BAD = [
    ("name", None, "name", 400), ("name", "a\x00", "name", 400), ("size", "big", "size", 400),
    ("size", 0, "size", 400), ("size", 2**60, "size", 400), ("size", -5, "size", 400),
    ("media", "floppy", "media", 400), ("media", 1, "media", 400),
    ("affinities", ["hdd"], "affinities", 400), ("affinities", "ssd", "affinities", 400),
    ("allow_multimount", "yes", "allow_multimount", 400), ("iops", 0, "iops", 400), ("iops", "fast", "iops", 400),
    ("meta", NESTED, "meta", 400), ("meta", {"k": "\x00"}, "meta", 400), ("meta", [], "meta", 400),
    ("tags", [UNKNOWN], "tags.0", 400), ("tags", 3, "tags", 400),
]
DRIVE_CREATE_ONLY = [("storage_type", "magnetic", "storage_type", 400), ("storage_type", 1, "storage_type", 400)]
TAG_BAD = [
    ("name", 1, "name", 400), ("name", "t\x00", "name", 400), ("meta", NESTED, "meta", 400),
    ("meta", "m", "meta", 400), ("resources", [UNKNOWN], "resources.0", 400), ("resources", "x", "resources", 400),
]


def ids(cases: list[Any]) -> list[str]:
    return [f"{c[0]}={json.dumps(c[1])[:30]}" for c in cases]


def state(api: Api) -> dict[str, Any]:
    """Everything the user has; a drive's status and runtime are left out: they move on their own while
    the host agent creates volumes of drives made by earlier tests."""
    out = {c: api.ok("GET", f"{c}/detail/?limit=0")["objects"] for c in ("servers", "drives", "tags")}
    out["drives"] = [{k: v for k, v in d.items() if k not in ("status", "runtime")} for d in out["drives"]]
    return out


@pytest.fixture(scope="module")
def victims(alice: Api) -> dict[str, Any]:
    drive = make_drive(alice)
    return {"server": make_server(alice, drives=[{"drive": drive["uuid"], "device": "virtio", "dev_channel": "0:0"}]),
            "drive": drive, "tag": make_tag(alice)}


def check_rejected(api: Api, method: str, path: str, body: Any, status: int, point: str | None) -> None:
    before = state(api)
    assert_error(api.request(method, path, body), status, point)
    assert state(api) == before


@pytest.mark.parametrize(("field", "value", "point", "status"), SERVER_BAD, ids=ids(SERVER_BAD))
def test_server_create(alice: Api, field: str, value: Any, point: str, status: int) -> None:
    check_rejected(alice, "POST", "servers/", {"objects": [server_body(**{field: value})]}, status,
                   f"objects.0.{point}")


@pytest.mark.parametrize(("field", "value", "point", "status"), SERVER_BAD, ids=ids(SERVER_BAD))
def test_server_edit(alice: Api, victims: dict[str, Any], field: str, value: Any, point: str, status: int) -> None:
    check_rejected(alice, "PUT", f"servers/{victims['server']['uuid']}/", {field: value}, status, point)


@pytest.mark.parametrize(("change", "point", "status"), DRIVE_ATTACHMENT_BAD,
                         ids=[json.dumps(c[0]) for c in DRIVE_ATTACHMENT_BAD])
def test_server_drive_attachment(alice: Api, victims: dict[str, Any], change: dict[str, Any], point: str,
                                 status: int) -> None:
    entry = {"drive": victims["drive"]["uuid"], "device": "virtio", "dev_channel": "0:1", **change}
    check_rejected(alice, "PUT", f"servers/{victims['server']['uuid']}/", {"drives": [entry]}, status, point)


@pytest.mark.parametrize(("field", "value", "point", "status"), DRIVE_BAD + DRIVE_CREATE_ONLY,
                         ids=ids(DRIVE_BAD + DRIVE_CREATE_ONLY))
def test_drive_create(alice: Api, field: str, value: Any, point: str, status: int) -> None:
    check_rejected(alice, "POST", "drives/", {"objects": [drive_body(**{field: value})]}, status, f"objects.0.{point}")


DRIVE_EDIT_BAD = [*DRIVE_BAD, ("storage_type", "zadara", "storage_type", 400)]  # fixed after creation (§20.5)


@pytest.mark.parametrize(("field", "value", "point", "status"), DRIVE_EDIT_BAD, ids=ids(DRIVE_EDIT_BAD))
def test_drive_edit(alice: Api, victims: dict[str, Any], field: str, value: Any, point: str, status: int) -> None:
    check_rejected(alice, "PUT", f"drives/{victims['drive']['uuid']}/", {field: value}, status, point)


@pytest.mark.parametrize(("field", "value", "point", "status"), TAG_BAD, ids=ids(TAG_BAD))
def test_tag_create_and_edit(alice: Api, victims: dict[str, Any], field: str, value: Any, point: str,
                             status: int) -> None:
    check_rejected(alice, "POST", "tags/", {"objects": [{"name": "t", field: value}]}, status, f"objects.0.{point}")
    check_rejected(alice, "PUT", f"tags/{victims['tag']['uuid']}/", {field: value}, status, point)


def test_other_users_objects_are_unknown_references(alice: Api, bob: Api, victims: dict[str, Any]) -> None:
    drive, tag, server = make_drive(bob), make_tag(bob), make_server(bob)
    path = f"servers/{victims['server']['uuid']}/"
    check_rejected(alice, "PUT", path, {"drives": [{"drive": drive["uuid"], "device": "virtio", "dev_channel": "0:1"}]},
                   400, "drives.0.drive")
    check_rejected(alice, "PUT", path, {"tags": [tag["uuid"]]}, 400, "tags.0")
    check_rejected(alice, "POST", "tags/", {"name": "t", "resources": [server["uuid"]]}, 400, "resources.0")
    check_rejected(alice, "PUT", f"tags/{victims['tag']['uuid']}/", {"resources": [drive["uuid"]]}, 400, "resources.0")


@pytest.mark.parametrize("collection", ["servers", "drives", "tags"])
@pytest.mark.parametrize(("raw", "status"), [(b"{not json", 400), (b"", 400), (b"[]", 400), (b'"text"', 400),
                                             (b"\xff\xfe", 400), (b"null", 400), (b"[1, 2]", 400)])
def test_malformed_bodies(alice: Api, collection: str, raw: bytes, status: int) -> None:
    before = state(alice)
    assert_error(alice.request("POST", f"{collection}/", raw=raw), status)
    assert state(alice) == before


@pytest.mark.parametrize("path", ["servers/{server}/", "drives/{drive}/", "tags/{tag}/"])
@pytest.mark.parametrize("raw", [b"{oops", b"[]", b"[{\"name\": \"x\"}]", b"7"])
def test_malformed_put_bodies(alice: Api, victims: dict[str, Any], path: str, raw: bytes) -> None:
    target = path.format(server=victims["server"]["uuid"], drive=victims["drive"]["uuid"], tag=victims["tag"]["uuid"])
    before = alice.ok("GET", target)
    assert_error(alice.request("PUT", target, raw=raw), 400)
    assert alice.ok("GET", target) == before


@pytest.mark.parametrize("collection", ["servers", "drives", "tags"])
def test_huge_body(alice: Api, collection: str) -> None:
    before = uuids(alice, collection)
    raw = json.dumps({"objects": [{"name": "x" * (10 * 2**20)}]}).encode()
    assert_error(alice.request("POST", f"{collection}/", raw=raw), 413)
    assert uuids(alice, collection) == before


@pytest.mark.parametrize(("collection", "body", "point"), [
    ("servers", [server_body(), server_body(cpu="x"), server_body()], "objects.1.cpu"),
    ("servers", [server_body(), server_body(nics=[{"model": "bad"}])], "objects.1.nics.0.model"),
    ("drives", [drive_body(), drive_body(), drive_body(media="tape")], "objects.2.media"),
    ("tags", [{"name": "ok"}, {"name": None}], "objects.1.name"),
])
def test_bulk_with_one_bad_object_creates_nothing(alice: Api, collection: str, body: list[Any], point: str) -> None:
    check_rejected(alice, "POST", f"{collection}/", {"objects": body}, 400, point)
    check_rejected(alice, "POST", f"{collection}/", body, 400, point)  # the bare-list form too


def test_missing_required_fields(alice: Api) -> None:
    errors = assert_error(alice.request("POST", "servers/", {"objects": [{}]}), 400)
    assert {e["error_point"] for e in errors} >= {f"objects.0.{f}" for f in ("name", "cpu", "mem", "vnc_password")}
    errors = assert_error(alice.request("POST", "drives/", {}), 400)
    assert {e["error_point"] for e in errors} >= {"name", "size", "media"}  # a bare object: no prefix
    assert_error(alice.request("POST", "tags/", {"objects": [{}]}), 400, "objects.0.name")
