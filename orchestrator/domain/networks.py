"""Networking policy on the API node: pools, grants, NIC references, leases and the agents'
network specs (issue 7; spec §17, §25, §26).

* An operator defines public networks (``strato networks add``): a subnet, its gateway, a DHCP
  range and nameservers, realised on each host as libvirt NAT or on an operator's bridge.
* Addresses of a network are granted to users (``strato ips assign``): rows of ``ips`` with a
  synthetic subscription; VLANs are created by the operator and assigned (``strato vlans``).
* A NIC's ``static`` IP must be the caller's and static on no other NIC; the IP's ``server``
  then points at that server.  ``dhcp`` NICs lease a free range address when the server starts
  (an ``ips`` row without subscription, so no two NICs get one address), released at stop.
* Every public NIC's address reaches the guest as a DHCP reservation MAC → IP on its host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db.models import Host, Ip, Network, Server, User, Vlan, VlanMember
from orchestrator.domain.errors import DomainError, Kind, invalid

# --- operator side (strato networks / ips / vlans) --------------------------------------------------


async def add_network(s: AsyncSession, name: str, subnet: str, gateway: str, first: str, last: str,
                      nameservers: list[str], bridge: str | None) -> Network:
    try:
        net = ipaddress.ip_network(subnet)
        gw, lo, hi = (ipaddress.ip_address(a) for a in (gateway, first, last))
        dns = [str(ipaddress.ip_address(a)) for a in nameservers]
    except ValueError as e:
        raise ValueError(str(e)) from None
    if net.version != 4:
        raise ValueError("only IPv4 networks are supported")
    if not all(a in net for a in (gw, lo, hi)) or lo > hi:
        raise ValueError(f"gateway and range must lie in {net} (first <= last)")
    if lo <= gw <= hi:
        raise ValueError("the gateway must not be inside the DHCP range")
    if not name.replace("-", "").isalnum() or len(name) > 32:
        raise ValueError("network names are letters, digits and '-' (at most 32)")
    if bridge is not None and len(bridge) > 15:
        raise ValueError("bridge names have at most 15 characters")
    if await s.get(Network, name) is not None:
        raise ValueError(f"network {name} exists already")
    for other in (await s.scalars(select(Network))).all():
        if ipaddress.ip_network(other.subnet).overlaps(net):
            raise ValueError(f"{net} overlaps network {other.name} ({other.subnet})")
    row = Network(name=name, subnet=str(net), gateway=str(gw), range_first=str(lo), range_last=str(hi),
                  nameservers=dns, bridge=bridge)
    s.add(row)
    await s.flush()
    return row


def network_json(n: Network) -> dict[str, Any]:
    return {"name": n.name, "subnet": n.subnet, "gateway": n.gateway, "range": f"{n.range_first}-{n.range_last}",
            "nameservers": n.nameservers, "bridge": n.bridge}


async def _user(s: AsyncSession, email: str) -> User:
    user = await s.scalar(select(User).where(User.email == email))
    if user is None:
        raise ValueError(f"no user {email}")
    return user


async def assign_ip(s: AsyncSession, address: str, email: str) -> Ip:
    """Grant an address of a network to a user; it must not be in use (granted or leased)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as e:
        raise ValueError(str(e)) from None
    user = await _user(s, email)
    net = next((n for n in (await s.scalars(select(Network))).all() if ip in ipaddress.ip_network(n.subnet)), None)
    if net is None:
        raise ValueError(f"{ip} is in no network (strato networks add)")
    if ip in (ipaddress.ip_network(net.subnet).network_address, ipaddress.ip_network(net.subnet).broadcast_address,
              ipaddress.ip_address(net.gateway)):
        raise ValueError(f"{ip} is the network, broadcast or gateway address")
    existing = await s.get(Ip, str(ip))
    if existing is not None:
        what = "granted to a user" if existing.subscription is not None else "leased to a running server"
        raise ValueError(f"{ip} is {what} already")
    subscription = (await s.scalar(select(func.max(Ip.subscription)))) or 0
    row = Ip(uuid=str(ip), network_name=net.name, owner_uuid=user.uuid, subscription=subscription + 1, meta={})
    s.add(row)
    await s.flush()
    return row


async def unassign_ip(s: AsyncSession, address: str) -> None:
    row = await s.get(Ip, address)
    if row is None or row.subscription is None:
        raise ValueError(f"{address} is granted to nobody")
    if row.server_uuid is not None:
        raise ValueError(f"{address} is configured on server {row.server_uuid}; remove it there first")
    await s.delete(row)


async def add_vlans(s: AsyncSession, count: int, tag: int | None) -> list[Vlan]:
    """New unassigned VLANs; tags (VXLAN VNIs) from ``tag`` or the next free ones from 100."""
    used = set((await s.scalars(select(Vlan.tag))).all())
    rows = []
    next_tag = tag if tag is not None else 100
    for _ in range(count):
        if tag is not None and next_tag in used:
            raise ValueError(f"tag {next_tag} is in use")
        while next_tag in used:
            next_tag += 1
        if not 0 < next_tag < 1 << 24:
            raise ValueError("tags are 1..16777215")
        used.add(next_tag)
        rows.append(Vlan(tag=next_tag, meta={}))
        next_tag += 1
    s.add_all(rows)
    await s.flush()
    return rows


async def assign_vlan(s: AsyncSession, uuid: str, email: str) -> Vlan:
    vlan = await s.get(Vlan, uuid)
    if vlan is None:
        raise ValueError(f"no VLAN {uuid}")
    if vlan.owner_uuid is not None:
        raise ValueError(f"VLAN {uuid} is assigned already")
    vlan.owner_uuid = (await _user(s, email)).uuid
    vlan.subscription = ((await s.scalar(select(func.max(Vlan.subscription)))) or 0) + 1
    return vlan


def vlan_json(v: Vlan, emails: dict[str, str]) -> dict[str, Any]:
    return {"uuid": v.uuid, "tag": v.tag, "owner": emails.get(v.owner_uuid or "")}


# --- NIC references (write_server) -------------------------------------------------------------------


async def check_nic_references(s: AsyncSession, server: Server, owner: str, *, new: bool = False) -> None:
    """The VLANs and static IPs of ``server.nics`` are the caller's, a static IP is on one NIC
    only; records the IPs' ``server`` and the VLANs' members.  Error points are relative to ``nics``.
    ``new``: the server was just created (no IP or VLAN names it yet)."""
    errors: list[DomainError] = []
    vlans = [(i, n["vlan"]) for i, n in enumerate(server.nics) if n["vlan"]]
    statics = [(i, n["ip_v4_conf"]["ip"]) for i, n in enumerate(server.nics)
               if n["ip_v4_conf"] and n["ip_v4_conf"]["conf"] == "static"]
    mine_vlans = set((await s.scalars(select(Vlan.uuid).where(
        Vlan.uuid.in_([v for _, v in vlans]), Vlan.owner_uuid == owner))).all()) if vlans else set()
    for i, uuid in vlans:
        if uuid not in mine_vlans:
            errors.append(invalid(f"VLAN {uuid} does not exist", f"{i}.vlan"))
    ips = {ip.uuid: ip for ip in (await s.scalars(select(Ip).where(
        Ip.uuid.in_([a for _, a in statics]), Ip.owner_uuid == owner, Ip.subscription.is_not(None)))).all()} \
        if statics else {}
    seen: set[str] = set()
    for i, address in statics:
        point = f"{i}.ip_v4_conf.ip"
        ip = ips.get(address)
        if ip is None:
            errors.append(invalid(f"IP {address} does not exist", point))
        elif address in seen:
            errors.append(invalid(f"IP {address} is static on another NIC of this server", point))
        elif ip.server_uuid not in (None, server.uuid):
            errors.append(invalid(f"IP {address} is configured as static on server {ip.server_uuid}", point))
        seen.add(address)
    if errors:
        raise DomainError.collect(errors)
    # The IP's ``server`` follows the definitions: set for this server's statics, cleared for the rest.
    if not new:
        for ip in (await s.scalars(select(Ip).where(Ip.server_uuid == server.uuid,
                                                    Ip.subscription.is_not(None)))).all():
            if ip.uuid not in seen:
                ip.server_uuid = None
    for ip in ips.values():
        ip.server_uuid = server.uuid
    await sync_vlan_members(s, server.uuid, [v for _, v in vlans], new=new)


async def sync_vlan_members(s: AsyncSession, server_uuid: str, vlans: Iterable[str], *, new: bool = False) -> None:
    if not new:
        await s.execute(delete(VlanMember).where(VlanMember.server_uuid == server_uuid))
    members = [VlanMember(vlan_uuid=v, server_uuid=server_uuid) for v in dict.fromkeys(vlans)]
    if members or not new:
        s.add_all(members)
        await s.flush()


async def forget_servers(s: AsyncSession, server_uuids: list[str]) -> None:
    """Deleted servers: their static IPs are free again, their leases and memberships go."""
    for ip in (await s.scalars(select(Ip).where(Ip.server_uuid.in_(server_uuids)))).all():
        if ip.subscription is None:
            await s.delete(ip)
        else:
            ip.server_uuid = None
    await s.execute(delete(VlanMember).where(VlanMember.server_uuid.in_(server_uuids)))


# --- start and stop ----------------------------------------------------------------------------------


async def lease_addresses(s: AsyncSession, server: Server) -> None:
    """Give each ``dhcp`` NIC an address of the pool and each public NIC its reservation
    (``nic["lease"]``, what the agent reserves and runtime shows).  Without a network a public
    NIC stays a user-mode NIC (no lease)."""
    networks = list((await s.scalars(select(Network).order_by(Network.created))).all())
    await release_addresses(s, server)
    taken = set((await s.scalars(select(Ip.uuid))).all())
    nics = []
    for nic in server.nics:
        conf = nic["ip_v4_conf"]
        lease = None
        if conf and conf["conf"] == "static":
            lease = conf["ip"]
        elif conf and conf["conf"] == "dhcp" and networks:
            lease = _free_address(networks, taken)
            if lease is None:
                raise DomainError(Kind.EXHAUSTED, "No free address is left in the public networks' DHCP pools")
            taken.add(lease[1])
            s.add(Ip(uuid=lease[1], network_name=lease[0], owner_uuid=server.owner_uuid, subscription=None,
                     server_uuid=server.uuid, mac=nic["mac"], meta={}))
            lease = lease[1]
        nics.append({**nic, "lease": lease})
    server.nics = nics
    await s.flush()


def _free_address(networks: list[Network], taken: set[str]) -> tuple[str, str] | None:
    for net in networks:
        address = ipaddress.ip_address(net.range_first)
        last = ipaddress.ip_address(net.range_last)
        while address <= last:
            if str(address) not in taken:
                return net.name, str(address)
            address += 1
    return None


async def release_addresses(s: AsyncSession, server: Server) -> None:
    await s.execute(delete(Ip).where(Ip.server_uuid == server.uuid, Ip.subscription.is_(None)))
    if any("lease" in nic for nic in server.nics):
        server.nics = [{k: v for k, v in nic.items() if k != "lease"} for nic in server.nics]


async def reservations_of(s: AsyncSession, server: Server) -> list[tuple[str, str]]:
    """The (network, mac) DHCP reservations a running server holds on its host."""
    leases = [(n["lease"], n["mac"]) for n in server.nics if n.get("lease")]
    nets = dict((await s.execute(select(Ip.uuid, Ip.network_name).where(
        Ip.uuid.in_([a for a, _ in leases])))).tuples().all())
    return [(f"pub-{nets[a]}", mac) for a, mac in leases if a in nets]


def vlan_network(vlan_uuid: str, tag: int, peers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": f"vlan-{vlan_uuid}", "kind": "isolated", "vni": tag, "peers": peers}


def public_network(net: Network) -> dict[str, Any]:
    if net.bridge:
        return {"name": f"pub-{net.name}", "kind": "bridge", "bridge": net.bridge}
    return {"name": f"pub-{net.name}", "kind": "nat", "address": net.gateway,
            "prefix": ipaddress.ip_network(net.subnet).prefixlen}


async def network_plan(s: AsyncSession, server: Server) -> list[tuple[dict[str, Any] | None, str | None]]:
    """Per NIC: the agent's network object (None: a user-mode NIC) and the reserved address."""
    networks = {n.name: n for n in (await s.scalars(select(Network).order_by(Network.created))).all()}
    ip_nets = dict((await s.execute(select(Ip.uuid, Ip.network_name).where(
        Ip.uuid.in_([n.get("lease") for n in server.nics if n.get("lease")])))).tuples().all())
    tags = dict((await s.execute(select(Vlan.uuid, Vlan.tag).where(
        Vlan.uuid.in_([n["vlan"] for n in server.nics if n["vlan"]])))).tuples().all())
    peers = [h.facts["vxlan"] for h in (await s.scalars(select(Host).where(Host.state != "down"))).all()
             if h.facts.get("vxlan")]
    plan: list[tuple[dict[str, Any] | None, str | None]] = []
    for nic in server.nics:
        lease = nic.get("lease")
        if nic["vlan"] and nic["vlan"] in tags:
            plan.append((vlan_network(nic["vlan"], tags[nic["vlan"]], peers), None))
        elif lease and lease in ip_nets:
            plan.append((public_network(networks[ip_nets[lease]]), lease))
        elif nic["ip_v4_conf"] and networks:  # manual (or a lease-less public NIC): connected, no address
            plan.append((public_network(next(iter(networks.values()))), None))
        else:
            plan.append((None, None))
    return plan
