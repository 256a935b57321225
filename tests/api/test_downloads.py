"""Issue 16 item 10 (downloads): concurrent downloads of one drive share one scratch copy, which goes
with the last reader; a user's downloads at once are capped (429); Range still answers 206."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.api.conftest import assert_error
from tests.strato_process import Api, StratoServer, upload, wait_for

pytestmark = pytest.mark.libvirt
MiB = 2**20


def scratch_copies(node: StratoServer) -> list[str]:
    transit = node.data_dir / "transit"
    return sorted(p.name for p in transit.iterdir()) if transit.exists() else []


def files_under(directory: Path) -> set[str]:
    """Everything under the data directory but the pool, the database and the log (which change)."""
    skip = ("pools/", "strato.db", "serve.log")
    return {str(p.relative_to(directory)) for p in directory.rglob("*")
            if p.is_file() and not str(p.relative_to(directory)).startswith(skip)}


def test_concurrent_downloads_share_one_copy_and_are_capped(strato_server: StratoServer,
                                                             new_user: Callable[[], Api]) -> None:
    api = new_user()
    content = os.urandom(3 * MiB) + bytes(20 * MiB) + os.urandom(MiB)  # beyond both sockets' buffers
    uuid = upload(api, "to-download.img", content)
    size = api.ok("GET", f"drives/{uuid}/")["size"]
    expected = content + bytes(size - len(content))
    before = files_under(strato_server.data_dir)
    url = api.url(f"drives/{uuid}/download/")
    with ThreadPoolExecutor(2) as pool:  # both at once: the second must not start a copy of its own
        readers = list(pool.map(lambda _: requests.get(url, auth=api.auth, stream=True, timeout=120), range(2)))
    try:
        for r in readers:
            assert r.status_code == 200, r.text
        # Both are being served (neither client reads, so the server waits on its socket): one copy.
        assert len(scratch_copies(strato_server)) == 1, scratch_copies(strato_server)
        third = requests.get(url, auth=api.auth, timeout=120)
        errors = assert_error(third, 429, None, "permission")
        assert "2 downloads at once" in errors[0]["error_message"]
        assert int(third.headers["Retry-After"]) >= 1
        with ThreadPoolExecutor(2) as pool:
            bodies = list(pool.map(lambda r: r.content, readers))
        assert all(body == expected for body in bodies)
    finally:
        for r in readers:
            r.close()
    wait_for(lambda: not scratch_copies(strato_server), 30, "the scratch copy removed")
    # Ranges from a fresh copy; afterwards nothing is left under the data directory.
    part = api.get(f"drives/{uuid}/download/", headers={"Range": f"bytes={3 * MiB - 10}-{3 * MiB + 9}"})
    assert part.status_code == 206 and part.content == expected[3 * MiB - 10: 3 * MiB + 10]
    assert part.headers["Content-Range"] == f"bytes {3 * MiB - 10}-{3 * MiB + 9}/{size}"
    wait_for(lambda: not scratch_copies(strato_server), 30, "the scratch copy removed")
    assert files_under(strato_server.data_dir) == before
    # Another user's drive: 404, as a drive that does not exist.
    assert_error(requests.get(url, auth=("bob@example.com", "bob-pw"), timeout=30), 404)
