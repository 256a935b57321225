"""Issue 16: hostile and careless input answers 4xx in the error format (never 500), limits hold,
and races end in 404 rather than 500 or a double success."""

from __future__ import annotations

import gzip
import json
import threading
import uuid as uuidlib
from typing import Any

import pytest
import requests

from tests.api.conftest import (
    assert_error,
    drive_body,
    make_drive,
    make_server,
    server_body,
    uuids,
    wait_idle,
)
from tests.strato_process import Api

JSON = {"Content-Type": "application/json"}
DEEP = b"[" * 1000 + b"]" * 1000
DEEP_OBJECT = b'{"a":' * 1000 + b"1" + b"}" * 1000


# --- item 4: no 500 without authentication -------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "raw"), [
    ("GET", "chunks/abc/", None), ("POST", "chunks/abc/", b"x"), ("PUT", "chunks/abc/", b"x"),
    ("GET", "accounts/action/?do=login", None), ("POST", "accounts/action/?do=login", DEEP),
    ("POST", "accounts/action/?do=login", DEEP_OBJECT), ("POST", "accounts/action/?do=login", b'{"username": 1}'),
    ("POST", "accounts/action/?do=login", b'{"username": "\\ud800", "password": "x"}'),
    ("POST", "accounts/action/?do=login", b'{"username": "a\\u0000", "password": "\\udfff"}'),
    ("POST", "accounts/action/?do=nothing", None),
])
def test_anonymous_requests_never_500(anonymous: Api, method: str, path: str, raw: bytes | None) -> None:
    r = anonymous.request(method, path, raw=raw)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert_error(r, r.status_code)


# --- item 5: no 500 on bad input --------------------------------------------------------------------

BIG = 2**63
SERVER_INTS = [("cpu", BIG), ("mem", BIG), ("smp", BIG), ("cpu", -BIG - 1), ("cpu", "9" * 25), ("cpu", 1e20),
               ("mem", -1e19), ("cpu", "١٠٠٠"), ("smp", "²"), ("cpu", 2**64 + 1000)]


@pytest.mark.parametrize(("field", "value"), SERVER_INTS, ids=[f"{f}={str(v)[:12]}" for f, v in SERVER_INTS])
def test_server_integers_beyond_64_bits(alice: Api, field: str, value: Any) -> None:
    before = uuids(alice, "servers")
    assert_error(alice.post("servers/", {"objects": [server_body(**{field: value})]}), 400, f"objects.0.{field}")
    assert uuids(alice, "servers") == before


def test_nested_integers_beyond_64_bits(alice: Api) -> None:
    drive = make_drive(alice)
    server = make_server(alice)
    assert_error(alice.post("drives/", drive_body(iops=BIG)), 400, "iops")
    assert_error(alice.put(f"drives/{drive['uuid']}/", {**drive, "iops": BIG}), 400, "iops")
    assert_error(alice.post("servers/", server_body(nics=[{"boot_order": BIG}])), 400, "nics.0.boot_order")
    entry = {"drive": drive["uuid"], "device": "virtio", "dev_channel": "0:0", "boot_order": BIG}
    assert_error(alice.put(f"servers/{server['uuid']}/", {"drives": [entry]}), 400, "drives.0.boot_order")
    assert_error(alice.post("servers/", server_body(epcs=[{"size": BIG}])), 400, "epcs.0.size")
    assert alice.ok("GET", f"servers/{server['uuid']}/")["drives"] == []


@pytest.mark.parametrize("param", ["limit", "offset"])
@pytest.mark.parametrize("value", [str(BIG), "9" * 40, "²", "١", "-1", "1e3"])
@pytest.mark.parametrize("collection", ["servers", "drives/detail", "tags", "libdrives", "jobs", "keypairs"])
def test_paging_values(alice: Api, collection: str, param: str, value: str) -> None:
    assert_error(alice.get(f"{collection}/?{param}={value}"), 400, param)


@pytest.mark.parametrize(("collection", "body", "point"), [
    ("servers", server_body(name="\ud800"), "name"), ("drives", drive_body(name="a\udfffb"), "name"),
    ("tags", {"name": "\ud800"}, "name"), ("tags", {"name": "t", "meta": {"\ud800": "v"}}, "meta"),
    ("tags", {"name": "t", "meta": {"k": "\udc00"}}, "meta"),
    ("servers", server_body(vnc_password="\ud800"), "vnc_password"),
])
def test_lone_surrogates(alice: Api, collection: str, body: dict[str, Any], point: str) -> None:
    before = uuids(alice, collection)
    raw = json.dumps({"objects": [body]}).encode()  # json.dumps escapes the surrogate as \udxxx
    errors = assert_error(alice.post(f"{collection}/", raw=raw), 400)
    assert any(e["error_point"] and e["error_point"].startswith(f"objects.0.{point}") for e in errors), errors
    assert uuids(alice, collection) == before


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "servers/"), ("POST", "drives/"), ("POST", "tags/"), ("POST", "keypairs/"), ("DELETE", "servers/"),
    ("POST", "initupload/"), ("PUT", "profile/"), ("POST", "global_context/"), ("PUT", "servers/{server}/"),
    ("POST", "servers/{server}/action/?do=clone"), ("POST", "drives/{drive}/action/?do=resize"),
])
@pytest.mark.parametrize("raw", [DEEP, DEEP_OBJECT, b"[" * 40 + b"]" * 40], ids=["list", "object", "forty"])
def test_deep_json(alice: Api, method: str, path: str, raw: bytes, victims: dict[str, str]) -> None:
    assert_error(alice.request(method, path.format(**victims), raw=raw), 400)


@pytest.fixture(scope="module")
def victims(alice: Api) -> dict[str, str]:
    return {"server": make_server(alice)["uuid"], "drive": make_drive(alice)["uuid"]}


@pytest.mark.parametrize(("method", "path"), [("POST", "servers/"), ("POST", "tags/"), ("PUT", "profile/"),
                                              ("POST", "drives/upload/x/")])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "bogus"])
def test_content_encoding_on_plain_body(alice: Api, method: str, path: str, encoding: str) -> None:
    before = uuids(alice, "drives")
    r = alice.request(method, path, raw=b'{"name": "plain"}' * 10, headers={"Content-Encoding": encoding})
    assert_error(r, 400 if encoding in ("gzip", "deflate") else r.status_code)
    assert r.status_code in (400, 415), r.text
    assert uuids(alice, "drives") == before


def test_gzip_body_still_accepted(alice: Api) -> None:
    raw = gzip.compress(json.dumps({"objects": [{"name": "zipped"}]}).encode())
    r = alice.request("POST", "tags/", raw=raw, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 201, r.text


@pytest.fixture
def uploading(alice: Api) -> str:
    r = alice.post("initupload/", {"name": "up", "size": 2**21, "media": "disk"})
    assert r.status_code == 201, r.text
    return r.json()["objects"][0]["uuid"]


@pytest.mark.parametrize(("raw", "content_type"), [
    (b"not multipart", "application/json"),
    (b"x", "multipart/form-data"),  # no boundary
    (b"--b\r\nContent-Disposition: form-data; name=\"resumableChunkNumber\"\r\n\r\n\xff\xfe\r\n--b--\r\n",
     "multipart/form-data; boundary=b"),
    (b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc", "multipart/form-data; boundary=b"),
    (b"--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\n\r\nx\r\n--c--\r\n--b--\r\n",
     "multipart/form-data; boundary=b"),
    (b"garbage", "multipart/form-data; boundary=b"),
], ids=["json", "no-boundary", "not-utf8", "truncated", "nested", "garbage"])
def test_bad_multipart_chunks(alice: Api, uploading: str, raw: bytes, content_type: str) -> None:
    r = alice.request("POST", f"drives/{uploading}/upload/", raw=raw, headers={"Content-Type": content_type})
    assert_error(r, 400)


def test_oversized_header_answers_the_error_format_and_logs_no_credentials(strato_server: Any, alice: Api) -> None:
    secret = "Basic " + "QWxhZGRpbjpvcGVuIHNlc2FtZQ" * 400  # over 8,190 bytes
    r = requests.get(alice.url("servers/"), headers={"Authorization": secret}, timeout=10)
    assert_error(r, 400)
    assert "QWxhZGRpbjpvcGVu" not in r.text
    r = requests.get(alice.url("servers/"), headers={"X-Filler": "a" * 9000}, timeout=10)
    assert_error(r, 400)
    assert "aaaa" not in r.text
    assert "QWxhZGRpbjpvcGVu" not in strato_server.log.read_text()


# --- item 7: limits ---------------------------------------------------------------------------------


def test_at_most_1024_virtio_drives(alice: Api) -> None:
    server = make_server(alice)
    channels = [f"{c}:{u}" for c in range(171) for u in range(6)][:1025]
    entries = [{"drive": str(uuidlib.uuid4()), "device": "virtio", "dev_channel": ch} for ch in channels]
    errors = assert_error(alice.put(f"servers/{server['uuid']}/", {"drives": entries}), 400)
    assert "drives" in [e["error_point"] for e in errors], errors[:3]


@pytest.mark.parametrize("name", ["a%00b", "a%0D%0Ab", "x" * 2000, "tab%09"])
def test_upload_names_follow_the_name_rules(alice: Api, name: str) -> None:
    before = uuids(alice, "drives")
    r = alice.post(f"drives/upload/{name}/", raw=b"\0" * 4096, headers={"Content-Type": "application/octet-stream"})
    assert_error(r, 400, "filename")
    assert uuids(alice, "drives") == before


@pytest.mark.parametrize("field", ["name", "vnc_password"])
@pytest.mark.parametrize("value", ["a\x01b", "line\r\nbreak", "del\x7f", "bell\x07"])
def test_control_characters(alice: Api, field: str, value: str) -> None:
    before = uuids(alice, "servers")
    assert_error(alice.post("servers/", server_body(**{field: value})), 400, field)
    assert uuids(alice, "servers") == before


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-1e400"])
@pytest.mark.parametrize(("path", "template"), [
    ("tags/", b'{"name": "t", "meta": {"a": %s}}'),
    ("servers/", b'{"name": "s", "cpu": %s, "mem": 1, "vnc_password": "p"}'),
    ("drives/", b'{"name": "d", "size": %s, "media": "disk"}'),
])
def test_non_finite_numbers(alice: Api, path: str, template: bytes, number: bytes) -> None:
    before = uuids(alice, path.strip("/"))
    assert_error(alice.post(path, raw=template % number), 400)
    assert uuids(alice, path.strip("/")) == before


def test_non_ascii_digits_in_dev_channel(alice: Api) -> None:
    drive = make_drive(alice)
    server = make_server(alice)
    entry = {"drive": drive["uuid"], "device": "virtio", "dev_channel": "٠:١"}
    assert_error(alice.put(f"servers/{server['uuid']}/", {"drives": [entry]}), 400, "drives.0.dev_channel")


def test_like_wildcards_match_literally(new_user: Any) -> None:
    api = new_user()
    for name in ("100%_sure", "plain", "back\\slash"):
        make_server(api, name=name)
        make_drive(api, name=name)
    for wildcard, expected in (("%", 1), ("_", 1), ("\\", 1), ("%_", 1), ("x", 0)):
        for collection in ("servers", "drives"):
            r = api.get(f"{collection}/", params={"name__contains": wildcard})
            assert r.json()["meta"]["total_count"] == expected, (collection, wildcard, r.json())
    for category in ("%", "_", '%"'):  # the library's category filter (a JSON list in a text column)
        r = api.get("libdrives/", params={"category": category})
        assert r.status_code == 200 and r.json()["meta"]["total_count"] == 0, r.text


# --- item 6: races ------------------------------------------------------------------------------


def _race(alice: Api, *calls: tuple[str, str, Any]) -> list[requests.Response]:
    """The requests ``(method, path, body)`` at once, each on a connection of its own."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        api = Api(alice.base, alice.auth)
        barrier.wait()
        results[i] = api.request(*calls[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("collection", ["servers", "drives", "keypairs"])
def test_concurrent_deletes_one_wins(alice: Api, collection: str) -> None:
    for _ in range(6):
        if collection == "servers":
            uuid = make_server(alice)["uuid"]
        elif collection == "drives":
            uuid = make_drive(alice)["uuid"]
            wait_idle(alice, uuid)
        else:
            uuid = alice.ok("POST", "keypairs/", {"name": "k", "algorithm_type": "ed25519"}, 201)["objects"][0]["uuid"]
        delete = ("DELETE", f"{collection}/{uuid}/", None)
        statuses = sorted(r.status_code for r in _race(alice, delete, delete))
        assert statuses == [204, 404], statuses


def test_put_racing_delete_is_never_500(alice: Api) -> None:
    for i in range(10):
        uuid = make_server(alice)["uuid"]
        put, delete = _race(alice, ("PUT", f"servers/{uuid}/", {"name": f"renamed-{i}", "meta": {"k": "v"}}),
                            ("DELETE", f"servers/{uuid}/", None))
        assert delete.status_code in (204, 404), delete.text
        assert put.status_code in (200, 404), put.text
        if put.status_code == 404:
            assert_error(put, 404, error_type="notexist")


@pytest.mark.parametrize(("action", "body"), [("resize", {"size": 2**31}), ("clone", {})])
def test_drive_actions_racing_delete_are_never_500(alice: Api, action: str, body: dict[str, Any]) -> None:
    for _ in range(6):
        uuid = make_drive(alice)["uuid"]
        wait_idle(alice, uuid)
        acted, delete = _race(alice, ("POST", f"drives/{uuid}/action/?do={action}", body),
                              ("DELETE", f"drives/{uuid}/", None))
        for r in (acted, delete):
            assert r.status_code < 500 or r.status_code == 503, r.text
            if r.status_code >= 400:
                assert_error(r, r.status_code)
