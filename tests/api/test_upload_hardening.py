"""Issue 16 items 1, 2 and 8 (uploads): no decompression bomb, no orphaned uploads (after a DELETE or a
restart), and one answer for "not yours" and "not there"."""

from __future__ import annotations

import gzip
import shutil
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.api.conftest import assert_error, make_drive, uuids, wait_idle
from tests.strato_process import Api, StratoServer, qemu_reachable_dir

CHUNK = 2**20
BOMB = gzip.compress(b"\0" * (64 * 2**20), 9)  # ~64 KiB that inflate to 64 MiB


def uploads_dir(server: StratoServer) -> Path:
    return server.data_dir / "uploads"


def files_in(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.iterdir()} if directory.exists() else {}


def init_upload(api: Api, size: int = 2 * CHUNK) -> str:
    r = api.post("initupload/", {"name": "resumable", "size": size, "media": "disk"})
    assert r.status_code == 201, r.text
    return r.json()["objects"][0]["uuid"]


def chunk_link(api: Api, uuid: str, number: int = 0) -> str:
    r = api.post(f"drives/{uuid}/action/?do=upload_chunk", {"chunk_number": number, "chunk_size": CHUNK})
    assert r.status_code == 200, r.text
    return r.json()["link"]


def resumable(api: Api, uuid: str, number: int, data: bytes, size: int = CHUNK) -> requests.Response:
    fields = {"resumableChunkNumber": str(number), "resumableChunkSize": str(size)}
    return api.session.post(api.url(f"drives/{uuid}/upload/"), data=fields, files={"file": ("c", data)},
                            auth=api.auth, timeout=60)


# --- item 1: decompression bomb -----------------------------------------------------------------


def test_gzip_bomb_raw_upload_stops_at_the_announced_length(strato_server: StratoServer, alice: Api) -> None:
    before, started = uuids(alice, "drives"), time.monotonic()
    r = alice.post("drives/upload/bomb/", raw=BOMB, headers={"Content-Encoding": "gzip",
                                                              "Content-Type": "application/octet-stream"})
    errors = assert_error(r, 400, "Content-Length")
    assert "more than" in errors[0]["error_message"], errors  # stopped at the limit, not counted at the end
    assert time.monotonic() - started < 5
    assert uuids(alice, "drives") == before
    assert not [n for n in files_in(uploads_dir(strato_server)) if n.endswith(".img")]


def test_gzip_bomb_on_a_chunk_link_writes_nothing_beyond_the_chunk(strato_server: StratoServer, alice: Api) -> None:
    uuid = init_upload(alice)
    link = chunk_link(alice, uuid)
    r = requests.post(f"{strato_server.base}{link}", data=BOMB, headers={"Content-Encoding": "gzip"}, timeout=30)
    assert_error(r, 400)
    chunks = uploads_dir(strato_server) / f"{uuid}.chunks"
    assert chunks.stat().st_size == 2 * CHUNK  # the sparse file of the image's size, never more
    assert chunks.stat().st_blocks * 512 <= 2 * CHUNK + 65536
    alice.delete(f"drives/{uuid}/")


# --- item 2: orphaned uploads -------------------------------------------------------------------


def test_delete_ends_the_upload(strato_server: StratoServer, alice: Api) -> None:
    uuid = init_upload(alice)
    link = chunk_link(alice, uuid, 1)
    assert resumable(alice, uuid, 1, b"\1" * CHUNK).status_code == 200
    chunks = uploads_dir(strato_server) / f"{uuid}.chunks"
    assert chunks.exists()
    assert alice.delete(f"drives/{uuid}/").status_code == 204
    assert not chunks.exists()
    assert_error(requests.post(f"{strato_server.base}{link}", data=b"\2" * CHUNK, timeout=30), 404)
    assert_error(resumable(alice, uuid, 2, b"\3" * CHUNK), 404)
    assert_error(alice.get(f"drives/{uuid}/upload/?resumableChunkNumber=1&resumableChunkSize={CHUNK}"), 404)
    assert_error(alice.post(f"drives/{uuid}/action/?do=upload_chunk", {"chunk_number": 0, "chunk_size": CHUNK}), 404)
    assert not chunks.exists()


# --- item 8: one answer for "not yours" and "not there" ------------------------------------------


def test_upload_endpoints_do_not_tell_foreign_from_missing(alice: Api, bob: Api) -> None:
    in_progress = init_upload(bob)
    idle = make_drive(bob)["uuid"]
    wait_idle(bob, idle)
    answers = []
    for uuid in (in_progress, idle, str(uuidlib.uuid4())):
        for r in (resumable(alice, uuid, 1, b"x" * CHUNK),
                  alice.get(f"drives/{uuid}/upload/?resumableChunkNumber=1&resumableChunkSize={CHUNK}"),
                  alice.post(f"drives/{uuid}/action/?do=upload_chunk", {"chunk_number": 0, "chunk_size": CHUNK})):
            assert_error(r, 404)
            answers.append(r.json())
    assert all(a == answers[0] for a in answers), answers
    # The owner's own idle drive that takes no upload is a state conflict, as before.
    own = make_drive(alice)["uuid"]
    wait_idle(alice, own)
    assert_error(resumable(alice, own, 1, b"x" * CHUNK), 403)
    bob.delete(f"drives/{in_progress}/")


# --- item 2 across a restart ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def restartable() -> Iterator[StratoServer]:
    root = qemu_reachable_dir("restart")
    server = StratoServer(root / "data")  # stop() removes its libvirt pool
    server.cli("users", "create", "carol@example.com", "--password", "carol-pw")
    server.start()
    try:
        server.wait_host_up()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_restart_sweeps_leftovers_and_uploads_can_go_on(restartable: StratoServer) -> None:
    carol = Api(restartable.base, ("carol@example.com", "carol-pw"))
    uuid = init_upload(carol)
    assert resumable(carol, uuid, 1, b"\1" * CHUNK).status_code == 200
    stale_link = chunk_link(carol, uuid, 1)
    restartable.stop()
    junk = uploads_dir(restartable) / "0f0f0f0f-dead-4bee-8f00-000000000000.img"
    junk.write_bytes(b"left over" * 1000)
    restartable.start()
    assert not junk.exists()
    assert files_in(uploads_dir(restartable)).keys() == {f"{uuid}.chunks"}
    drive = carol.ok("GET", f"drives/{uuid}/")
    assert drive["status"] == "uploading"
    # The chunks sent before are kept (the database holds what arrived, issue 13), and so is an
    # unused link: another API node, or this one restarted, goes on where the upload was.
    r = carol.get(f"drives/{uuid}/upload/?resumableChunkNumber=1&resumableChunkSize={CHUNK}")
    assert r.status_code == 200, r.text
    assert resumable(carol, uuid, 1, b"\1" * CHUNK).status_code == 200  # sent again: taken again
    # The link's chunk completes the image: its answer comes once imported.
    assert requests.post(f"{restartable.base}{stale_link}", data=b"\2" * CHUNK, timeout=60).status_code == 200
    assert_error(requests.post(f"{restartable.base}{stale_link}", data=b"\2" * CHUNK, timeout=30), 404)  # once
    assert carol.ok("GET", f"drives/{uuid}/")["status"] == "unmounted"
    # Deleted: the drive and every file of its upload go.
    assert carol.delete(f"drives/{uuid}/").status_code == 204
    assert files_in(uploads_dir(restartable)) == {}
