"""Two installations on one libvirtd never see each other (issue 11, defect 2).

Neither sets a name prefix: each picks its own when it registers its local host, keeps it in
its database, and its agent defines, lists and deletes only what carries it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.strato_process import Api, StratoServer, remove_libvirt_objects, wait_for

pytestmark = pytest.mark.libvirt


def prefix_of(node: StratoServer) -> str:
    with contextlib.closing(sqlite3.connect(node.data_dir / "strato.db")) as con:
        [(command,)] = con.execute("SELECT agent_command FROM hosts WHERE name = 'local'").fetchall()
    argv = json.loads(command)
    return argv[argv.index("--prefix") + 1]


@pytest.fixture(scope="module")
def two() -> Iterator[list[tuple[StratoServer, Api]]]:
    roots, nodes = [], []
    try:
        for n in range(2):
            root = Path(tempfile.mkdtemp(prefix=f"strato-inst{n}-", dir="/var/tmp"))
            root.chmod(0o755)
            roots.append(root)
            node = StratoServer(root / "data", extra_env={"STRATO_AGENT_PREFIX": ""})  # the default: unset
            node.data_dir.mkdir()
            node.data_dir.chmod(0o755)
            api = node.add_user("ivy@example.com", "ivy-pw")
            nodes.append((node.start(), api))
        for node, _ in nodes:
            node.wait_host_up()
        yield nodes
    finally:
        for node, _ in nodes:
            node.stop()
            with contextlib.suppress(Exception):
                remove_libvirt_objects(prefix_of(node))
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def pools() -> dict[str, str]:
    names = subprocess.run(["virsh", "-q", "pool-list", "--all", "--name"], capture_output=True, text=True).stdout
    out = {}
    for name in names.split():
        xml = subprocess.run(["virsh", "pool-dumpxml", name], capture_output=True, text=True).stdout
        path = xml.split("<path>", 1)[1].split("</path>", 1)[0] if "<path>" in xml else ""
        out[name] = path
    return out


def test_each_installation_keeps_to_its_own_objects(two: list[tuple[StratoServer, Api]]) -> None:
    (a, alice), (b, bea) = two
    pa, pb = prefix_of(a), prefix_of(b)
    assert pa != pb and pa.startswith("strato-") and pb.startswith("strato-")
    found = pools()
    assert found[f"{pa}default"].startswith(str(a.data_dir)) and found[f"{pb}default"].startswith(str(b.data_dir))
    drives = []
    for api in (alice, bea):  # both at once: create, then clone and delete on both sides
        drives.append(api.ok("POST", "drives/", {"name": "d", "size": 2**30, "media": "disk"}, 201)["objects"][0])
    for api, drive in zip((alice, bea), drives, strict=True):
        wait_for(lambda api=api, drive=drive: api.ok("GET", f"drives/{drive['uuid']}/")["status"] == "unmounted",
                 60, "created")
        copy = api.ok("POST", f"drives/{drive['uuid']}/action/?do=clone", {"name": "c"}, 202)["objects"][0]
        wait_for(lambda api=api, copy=copy: api.ok("GET", f"drives/{copy['uuid']}/")["status"] == "unmounted",
                 60, "cloned")
    assert alice.request("DELETE", f"drives/{drives[0]['uuid']}/").status_code == 204
    # The other installation's drive, its volume and its pool are untouched.
    assert bea.ok("GET", f"drives/{drives[1]['uuid']}/")["status"] == "unmounted"
    assert pools()[f"{pb}default"] == found[f"{pb}default"]
    copy = bea.ok("POST", f"drives/{drives[1]['uuid']}/action/?do=clone", {"name": "again"}, 202)["objects"][0]
    wait_for(lambda: bea.ok("GET", f"drives/{copy['uuid']}/")["status"] == "unmounted", 60, "cloned again")
    assert "redefining" not in a.log.read_text() + b.log.read_text()
