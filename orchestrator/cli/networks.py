"""``strato networks|ips|vlans``: the operator's side of networking (rules in orchestrator/domain/networks.py).

A running API node reads these rows at the next start of a server; nothing needs a restart.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.cli.admin import run_admin
from orchestrator.db.models import Ip, Network, User, Vlan
from orchestrator.domain.networks import (
    add_network,
    add_vlans,
    assign_ip,
    assign_vlan,
    network_json,
    unassign_ip,
    vlan_json,
)


async def _emails(s: AsyncSession) -> dict[str, str]:
    return dict((await s.execute(select(User.uuid, User.email))).tuples().all())


def networks_add(args: argparse.Namespace) -> int:
    first, sep, last = args.range.partition("-")
    if not sep:
        print("strato: --range wants FIRST-LAST", file=sys.stderr)
        return 2

    async def work(s: AsyncSession) -> Any:
        return network_json(await add_network(s, args.name, args.subnet, args.gateway, first, last,
                                              args.nameserver or [], args.bridge))

    return run_admin(args, work)


def networks_list(args: argparse.Namespace) -> int:
    async def work(s: AsyncSession) -> Any:
        return [network_json(n) for n in (await s.scalars(select(Network).order_by(Network.created))).all()]

    return run_admin(args, work)


def ips_assign(args: argparse.Namespace) -> int:
    async def work(s: AsyncSession) -> Any:
        ip = await assign_ip(s, args.ip, args.email)
        return {"ip": ip.uuid, "network": ip.network_name, "owner": args.email}

    return run_admin(args, work)


def ips_unassign(args: argparse.Namespace) -> int:
    return run_admin(args, lambda s: unassign_ip(s, args.ip))


def ips_list(args: argparse.Namespace) -> int:
    async def work(s: AsyncSession) -> Any:
        emails = await _emails(s)
        return [{"ip": ip.uuid, "network": ip.network_name, "owner": emails.get(ip.owner_uuid),
                 "kind": "granted" if ip.subscription is not None else "lease", "server": ip.server_uuid}
                for ip in (await s.scalars(select(Ip).order_by(Ip.created))).all()]

    return run_admin(args, work)


def vlans_add(args: argparse.Namespace) -> int:
    async def work(s: AsyncSession) -> Any:
        return [vlan_json(v, {}) for v in await add_vlans(s, args.count, args.tag)]

    return run_admin(args, work)


def vlans_assign(args: argparse.Namespace) -> int:
    async def work(s: AsyncSession) -> Any:
        return vlan_json(await assign_vlan(s, args.uuid, args.email), {(await _user_uuid(s, args.email)): args.email})

    return run_admin(args, work)


async def _user_uuid(s: AsyncSession, email: str) -> str:
    return (await s.scalar(select(User.uuid).where(User.email == email))) or ""


def vlans_list(args: argparse.Namespace) -> int:
    async def work(s: AsyncSession) -> Any:
        emails = await _emails(s)
        return [vlan_json(v, emails) for v in (await s.scalars(select(Vlan).order_by(Vlan.created))).all()]

    return run_admin(args, work)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``networks``, ``ips`` and ``vlans`` command groups."""
    networks = sub.add_parser("networks", help="public networks (DHCP pools)").add_subparsers(
        dest="action", required=True)
    n = networks.add_parser("add", parents=[common], help="define a public network", description=(
        "Define a public network. Hosts realise it as a libvirt NAT network whose bridge holds the gateway "
        "address (or, with --bridge, attach NICs to an operator's bridge, whose DHCP is the operator's). "
        "NICs with ip_v4_conf 'dhcp' lease an address of --range while their server runs; addresses outside "
        "the range can be granted to users for 'static' (strato ips assign)."))
    n.add_argument("name", help="e.g. public")
    n.add_argument("--subnet", required=True, metavar="CIDR", help="e.g. 10.231.0.0/24")
    n.add_argument("--gateway", required=True, metavar="IP", help="the gateway (outside the range)")
    n.add_argument("--range", required=True, metavar="FIRST-LAST", help="addresses handed out for 'dhcp'")
    n.add_argument("--nameserver", action="append", metavar="IP", help="DNS server for clients (repeatable)")
    n.add_argument("--bridge", help="an existing host bridge to use instead of libvirt NAT")
    n.set_defaults(func=networks_add)
    n = networks.add_parser("list", parents=[common], help="list public networks")
    n.set_defaults(func=networks_list)

    ips = sub.add_parser("ips", help="grant public IPs to users").add_subparsers(dest="action", required=True)
    i = ips.add_parser("assign", parents=[common], help="grant an address to a user (it appears in their /ips/)",
                       description="Grant IP (in a network's subnet, not its gateway, not in use) to the user "
                                   "EMAIL, who may then use it as ip_v4_conf {conf: static, ip: IP}.")
    i.add_argument("ip")
    i.add_argument("email")
    i.set_defaults(func=ips_assign)
    i = ips.add_parser("unassign", parents=[common], help="take an address back (not while a server uses it)")
    i.add_argument("ip")
    i.set_defaults(func=ips_unassign)
    i = ips.add_parser("list", parents=[common], help="granted addresses and live DHCP leases")
    i.set_defaults(func=ips_list)

    vlans = sub.add_parser("vlans", help="private networks").add_subparsers(dest="action", required=True)
    v = vlans.add_parser("add", parents=[common], help="create unassigned VLANs (prints their uuids)",
                         description="Create VLANs. Each has a tag, the VXLAN VNI that carries it between hosts "
                                     "(shown as bottom_vlan_tag); assign them with 'strato vlans assign'.")
    v.add_argument("--count", type=int, default=1)
    v.add_argument("--tag", type=int, help="first tag (default: the next free from 100)")
    v.set_defaults(func=vlans_add)
    v = vlans.add_parser("assign", parents=[common], help="give a VLAN to a user (it appears in their /vlans/)")
    v.add_argument("uuid")
    v.add_argument("email")
    v.set_defaults(func=vlans_assign)
    v = vlans.add_parser("list", parents=[common], help="list VLANs and their owners")
    v.set_defaults(func=vlans_list)
