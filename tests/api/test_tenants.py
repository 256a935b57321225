"""Two users: objects of one are invisible to the other (404 in the URL, 400 as a body reference)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import assert_error, attach, make_drive, make_server, make_tag
from tests.strato_process import Api


@pytest.fixture(scope="module")
def bobs(bob: Api) -> dict[str, Any]:
    drive = make_drive(bob)
    server = make_server(bob, drives=[attach(drive["uuid"])])
    tag = make_tag(bob, name="bobs-tag", resources=[server["uuid"], drive["uuid"]])
    return {"servers": server, "drives": drive, "tags": tag}


@pytest.mark.parametrize("collection", ["servers", "drives", "tags"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_object_urls_are_404(alice: Api, bob: Api, bobs: dict[str, Any], collection: str, method: str) -> None:
    uuid = bobs[collection]["uuid"]
    for path in (f"{collection}/{uuid}/", f"{collection}/{uuid}"):
        assert_error(alice.request(method, path, {"name": "stolen"} if method == "PUT" else None), 404,
                     error_type="notexist")
    assert bob.ok("GET", f"{collection}/{uuid}/")["name"] != "stolen"


@pytest.mark.parametrize("tail", ["servers/", "drives/", "servers/detail/", "drives/detail/", "ips/", "vlans/"])
def test_tag_sub_lists_are_404(alice: Api, bobs: dict[str, Any], tail: str) -> None:
    assert_error(alice.get(f"tags/{bobs['tags']['uuid']}/{tail}"), 404)


def test_server_runtime_is_404(alice: Api, bobs: dict[str, Any]) -> None:
    assert_error(alice.get(f"servers/{bobs['servers']['uuid']}/runtime/"), 404)


@pytest.mark.parametrize("collection", ["servers", "drives", "tags"])
@pytest.mark.parametrize("view", ["", "detail/"])
def test_lists_never_show_them(alice: Api, bobs: dict[str, Any], collection: str, view: str) -> None:
    make_server(alice), make_drive(alice), make_tag(alice)
    listed = alice.ok("GET", f"{collection}/{view}?limit=0")
    assert listed["objects"] and bobs[collection]["uuid"] not in {o["uuid"] for o in listed["objects"]}
    assert listed["meta"]["total_count"] == len(listed["objects"])
    for o in listed["objects"]:
        assert o["owner"] == alice.ok("GET", f"{collection}/{listed['objects'][0]['uuid']}/")["owner"]


@pytest.mark.parametrize("collection", ["servers", "drives"])
def test_filters_by_their_tag_find_nothing(alice: Api, bobs: dict[str, Any], collection: str) -> None:
    assert alice.ok("GET", f"{collection}/?tag={bobs['tags']['uuid']}")["objects"] == []
    assert alice.ok("GET", f"{collection}/?tag__name=bobs-tag")["objects"] == []
    assert alice.ok("GET", f"{collection}/?uuid={bobs[collection]['uuid']}")["objects"] == []


def test_references_in_bodies_are_400(alice: Api, bob: Api, bobs: dict[str, Any]) -> None:
    free = make_drive(bob)
    mine = make_server(alice)
    assert_error(alice.put(f"servers/{mine['uuid']}/", {"drives": [attach(free["uuid"])]}), 400, "drives.0.drive")
    body = {"name": "x", "cpu": 1000, "mem": 2**29, "vnc_password": "p", "drives": [attach(free["uuid"])]}
    assert_error(alice.post("servers/", {"objects": [body]}), 400, "objects.0.drives.0.drive")
    assert_error(alice.put(f"servers/{mine['uuid']}/", {"tags": [bobs["tags"]["uuid"]]}), 400, "tags.0")
    my_tag = make_tag(alice)
    assert_error(alice.put(f"tags/{my_tag['uuid']}/", {"resources": [bobs["servers"]["uuid"]]}), 400, "resources.0")
    assert_error(alice.post("tags/", {"name": "t", "resources": [bobs["drives"]["uuid"]]}), 400, "resources.0")
    assert_error(alice.post("drives/", {"objects": [{"name": "d", "size": 2**30, "media": "disk",
                                                     "tags": [bobs["tags"]["uuid"]]}]}), 400, "objects.0.tags.0")
    # Nothing changed on bob's side.
    assert bob.ok("GET", f"drives/{free['uuid']}/")["mounted_on"] == []
    assert {r["uuid"] for r in bob.ok("GET", f"tags/{bobs['tags']['uuid']}/")["resources"]} == {
        bobs["servers"]["uuid"], bobs["drives"]["uuid"]}


def test_bulk_delete_of_their_objects_is_404(alice: Api, bob: Api, bobs: dict[str, Any]) -> None:
    assert_error(alice.delete("servers/", {"objects": [{"uuid": bobs["servers"]["uuid"]}]}), 404)
    assert_error(alice.delete("drives/", {"objects": [{"uuid": bobs["drives"]["uuid"]}]}), 404)
    bob.ok("GET", f"servers/{bobs['servers']['uuid']}/")
