"""Clones and deletes as the clients use them (issue 11, defects 4 and 5).

* ``DELETE /servers/{uuid}/?recurse=…`` when another server shares a drive: a server clone shares
  its source's cdroms (§15); pycloudsigma's own suite deletes the source with
  ``recurse=all_drives`` and waits for the cdrom's 404, so a shared drive goes too, detached from
  the other server, while that server is stopped [decision].
* libcloud starts a fresh clone's source and destroys the fresh clone at once: neither fails.
"""

from __future__ import annotations

import os

from tests.api.conftest import make_drive, make_server, wait_idle
from tests.strato_process import ROOT, Api, StratoServer, upload, wait_for

GUEST = ROOT / "build" / "guest" / "strato-guest.img"


def test_a_shared_cdrom_goes_with_the_server_and_leaves_its_clone(alice: Api) -> None:
    disk, cdrom = make_drive(alice), make_drive(alice, media="cdrom")
    wait_idle(alice, disk["uuid"], cdrom["uuid"])
    source = make_server(alice, drives=[
        {"drive": disk["uuid"], "device": "virtio", "dev_channel": "0:0", "boot_order": 1},
        {"drive": cdrom["uuid"], "device": "ide", "dev_channel": "0:0"}])
    clone = alice.ok("POST", f"servers/{source['uuid']}/action/?do=clone", {"name": "twin"}, 202)
    assert cdrom["uuid"] in {d["drive"]["uuid"] for d in clone["drives"]}  # shared, not copied
    copy = next(d["drive"]["uuid"] for d in clone["drives"] if d["drive"]["uuid"] != cdrom["uuid"])
    wait_idle(alice, copy)

    r = alice.request("DELETE", f"servers/{source['uuid']}/?recurse=all_drives")
    assert r.status_code == 204, r.text
    assert alice.get(f"drives/{disk['uuid']}/").status_code == 404
    assert alice.get(f"drives/{cdrom['uuid']}/").status_code == 404
    left = alice.ok("GET", f"servers/{clone['uuid']}/")
    assert [d["drive"]["uuid"] for d in left["drives"]] == [copy]  # its own disk copy stays attached
    alice.request("DELETE", f"servers/{clone['uuid']}/?recurse=all_drives")
    assert alice.get(f"drives/{copy}/").status_code == 404


def test_without_recurse_every_drive_stays(alice: Api) -> None:
    cdrom = make_drive(alice, media="cdrom")
    wait_idle(alice, cdrom["uuid"])
    server = make_server(alice, drives=[{"drive": cdrom["uuid"], "device": "ide", "dev_channel": "0:0"}])
    assert alice.request("DELETE", f"servers/{server['uuid']}/").status_code == 204
    assert alice.ok("GET", f"drives/{cdrom['uuid']}/")["status"] == "unmounted"


def test_a_clone_deleted_while_copying_leaves_no_volume(alice: Api, strato_server: StratoServer) -> None:
    """libcloud destroys a fresh clone with recurse=all_drives at once (issue 11, defect 5)."""
    pool = strato_server.data_dir / "pools" / "local"
    source = upload(alice, "to-copy.img", os.urandom(4 * 2**20) + bytes(60 * 2**20))
    before = sorted(p.name for p in pool.iterdir())
    copies = []
    for n in range(3):
        copy = alice.ok("POST", f"drives/{source}/action/?do=clone", {"name": f"copy-{n}"}, 202)["objects"][0]
        r = alice.request("DELETE", f"drives/{copy['uuid']}/")  # cloning_dst, or done already: both go
        assert r.status_code == 204, r.text
        copies.append(copy["uuid"])
    for uuid in copies:
        assert alice.get(f"drives/{uuid}/").status_code == 404
    wait_for(lambda: alice.ok("GET", f"drives/{source}/")["status"] == "unmounted", 30, "the source settled")
    wait_for(lambda: sorted(p.name for p in pool.iterdir()) == before, 30, f"no copy left in {pool}")


def test_the_source_of_a_fresh_clone_starts(alice: Api) -> None:
    """Accepted at once; the boot waits for the copy, so the copy never sees the guest write."""
    source = upload(alice, "boots.img", GUEST.read_bytes())
    server = make_server(alice, drives=[{"drive": source, "device": "virtio", "dev_channel": "0:0",
                                         "boot_order": 1}])
    copy = alice.ok("POST", f"drives/{source}/action/?do=clone", {"name": "fresh"}, 202)["objects"][0]
    r = alice.post(f"servers/{server['uuid']}/action/?do=start")
    assert r.status_code == 202, r.text
    wait_for(lambda: alice.ok("GET", f"servers/{server['uuid']}/")["status"] == "running", 120, "running")
    assert alice.ok("GET", f"drives/{copy['uuid']}/")["status"] == "unmounted"
    assert alice.ok("GET", f"drives/{source}/")["status"] == "mounted"
    alice.post(f"servers/{server['uuid']}/action/?do=stop")
    wait_for(lambda: alice.ok("GET", f"servers/{server['uuid']}/")["status"] == "stopped", 60, "stopped")
