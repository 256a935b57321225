"""Helpers for the API tests: object factories, error assertions, a stand-in for the storage agent."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.strato_process import Api, StratoServer, qemu_reachable_dir

_counter = itertools.count()


def server_body(**extra: Any) -> dict[str, Any]:
    return {"name": f"srv-{next(_counter)}", "cpu": 1000, "mem": 2**29, "vnc_password": "secret", **extra}


def drive_body(**extra: Any) -> dict[str, Any]:
    return {"name": f"drv-{next(_counter)}", "size": 2**30, "media": "disk", **extra}


def make_server(api: Api, **extra: Any) -> dict[str, Any]:
    return api.ok("POST", "servers/", {"objects": [server_body(**extra)]}, 201)["objects"][0]


def make_drive(api: Api, **extra: Any) -> dict[str, Any]:
    return api.ok("POST", "drives/", {"objects": [drive_body(**extra)]}, 201)["objects"][0]


def make_tag(api: Api, name: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {"name": name or f"tag-{next(_counter)}", **extra}
    return api.ok("POST", "tags/", {"objects": [body]}, 201)["objects"][0]


def attach(uuid: str, device: str = "virtio", channel: str = "0:0", **extra: Any) -> dict[str, Any]:
    return {"drive": uuid, "device": device, "dev_channel": channel, **extra}


def uuids(api: Api, collection: str) -> set[str]:
    return {o["uuid"] for o in api.ok("GET", f"{collection}/?limit=0")["objects"]}


def assert_error(r: requests.Response, status: int, point: str | type | None = ..., error_type: str | None = None
                 ) -> list[dict[str, Any]]:
    """``r`` is a CloudSigma error list with this status (and, if given, this first error_point)."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers["Content-Type"].startswith("application/json"), r.headers["Content-Type"]
    errors = r.json()
    assert isinstance(errors, list) and errors, errors
    for e in errors:
        assert set(e) == {"error_type", "error_message", "error_point"}, e
        assert isinstance(e["error_type"], str) and isinstance(e["error_message"], str)
        assert e["error_point"] is None or isinstance(e["error_point"], str)
    if point is not ...:
        assert point in [e["error_point"] for e in errors], errors
    if error_type is not None:
        assert errors[0]["error_type"] == error_type, errors
    return errors


IDLE = ("mounted", "unmounted")


@pytest.fixture(scope="session")
def strato_server() -> Iterator[StratoServer]:
    """The API tests' own server: its local host agent gets a libvirt prefix of its own (the storage
    pool is named prefix + "default"; a shared prefix would find another session's pool), and the
    tests wait for that host to be up so drives can be placed.  Its pool is removed afterwards."""
    prefix = f"stapi{secrets.token_hex(3)}-"  # per instance: tests/fuzz imports this fixture too
    root = qemu_reachable_dir("api")
    server = StratoServer(root / "data", extra_env={"STRATO_AGENT_PREFIX": prefix})
    try:
        server.cli("users", "create", "alice@example.com", "--password", "alice-pw")
        server.cli("users", "create", "bob@example.com", "--password", "bob-pw")
        server.start()
        server.wait_host_up()
        yield server
    finally:
        server.stop()  # removes its pool (the prefix's objects)
        if os.environ.get("STRATO_KEEP_TEST_DIR") is None:
            shutil.rmtree(root, ignore_errors=True)


def wait_idle(api: Api, *drive_uuids: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Wait until the host agent created the drives' volumes (status leaves ``creating``)."""
    deadline = time.monotonic() + timeout
    while True:
        drives = [api.ok("GET", f"drives/{uuid}/") for uuid in drive_uuids]
        if all(d["status"] in IDLE for d in drives):
            return drives
        assert time.monotonic() < deadline, [d["status"] for d in drives]
        time.sleep(0.05)


def settle_all(api: Api) -> None:
    wait_idle(api, *uuids(api, "drives"))


@pytest.fixture(scope="session")
def new_user(strato_server: StratoServer) -> Callable[[], Api]:
    """A fresh account (empty lists), for tests that compare whole lists."""

    def make() -> Api:
        n = next(_counter)
        return strato_server.add_user(f"user{n}@example.com", f"pw-{n}")

    return make
