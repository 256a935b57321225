"""Issue 16 item 10: per-user quotas set by the operator, checked in the write's own transaction,
reported in /capabilities/, refused in the error format with nothing written."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.api.conftest import assert_error, drive_body, make_drive, make_server, server_body, uuids, wait_idle
from tests.strato_process import Api, StratoServer

GIB = 2**30


def test_quotas(strato_server: StratoServer, new_user: Callable[[], Api]) -> None:
    api = new_user()
    email = api.auth[0] if api.auth else ""
    set_out = strato_server.cli("quotas", "set", email, "--servers", "2", "--cpu", "3000", "--mem", str(2 * GIB),
                                "--storage", str(3 * GIB))
    assert json.loads(set_out) == {"servers": 2, "cpu": 3000, "mem": 2 * GIB, "storage": 3 * GIB, "tunnels": None}
    first = make_server(api, cpu=1000, mem=2**29)
    make_server(api, cpu=1000, mem=2**29)
    before = uuids(api, "servers")
    assert_error(api.post("servers/", server_body(cpu=500, mem=2**29)), 403, "servers", "permission")
    assert uuids(api, "servers") == before
    # Growing an existing server counts; renaming never does.
    assert_error(api.put(f"servers/{first['uuid']}/", {"cpu": 2500}), 403, "cpu")
    assert api.ok("GET", f"servers/{first['uuid']}/")["cpu"] == 1000
    assert api.put(f"servers/{first['uuid']}/", {"name": "renamed"}).status_code == 200
    # Storage: all or nothing for a bulk create; a resize and a clone count too.
    drive = make_drive(api, size=2 * GIB)
    wait_idle(api, drive["uuid"])
    before = uuids(api, "drives")
    assert_error(api.post("drives/", {"objects": [drive_body(size=GIB // 2), drive_body(size=GIB)]}), 403, "storage")
    assert uuids(api, "drives") == before
    assert_error(api.post(f"drives/{drive['uuid']}/action/?do=resize", {"size": 4 * GIB}), 403, "storage")
    assert_error(api.post(f"drives/{drive['uuid']}/action/?do=clone", {}), 403, "storage")
    assert uuids(api, "drives") == before and api.ok("GET", f"drives/{drive['uuid']}/")["size"] == 2 * GIB
    caps = api.ok("GET", "capabilities/")["quotas"]
    assert caps["servers"] == {"limit": 2, "used": 2} and caps["storage"] == {"limit": 3 * GIB, "used": 2 * GIB}
    assert caps["tunnels"] == {"limit": None, "used": 0}
    # Lifted: the same request passes.
    strato_server.cli("quotas", "set", email, "--servers", "none")
    make_server(api, cpu=500, mem=2**29)
    assert api.ok("GET", "capabilities/")["quotas"]["servers"] == {"limit": None, "used": 3}


def test_no_quota_no_limit(alice: Api) -> None:
    quotas = alice.ok("GET", "capabilities/")["quotas"]
    assert {q["limit"] for q in quotas.values()} == {None}
