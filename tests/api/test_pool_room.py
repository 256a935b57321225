"""Issue 16 item 10 (storage): thin drives may promise at most what the host's pool holds
(``storage_overcommit`` × capacity, as the agent reports it), whichever way they grow — create,
resize, clone, upload — refused with 403 and ``error_point`` ``size``, nothing written."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from tests.api.conftest import assert_error, uuids, wait_idle
from tests.strato_process import Api, StratoServer

pytestmark = pytest.mark.libvirt
GiB = 2**30


def pool_figures(node: StratoServer) -> tuple[str, str, int, int, int]:
    """(host, pool, capacity, available, bytes its drives promise) as the node's store holds them."""
    with contextlib.closing(sqlite3.connect(node.data_dir / "strato.db", timeout=30)) as con:
        host, facts = con.execute("SELECT name, facts FROM hosts WHERE state = 'up' ORDER BY name").fetchone()
        pool = json.loads(facts)["pools"][0]
        promised = con.execute("SELECT COALESCE(SUM(size), 0) FROM drives WHERE host = ? AND pool = ?",
                               (host, pool["name"])).fetchone()[0]
    return host, pool["name"], pool["capacity"], pool["available"], promised


def snapshot(api: Api) -> dict[str, Any]:
    return {d["uuid"]: d["size"] for d in api.ok("GET", "drives/detail/?limit=0")["objects"]}


def test_drives_cannot_promise_more_than_the_pool_holds(strato_server: StratoServer,
                                                        new_user: Callable[[], Api]) -> None:
    api = new_user()
    _host, _pool, capacity, available, promised = pool_figures(strato_server)
    # Pieces each within the free space, together beyond the capacity (overcommit 1.0 by default).
    piece = max(GiB, (min(available - 4 * GiB, capacity) // GiB) * GiB)
    room = capacity - promised
    made: list[str] = []
    try:
        while room - piece * (len(made) + 1) >= 0:  # until less than a piece of room is left
            made.append(api.ok("POST", "drives/", {"name": f"big-{len(made)}", "size": piece, "media": "disk"},
                               201)["objects"][0]["uuid"])
        wait_idle(api, *made)
        left = room - piece * len(made)
        assert 0 <= left < piece
        before = snapshot(api)

        # Create: one more piece than there is room for (each fits in the free space by itself).
        too_big = left + GiB  # < piece + GiB <= available
        assert_error(api.post("drives/", {"name": "over", "size": too_big, "media": "disk"}), 403, "size")
        # Two in one request, each fitting, together not: all or nothing.
        half = (left // 2 // GiB + 1) * GiB
        r = api.post("drives/", {"objects": [{"name": "a", "size": half, "media": "disk"},
                                             {"name": "b", "size": half, "media": "disk"}]})
        assert_error(r, 403, "size")
        # Resize beyond the room.
        grow = made[0]
        assert_error(api.put(f"drives/{grow}/", {"name": "big-0", "size": piece + left + GiB, "media": "disk"}),
                     403, "size")
        assert_error(api.post(f"drives/{grow}/action/?do=resize", {"size": piece + left + GiB}), 403, "size")
        # Clone: a copy of a piece needs a piece of room.
        assert_error(api.post(f"drives/{grow}/action/?do=clone", {"name": "copy"}), 403, "size")
        # Upload: the announced size counts.
        if left + GiB <= min(available, 64 * GiB):  # within max_upload
            assert_error(api.post("initupload/", {"name": "up", "size": left + GiB, "media": "disk"}), 403, "size")
        assert snapshot(api) == before  # nothing was written by any refusal
        # What fits is still accepted.
        fits = api.ok("POST", "drives/", {"name": "fits", "size": GiB, "media": "disk"}, 201)["objects"][0]["uuid"]
        made.append(fits)
        wait_idle(api, fits)
    finally:
        for uuid in made:
            api.delete(f"drives/{uuid}/")
    assert uuids(api, "drives") == set()
