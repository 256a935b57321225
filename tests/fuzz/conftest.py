"""The fuzzer's node (a real ``strato serve`` with its local host agent, as tests/api's), two fresh
users, the objects the requests aim at, and the request count reported at the end of the run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.api.conftest import strato_server, wait_idle  # noqa: F401  (the fixture, for this package too)
from tests.strato_process import Api, StratoServer

REPORT = Path(os.environ.get("STRATO_FUZZ_REPORT", "/tmp/strato-fuzz-report.json"))


@dataclass
class Stats:
    total: int = 0      # every HTTP request, set-up and store snapshots included
    requests: int = 0   # the generated ones
    by_status: dict[int, int] = field(default_factory=dict)
    routes: set[str] = field(default_factory=set)

    def count(self, route: str, response: requests.Response) -> None:
        self.requests += 1
        self.by_status[response.status_code] = self.by_status.get(response.status_code, 0) + 1
        self.routes.add(route)


STATS = Stats()


class CountingApi(Api):
    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> requests.Response:
        STATS.total += 1
        return super().request(method, path, body, **kw)


@dataclass
class Tenant:
    api: Api
    objects: dict[str, str]  # collection → one object's uuid

    def make(self, collection: str) -> str:
        api = self.api
        if collection == "servers":
            uuid = api.ok("POST", "servers/", {"name": "fz", "cpu": 1000, "mem": 2**29, "vnc_password": "pw"},
                          201)["objects"][0]["uuid"]
        elif collection == "drives":
            uuid = api.ok("POST", "drives/", {"name": "fz", "size": 2**26, "media": "disk"}, 201)["objects"][0]["uuid"]
            wait_idle(api, uuid)
        elif collection == "uploading":
            uuid = api.ok("POST", "initupload/", {"name": "fz-up", "size": 2**21, "media": "disk"},
                          201)["objects"][0]["uuid"]
        elif collection == "tags":
            uuid = api.ok("POST", "tags/", {"name": "fz"}, 201)["objects"][0]["uuid"]
        elif collection in ("keypairs", "pubkeys"):
            uuid = api.ok("POST", "keypairs/", {"name": "fz", "algorithm_type": "ed25519"}, 201)["objects"][0]["uuid"]
        elif collection == "jobs":
            jobs = api.ok("GET", "jobs/?limit=1")["objects"]
            return jobs[0]["uuid"] if jobs else ""
        else:
            return ""
        self.objects[collection] = uuid
        return uuid

    def one(self, collection: str) -> str:
        """One of the tenant's objects, made again when the fuzzer deleted it."""
        uuid = self.objects.get(collection)
        path = "drives" if collection == "uploading" else collection
        if uuid and self.api.get(f"{path}/{uuid}/").status_code == 200:
            return uuid
        return self.make(collection)


@pytest.fixture(scope="session")
def tenants(strato_server: StratoServer) -> tuple[Tenant, Tenant]:  # noqa: F811
    alice = strato_server.add_user("fuzz-alice@example.com", "fuzz-alice-pw")
    bob = strato_server.add_user("fuzz-bob@example.com", "fuzz-bob-pw")
    alice, bob = CountingApi(alice.base, alice.auth), CountingApi(bob.base, bob.auth)
    out = (Tenant(alice, {}), Tenant(bob, {}))
    for tenant in out:
        for collection in ("servers", "drives", "uploading", "tags", "keypairs"):
            tenant.make(collection)
    return out


@pytest.fixture(scope="session", autouse=True)
def report() -> Iterator[Stats]:
    yield STATS
    REPORT.write_text(json.dumps({"requests": STATS.requests, "total": STATS.total, "routes": len(STATS.routes),
                                  "by_status": dict(sorted(STATS.by_status.items()))}, indent=1))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if STATS.requests:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(STATS.by_status.items()))
        terminalreporter.write_line(f"fuzzer: {STATS.requests} generated requests over {len(STATS.routes)} routes "
                                    f"({statuses}); {STATS.total} HTTP requests with set-up and store snapshots")
