"""The server context end to end (spec §33): a real guest reads its ttyS1 through the agent,
and the document follows the API as the server runs.

The test guest's init reads the whole document once at boot and then polls
``/meta/context_probe`` and ``/global_context/context_probe``, printing each change on its
first serial port: what the guest sees is read from its console log, never from its network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.consoles.conftest import Guest, guest_node
from tests.strato_process import wait_for

pytestmark = pytest.mark.libvirt


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    yield from guest_node()


def seen(guest: Guest, value_meta: str, value_global: str) -> bool:
    return f"STRATO-CONTEXT-PROBE meta={value_meta} global={value_global}" in guest.serial_log()


def test_the_guest_reads_its_whole_context_at_boot(guest: Guest) -> None:
    def whole() -> re.Match[str] | None:
        return re.search(r"STRATO-CONTEXT (\{.*\})\r?$", guest.serial_log(), re.M)

    match = wait_for(whole, 30, "the context document in the guest's console")
    document = json.loads(match.group(1))
    server = guest.api.ok("GET", f"servers/{guest.uuid}/")
    assert document["uuid"] == guest.uuid and document["name"] == server["name"]
    for hidden in ("owner", "status", "runtime", "resource_uri", "jobs", "grantees", "permissions", "context"):
        assert hidden not in document
    drive = guest.api.ok("GET", f"drives/{server['drives'][0]['drive']['uuid']}/")
    assert document["drives"][0]["drive"]["name"] == drive["name"]
    assert document["drives"][0]["drive"]["size"] == drive["size"]
    assert "owner" not in document["drives"][0]["drive"]
    assert document["global_context"] == {} and document["pubkeys"] == []
    assert document["meta"]["ssh_public_key"] == ""  # always there: cloud-init indexes it


def test_changes_of_a_running_server_reach_the_guest(guest: Guest) -> None:
    r = guest.api.put(f"servers/{guest.uuid}/", {"name": "console-guest", "meta": {"context_probe": "one"}})
    assert r.status_code == 200, r.text
    wait_for(lambda: seen(guest, "one", ""), 30, "meta probe one in the guest's console")
    assert guest.api.post("global_context/", {"context_probe": "g1"}).status_code == 200
    wait_for(lambda: seen(guest, "one", "g1"), 30, "global probe g1 in the guest's console")


def test_another_users_changes_never_reach_the_guest(guest: Guest) -> None:
    assert guest.other.post("global_context/", {"context_probe": "intruder"}).status_code == 200
    guest.api.put(f"servers/{guest.uuid}/", {"name": "console-guest", "meta": {"context_probe": "two"}})
    wait_for(lambda: seen(guest, "two", "g1"), 30, "meta probe two in the guest's console")
    assert "intruder" not in guest.serial_log()
