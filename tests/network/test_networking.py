"""Issue 7, "Networking" (and issue 12, "Real hosts"): real guests on a NAT public network and on
VLANs across two real hosts (tests/network/conftest.py: each its own network namespace and libvirtd).

Test guests (tests/guest, 128 MiB, TCG):

* ``pub`` (alice) runs NICs ``dhcp``, ``static`` (alice's granted IP), ``manual`` and one on VLAN A;
  it gets the leased and the reserved addresses by DHCP from its host's own libvirt network, none on
  ``manual``, and reaches ``peer`` over VLAN A;
* ``peer`` (alice, the other host) is on VLAN A only: the VLAN crosses hosts over VXLAN;
* ``other`` (bob) is on bob's VLAN with an address of VLAN A's subnet: it reaches nobody;
* ``mover`` (alice, VLAN B) is live-migrated to the other host, then ``mate`` starts on the host it
  left: they reach each other over VLAN B, which only the migrated guest's new host can have done.

What a guest sees is read from its serial console; where it runs, and its host's networks, are asked
of that host's own libvirtd and of the host's network namespace.  Private addresses come from a marker
disk (``STRATO-NETCONF:``, tests/guest/build-image.sh).
"""

from __future__ import annotations

import json
import re
from typing import Any

import libvirt
import pytest

from agents.networks import _vxlan_dev
from tests.hosts.harness import Host
from tests.hosts.test_migration import migrate
from tests.network.conftest import GATEWAY, RANGE, STATIC_IP, NetCluster
from tests.strato_process import ROOT, Api, upload, wait_for

GUEST_IMAGE = ROOT / "build" / "guest" / "strato-guest.img"
MiB = 1024 * 1024


def clones(api: Api, source: str, names: list[str]) -> list[str]:
    """Clones of a drive on the shared pool, all asked for at once (they copy side by side)."""
    uuids = []
    for name in names:
        r = api.post(f"drives/{source}/action/?do=clone", {"name": name, "storage_type": "zadara"})
        assert r.status_code == 202, r.text
        uuids.append(r.json()["objects"][0]["uuid"])
    wait_for(lambda: all(api.ok("GET", f"drives/{u}/")["status"] == "unmounted" for u in uuids), 120,
             f"clones {names}")
    return uuids


def clone(api: Api, source: str, name: str) -> str:
    return clones(api, source, [name])[0]


def netconf(api: Api, name: str, lines: list[str]) -> str:
    text = "\n".join(["STRATO-NETCONF:", *lines, ""]).encode()
    uuid = upload(api, name, text.ljust(1024 * 1024, b"\0"))
    return clone(api, uuid, name + "-shared")


def make_server(api: Api, name: str, boot: str, conf: str, nics: list[dict[str, Any]]) -> dict[str, Any]:
    body = {"name": name, "cpu": 1000, "mem": 128 * MiB, "vnc_password": "secret", "nics": nics,
            "drives": [{"drive": boot, "device": "virtio", "dev_channel": "0:0", "boot_order": 1},
                       {"drive": conf, "device": "virtio", "dev_channel": "0:1"}]}
    return api.ok("POST", "servers/", body, 201)["objects"][0]


def start(api: Api, uuid: str, avoid: list[str] | None = None) -> None:
    query = f"&avoid={','.join(avoid)}" if avoid else ""
    r = api.post(f"servers/{uuid}/action/?do=start{query}")
    assert r.status_code == 202, r.text


def serial(net: NetCluster, uuid: str, marker: str, timeout: float = 300, host: Host | None = None) -> str:
    """The guest's serial console as its host (by default: the one running it) logged it, once it shows ``marker``."""
    on = host or net.host_of(uuid)
    log = on.console_log(on.prefix + uuid)

    def text() -> str | None:
        t = log.read_text(errors="replace") if log.exists() else ""
        return t if marker in t else None

    return wait_for(text, timeout, f"{marker} in {log}")


def nets(text: str) -> dict[str, dict[str, str]]:
    out = {}
    for line in text.splitlines():
        if line.startswith("net "):
            fields = dict(kv.split("=", 1) for kv in line.split()[1:])
            out[fields["name"]] = fields
    return out


def ping_result(net: NetCluster, uuid: str, address: str, timeout: float, host: Host | None = None) -> str:
    text = serial(net, uuid, f"ping addr={address} result=", timeout, host)
    return re.search(rf"ping addr={re.escape(address)} result=(\w+)", text)[1]  # type: ignore[index]


def domain_networks(host: Host, uuid: str) -> list[str]:
    """The libvirt networks the host's own libvirtd has the domain's NICs on."""
    conn = libvirt.open(host.uri)
    try:
        xml = conn.lookupByUUIDString(uuid).XMLDesc(0)
    finally:
        conn.close()
    return re.findall(r"<source network=['\"]([^'\"]+)['\"]", xml)


def host_networks(host: Host) -> list[str]:
    """The libvirt networks the host's own libvirtd has defined."""
    conn = libvirt.open(host.uri)
    try:
        return conn.listDefinedNetworks() + conn.listNetworks()
    finally:
        conn.close()


def vxlan_link(net: NetCluster, host: Host, vlan: str) -> dict[str, Any]:
    """The VXLAN device of a VLAN's network in the host's network namespace (``ip -d -s link``), with the
    endpoints it floods to (``bridge fdb``)."""
    dev = _vxlan_dev(f"{host.prefix}net-vlan-{vlan}")
    [link] = json.loads(net.inside(host, "ip", "-j", "-d", "-s", "link", "show", "dev", dev))
    fdb = json.loads(net.inside(host, "bridge", "-j", "fdb", "show", "dev", dev))
    return {**link["linkinfo"]["info_data"], "master": link.get("master"), "rx": link["stats64"]["rx"]["packets"],
            "tx": link["stats64"]["tx"]["packets"], "dst": sorted(e["dst"] for e in fdb if "dst" in e)}


@pytest.fixture(scope="module")
def guests(net: NetCluster) -> dict[str, Any]:
    if not GUEST_IMAGE.exists():
        pytest.skip("build the test guest first: tests/guest/build-image.sh")
    alice, bob = net.alice, net.bob
    vlan_a, vlan_b, vlan_bob = net.vlans
    image = upload(alice, "strato-guest.img", GUEST_IMAGE.read_bytes())
    boots = clones(alice, image, [f"boot-{i}" for i in range(4)])
    confs = [netconf(alice, "conf-pub", ["addr eth3 10.99.0.1/24", "ping 10.99.0.2 90", f"beat {GATEWAY}"]),
             netconf(alice, "conf-peer", ["addr eth0 10.99.0.2/24", "ping 10.99.0.1 90"]),
             netconf(alice, "conf-mover", ["addr eth0 10.98.0.1/24", "ping 10.98.0.2 400"]),
             netconf(alice, "conf-mate", ["addr eth0 10.98.0.2/24", "ping 10.98.0.1 120"])]
    bob_boot = clone(bob, upload(bob, "strato-guest.img", GUEST_IMAGE.read_bytes()), "boot-bob")
    bob_conf = netconf(bob, "conf-other", ["addr eth0 10.99.0.3/24", "ping 10.99.0.1 15"])
    pub = make_server(alice, "pub", boots[0], confs[0], [
        {"ip_v4_conf": {"conf": "dhcp", "ip": None}, "model": "virtio"},
        {"ip_v4_conf": {"conf": "static", "ip": STATIC_IP}, "model": "virtio"},
        {"ip_v4_conf": {"conf": "manual", "ip": None}, "model": "virtio"},
        {"vlan": vlan_a, "model": "virtio"}])
    peer = make_server(alice, "peer", boots[1], confs[1], [{"vlan": vlan_a}])
    mover = make_server(alice, "mover", boots[2], confs[2], [{"vlan": vlan_b}])
    mate = make_server(alice, "mate", boots[3], confs[3], [{"vlan": vlan_b}])  # started after the move
    other = make_server(bob, "other", bob_boot, bob_conf, [{"vlan": vlan_bob}])
    start(alice, pub["uuid"])
    start(alice, peer["uuid"], avoid=[pub["uuid"]])
    start(bob, other["uuid"])
    start(alice, mover["uuid"])
    made = {"pub": pub, "peer": peer, "other": other, "mover": mover, "mate": mate}
    return {**made, "move": move_mover(net, made)}


def move_mover(net: NetCluster, guests: dict[str, Any]) -> dict[str, Any]:
    """Live-migrate ``mover`` to the other host once its network is up, then start ``mate`` on the host it
    left.  Done here, not in its test, so that mate boots while the other tests wait on their guests;
    the test checks what happened (what it finds before the move is recorded for it)."""
    mover, mate = guests["mover"]["uuid"], guests["mate"]["uuid"]
    source = net.host_of(mover)
    serial(net, mover, "STRATO-NET-DONE")  # its address is up; its pings to the absent mate go on
    target = next(h for h in net.hosts.hosts if h.name != source.name)
    vlan_net = f"{target.prefix}net-vlan-{net.vlans[1]}"
    before = vlan_net in host_networks(target)
    result = migrate(net, mover, "--to", target.name)
    if result.get("state") == "success":
        start(net.alice, mate, avoid=[mover])
    return {"source": source, "target": target, "result": result, "target_had_network": before}


# --- resources and references -----------------------------------------------------------------------


def test_ips_and_vlans_resources(net: NetCluster) -> None:
    alice, bob = net.alice, net.bob
    [ip] = [i for i in alice.ok("GET", "ips/")["objects"] if i["uuid"] == STATIC_IP]
    assert ip == {"owner": ip["owner"], "resource_uri": f"/api/2.0/ips/{STATIC_IP}/", "server": None,
                  "uuid": STATIC_IP}
    ip = alice.ok("GET", f"ips/{STATIC_IP}/")
    assert (ip["netmask"], ip["gateway"], ip["nameservers"]) == (24, GATEWAY, [GATEWAY])
    assert ip["subscription"]["resource_uri"].startswith("/api/2.0/subscriptions/")
    assert bob.get(f"ips/{STATIC_IP}/").status_code == 404
    assert alice.ok("GET", "vlans/")["meta"]["total_count"] == 2
    assert set(alice.ok("GET", "vlans/")["objects"][0]) == {"owner", "resource_uri", "uuid"}
    vlan = alice.ok("GET", f"vlans/{net.vlans[0]}/")
    assert vlan["bottom_vlan_tag"] >= 100 and vlan["subscription"] is not None
    # meta and tags are editable; name filters match meta.name
    got = alice.ok("PUT", f"ips/{STATIC_IP}/", {"meta": {"name": "front door"}, "netmask": 8})
    assert got["meta"] == {"name": "front door"} and got["netmask"] == 24
    assert [i["uuid"] for i in alice.ok("GET", "ips/?name__contains=door")["objects"]] == [STATIC_IP]
    assert alice.ok("GET", "ips/?name=nothing")["objects"] == []
    tag = alice.ok("POST", "tags/", {"name": "net", "resources": [STATIC_IP, net.vlans[0]]}, 201)["objects"][0]
    assert {r["res_type"] for r in tag["resources"]} == {"ips", "vlans"}
    assert alice.ok("GET", f"vlans/{net.vlans[0]}/")["tags"][0]["uuid"] == tag["uuid"]
    assert [i["uuid"] for i in alice.ok("GET", f"tags/{tag['uuid']}/ips/")["objects"]] == [STATIC_IP]
    assert alice.ok("GET", f"vlans/?tag={tag['uuid']}")["meta"]["total_count"] == 1
    alice.ok("PUT", f"vlans/{net.vlans[1]}/", {"tags": [tag["uuid"]]})
    assert len(alice.ok("GET", f"tags/{tag['uuid']}/")["resources"]) == 3
    assert alice.post("ips/", {}).status_code == 405 and alice.delete(f"vlans/{net.vlans[0]}/").status_code == 405


def test_references_are_the_callers_and_static_is_exclusive(net: NetCluster) -> None:
    alice, bob = net.alice, net.bob
    base = {"cpu": 1000, "mem": 128 * MiB, "vnc_password": "x"}
    for nic, point in (({"vlan": net.vlans[0]}, "nics.0.vlan"),
                       ({"ip_v4_conf": {"conf": "static", "ip": STATIC_IP}}, "nics.0.ip_v4_conf.ip")):
        r = bob.post("servers/", {"name": "thief", **base, "nics": [nic]})
        assert r.status_code == 400 and r.json()[0]["error_point"] == point, r.text
    assert bob.ok("POST", "servers/", {"name": "own", **base, "nics": [{"vlan": net.vlans[2]}]}, 201)
    s1 = alice.ok("POST", "servers/", {"name": "s1", **base, "nics": [
        {"ip_v4_conf": {"conf": "static", "ip": STATIC_IP}}]}, 201)["objects"][0]
    assert alice.ok("GET", f"ips/{STATIC_IP}/")["server"]["uuid"] == s1["uuid"]
    r = alice.post("servers/", {"name": "s2", **base, "nics": [{"ip_v4_conf": {"conf": "static", "ip": STATIC_IP}}]})
    assert r.status_code == 400 and "static" in r.json()[0]["error_message"], r.text
    r = alice.put(f"servers/{s1['uuid']}/", {"nics": [{"ip_v4_conf": {"conf": "static", "ip": STATIC_IP}},
                                                      {"ip_v4_conf": {"conf": "static", "ip": STATIC_IP}}]})
    assert r.status_code == 400 and r.json()[0]["error_point"] == "nics.1.ip_v4_conf.ip", r.text
    r = alice.post("servers/", {"name": "s3", **base, "nics": [{"vlan": net.vlans[0], "ip_v4_conf": {"conf": "dhcp"}}]})
    assert r.status_code == 400, r.text
    # Freed when the NIC goes, or the server is deleted
    alice.ok("PUT", f"servers/{s1['uuid']}/", {"nics": [{"ip_v4_conf": {"conf": "dhcp"}}]})
    assert alice.ok("GET", f"ips/{STATIC_IP}/")["server"] is None
    alice.ok("PUT", f"servers/{s1['uuid']}/", {"nics": [{"ip_v4_conf": {"conf": "static", "ip": STATIC_IP}}]})
    alice.ok("DELETE", f"servers/{s1['uuid']}/", status=204)
    assert alice.ok("GET", f"ips/{STATIC_IP}/")["server"] is None


# --- real guests ----------------------------------------------------------------------------------


def test_guests_get_their_addresses(net: NetCluster, guests: dict[str, Any]) -> None:
    pub = guests["pub"]
    text = serial(net, pub["uuid"], "STRATO-NET-DONE")
    got = nets(text)
    macs = [n["mac"] for n in pub["nics"]]
    assert [got[f"eth{i}"]["mac"] for i in range(4)] == macs
    dhcp = got["eth0"]["ip"].split("/")[0]
    assert RANGE[0] <= dhcp <= RANGE[1] and got["eth0"]["ip"].endswith("/24"), got
    assert got["eth1"]["ip"] == f"{STATIC_IP}/24", got
    assert got["eth2"]["ip"] == "none", got          # manual: connected, nothing handed out
    assert got["eth3"]["ip"] == "10.99.0.1/24", got
    # the lease is listed in /ips/ without subscription, with its server
    lease = net.alice.ok("GET", f"ips/{dhcp}/")
    assert lease["subscription"] is None and lease["server"]["uuid"] == pub["uuid"]
    assert net.alice.ok("GET", f"ips/{STATIC_IP}/")["server"]["uuid"] == pub["uuid"]
    assert net.bob.get(f"ips/{dhcp}/").status_code == 404


def test_vxlan_vlan_between_guests_on_two_real_hosts(net: NetCluster, guests: dict[str, Any]) -> None:
    """pub and peer run in two hosts' own libvirtds, on one VLAN: they reach each other, through a VXLAN
    device in each host's namespace whose far end is the other host; bob's guest reaches neither."""
    pub, peer, other = guests["pub"]["uuid"], guests["peer"]["uuid"], guests["other"]["uuid"]
    vlan_a, vlan_bob = net.vlans[0], net.vlans[2]
    pub_host, peer_host = net.host_of(pub), net.host_of(peer)
    assert pub_host.name != peer_host.name, (pub_host.name, peer_host.name)
    for uuid, host in ((pub, pub_host), (peer, peer_host)):
        assert f"{host.prefix}net-vlan-{vlan_a}" in domain_networks(host, uuid)
    assert ping_result(net, pub, "10.99.0.2", 300) == "ok"
    assert ping_result(net, peer, "10.99.0.1", 300) == "ok"
    assert ping_result(net, other, "10.99.0.1", 300) == "fail"   # bob's VLAN does not see alice's
    tag = net.alice.ok("GET", f"vlans/{vlan_a}/")["bottom_vlan_tag"]
    for host, far in ((pub_host, peer_host), (peer_host, pub_host)):
        link = vxlan_link(net, host, vlan_a)
        assert (link["id"], link["local"], link["dst"]) == (tag, host.address, [far.address]), link
        assert link["master"] and link["rx"] > 0 and link["tx"] > 0, link  # the pings went through it
    other_host = net.host_of(other)
    assert vxlan_link(net, other_host, vlan_bob)["id"] == net.bob.ok("GET", f"vlans/{vlan_bob}/")["bottom_vlan_tag"]
    assert net.bob.ok("GET", f"vlans/{vlan_bob}/")["bottom_vlan_tag"] != tag
    vlan = net.alice.ok("GET", f"vlans/{vlan_a}/")
    assert {s["uuid"] for s in vlan["servers"]} == {pub, peer}


def test_runtime_shows_addresses_and_growing_counters(net: NetCluster, guests: dict[str, Any]) -> None:
    pub = guests["pub"]
    serial(net, pub["uuid"], "STRATO-NET-DONE")
    dhcp = nets(serial(net, pub["uuid"], "STRATO-NET-DONE"))["eth0"]["ip"].split("/")[0]

    def runtime() -> dict[str, Any]:
        return net.alice.ok("GET", f"servers/{pub['uuid']}/")

    got = wait_for(lambda: (r := runtime())["runtime"]["nics"][0]["io"]["packets_sent"] > 0 and r, 60, "counters")
    nics = got["runtime"]["nics"]
    assert [n["mac"] for n in nics] == [n["mac"] for n in pub["nics"]]
    assert nics[0]["ip_v4"]["uuid"] == dhcp and nics[1]["ip_v4"]["uuid"] == STATIC_IP
    assert nics[2]["ip_v4"] is None and nics[3]["ip_v4"] is None
    assert [n["interface_type"] for n in nics] == ["public", "public", "public", "private"]
    assert got["nics"][0]["runtime"]["ip_v4"]["uuid"] == dhcp
    first = nics[0]["io"]
    wait_for(lambda: runtime()["runtime"]["nics"][0]["io"]["bytes_sent"] > first["bytes_sent"], 30, "growth")


def test_live_migrated_guest_keeps_its_vlan(net: NetCluster, guests: dict[str, Any]) -> None:
    """mover moved to the other host, which had no network of its VLAN before (libvirt needs it there);
    then mate started on the host it left: they reach each other over VXLAN, so the link is the new host's."""
    mover, mate = guests["mover"]["uuid"], guests["mate"]["uuid"]
    move = guests["move"]
    source, target, result = move["source"], move["target"], move["result"]
    assert result["returncode"] == 0 and result["state"] == "success", result
    assert (result["from"], result["to"]) == (source.name, target.name), result
    assert not move["target_had_network"]
    assert net.running_on(mover) == [target.name] and net.defined_on(mover) == [target.name]
    assert f"{target.prefix}net-vlan-{net.vlans[1]}" in domain_networks(target, mover)
    assert net.host_of(mate).name == source.name
    assert ping_result(net, mate, "10.98.0.1", 300) == "ok"
    # The answer is in the console log of the new host: the guest got it after the move.
    assert ping_result(net, mover, "10.98.0.2", 300, host=target) == "ok"
    assert "ping addr=10.98.0.2" not in source.console_log(source.prefix + mover).read_text(errors="replace")
    assert vxlan_link(net, target, net.vlans[1])["dst"] == [source.address]


def test_stop_releases_lease_and_reservations(net: NetCluster, guests: dict[str, Any]) -> None:
    alice, pub = net.alice, guests["pub"]
    dhcp = nets(serial(net, pub["uuid"], "STRATO-NET-DONE"))["eth0"]["ip"].split("/")[0]
    host = net.host_of(pub["uuid"])
    servers = {name: guests[name] for name in ("pub", "peer", "other", "mover", "mate")}
    owners = {name: net.bob if name == "other" else alice for name in servers}
    for name, g in servers.items():
        owners[name].post(f"servers/{g['uuid']}/action/?do=stop")
    wait_for(lambda: all(owners[n].ok("GET", f"servers/{g['uuid']}/")["status"] == "stopped"
                         for n, g in servers.items()), 60, "stopped")
    assert not any(net.running_on(g["uuid"]) for g in servers.values())
    assert alice.get(f"ips/{dhcp}/").status_code == 404
    assert alice.ok("GET", f"ips/{STATIC_IP}/")["server"]["uuid"] == pub["uuid"]  # still its static conf
    conn = libvirt.open(host.uri)  # the DHCP server of the host that ran it holds no reservation now
    try:
        xml = conn.networkLookupByName(f"{host.prefix}net-pub-public").XMLDesc(0)
    finally:
        conn.close()
    assert pub["nics"][0]["mac"] not in xml and pub["nics"][1]["mac"] not in xml
