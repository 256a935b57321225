"""Domain lifecycle, listing, statistics and lifecycle events for this agent's domains.

libvirt is the only store: a domain is ours when its name starts with the agent's prefix, and
the facts libvirt does not keep itself (when the current run started) live in the domain's
`<metadata>` under Strato's namespace, so a restarted agent reads them back.
Methods block (libvirt calls); the protocol layer runs them in threads. The event callback
runs on the asyncio loop (libvirtaio) and must not block.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from typing import Any

import libvirt

from agents import wire
from agents.errors import AgentError
from agents.networks import Networks
from agents.storage import Storage
from agents.translate import DRIVE_ALIAS_PREFIX, HostPolicy, VolumeRef, build_domain, console_log_path
from agents.xml.domain import Domain, Graphics

log = logging.getLogger(__name__)

# libvirt run state → CloudSigma server status (API.md §13 "libvirt mapping hints").
_STATE = {
    libvirt.VIR_DOMAIN_NOSTATE: "stopped",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "stopping",
    libvirt.VIR_DOMAIN_SHUTOFF: "stopped",
    libvirt.VIR_DOMAIN_CRASHED: "paused",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}

# lifecycle event → (status, reason); a None status means "configuration changed, run state
# did not" (define/undefine of a domain).
_EVENT = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: (None, "defined"),
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: (None, "undefined"),
    libvirt.VIR_DOMAIN_EVENT_STARTED: ("running", "started"),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: ("paused", "suspended"),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: ("running", "resumed"),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: ("stopped", "stopped"),
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: ("stopping", "shutdown"),
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: ("paused", "pmsuspended"),
    libvirt.VIR_DOMAIN_EVENT_CRASHED: ("paused", "crashed"),
}
_STOPPED_DETAIL = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "from_snapshot",
}

EventSink = Callable[[str, wire.Message], None]  # event name, its params


def utcnow_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Domains:
    def __init__(self, conn: libvirt.virConnect, host: HostPolicy, storage: Storage,
                 networks: Networks | None = None) -> None:
        self.conn = conn
        self.host = host
        self.storage = storage
        self.networks = networks

    # -- building ---------------------------------------------------------------------------

    def _build(self, spec: wire.Server, active_since: str | None) -> Domain:
        volumes: dict[str, VolumeRef] = {d.uuid: self.storage.resolve(d.pool, d.volume) for d in spec.drives}
        return build_domain(spec, self.host, volumes, active_since)

    def render(self, spec: wire.Server) -> wire.Xml:
        return wire.Xml(xml=self._build(spec, None).to_xml())

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, spec: wire.Server) -> wire.DomainInfo:
        # Everything that can be refused is checked before libvirt sees a definition:
        # the spec (channels, models, macs) by its wire types, the volumes in _build.
        domain = self._build(spec, utcnow_iso())
        existing = self._lookup_optional(spec.uuid)
        if existing is not None:
            if not existing.name().startswith(self.host.prefix):
                raise AgentError("invalid", f"uuid {spec.uuid} belongs to a domain not managed by this agent")
            if existing.isActive():
                raise AgentError("invalid", f"server {spec.uuid} is already running")
        for directory in (self.host.console_log_dir, self.host.socket_dir):
            os.makedirs(directory, exist_ok=True)
        dom = self.conn.defineXML(domain.to_xml())
        dom.create()
        return self._describe(dom)

    def stop(self, uuid: str) -> wire.Empty:
        dom = self._lookup(uuid)
        if dom.isActive():
            dom.destroy()
        return wire.Empty()

    def shutdown(self, uuid: str) -> wire.Empty:
        self._lookup(uuid).shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        return wire.Empty()

    def reset(self, uuid: str) -> wire.Empty:
        self._lookup(uuid).reset(0)
        return wire.Empty()

    def undefine(self, uuid: str) -> wire.Empty:
        dom = self._lookup(uuid)
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        return wire.Empty()

    # -- reading ----------------------------------------------------------------------------

    def list(self) -> list[wire.DomainInfo]:
        described = []
        for dom in self.conn.listAllDomains(0):
            try:
                if dom.name().startswith(self.host.prefix):
                    described.append(self._describe(dom))
            except libvirt.libvirtError as err:
                if not _no_domain(err):
                    raise
                # undefined between the listing and its reading (a stop finishing meanwhile): not there
        return sorted(described, key=lambda d: d.name)

    def xml(self, uuid: str) -> wire.Xml:
        return wire.Xml(xml=self._lookup(uuid).XMLDesc(0))

    def stats(self, uuids: list[str] | None) -> dict[str, wire.DomainStats]:
        kinds = libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BLOCK | libvirt.VIR_DOMAIN_STATS_INTERFACE
        if uuids is None:  # one call for all: a guest that stops meanwhile is left out, not an error
            active = self.conn.getAllDomainStats(kinds, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
            records = [(d, r) for d, r in active if d.name().startswith(self.host.prefix)]
        else:
            doms = [self._lookup(u) for u in uuids]
            records = self.conn.domainListGetStats(doms, kinds, 0) if doms else []
        result: dict[str, wire.DomainStats] = {}
        for dom, record in records:
            try:
                result[dom.UUIDString()] = self._stats(dom, record)
            except libvirt.libvirtError as err:
                if uuids is not None or not _no_domain(err):
                    raise
        return result

    def _stats(self, dom: libvirt.virDomain, record: dict[str, Any]) -> wire.DomainStats:
        live = Domain.from_xml(dom.XMLDesc(0))
        drive_by_target = {
            d.target: d.alias[len(DRIVE_ALIAS_PREFIX):]
            for d in live.disks() if d.alias and d.alias.startswith(DRIVE_ALIAS_PREFIX)
        }
        drives = {uuid: wire.DriveStats(io=wire.BlockIo()) for uuid in drive_by_target.values()}
        for i in range(record.get("block.count", 0)):
            uuid = drive_by_target.get(record.get(f"block.{i}.name", ""))
            if uuid is not None:
                drives[uuid] = wire.DriveStats(io=_block_io(record, i))
        nic_by_ifname = {n.target_dev: n.mac for n in live.interfaces() if n.target_dev}
        net_io = {n.mac: wire.NetIo() for n in live.interfaces()}
        for i in range(record.get("net.count", 0)):
            mac = nic_by_ifname.get(record.get(f"net.{i}.name", ""))
            if mac is not None:
                net_io[mac] = _net_io(record, i)
        nics = {
            # ip_v4: the address a DHCP lease of its libvirt network gives it
            n.mac: wire.NicStats(io=net_io[n.mac], ip_v4=self.networks.lease_of(n.network, n.mac)
                                 if self.networks and n.network else None)
            for n in live.interfaces()
        }
        return wire.DomainStats(active_since=_active_since(live, dom), drives=drives, nics=nics)

    def _describe(self, dom: libvirt.virDomain) -> wire.DomainInfo:
        state, _reason = dom.state()
        active = dom.isActive() == 1
        live = Domain.from_xml(dom.XMLDesc(0))
        graphics = live.graphics()
        return wire.DomainInfo(
            uuid=dom.UUIDString(),
            name=dom.name(),
            state=_STATE.get(state, "stopped"),
            active_since=_active_since(live, dom),
            vnc=_vnc(graphics) if active and graphics is not None else None,
            console_log=console_log_path(self.host, dom.name()),
            console_socket=f"{self.host.socket_dir}/{dom.UUIDString()}.console",
        )

    def lookup(self, uuid: str) -> libvirt.virDomain:
        return self._lookup(uuid)

    def describe(self, uuid: str) -> wire.DomainInfo:
        return self._describe(self._lookup(uuid))

    def _lookup_optional(self, uuid: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as err:
            if _no_domain(err):
                return None
            raise

    def _lookup(self, uuid: str) -> libvirt.virDomain:
        dom = self._lookup_optional(uuid)
        if dom is None or not dom.name().startswith(self.host.prefix):
            raise AgentError("notfound", f"no domain {uuid} on this host")
        return dom

    # -- events -----------------------------------------------------------------------------

    def watch(self, sink: EventSink) -> int:
        """Push every lifecycle event of this agent's domains to `sink` as a wire event."""

        def on_lifecycle(_conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int,
                         _opaque: Any) -> None:
            name = dom.name()
            if not name.startswith(self.host.prefix):
                return
            state, reason = _EVENT.get(event, (None, f"event-{event}"))
            if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
                reason = _STOPPED_DETAIL.get(detail, reason)
            sink("domain.lifecycle", wire.DomainLifecycle(uuid=dom.UUIDString(), name=name, state=state, reason=reason))

        return self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None)


def _no_domain(err: libvirt.libvirtError) -> bool:
    """No such domain (never was, or undefined by a concurrent call while being read)."""
    return err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


def _active_since(live: Domain, dom: libvirt.virDomain) -> str | None:
    if dom.isActive() != 1 or live.metadata is None:
        return None
    return live.metadata.active_since


def _vnc(graphics: Graphics) -> wire.Vnc | None:
    if graphics.port is None or graphics.port < 0:
        return None
    return wire.Vnc(host=graphics.listen or "127.0.0.1", port=graphics.port)


def _block_io(record: dict[str, Any], i: int) -> wire.BlockIo:
    keys = {
        "bytes_read": "rd.bytes", "bytes_written": "wr.bytes",
        "count_read": "rd.reqs", "count_written": "wr.reqs", "count_flush": "fl.reqs",
        "total_time_ns_read": "rd.times", "total_time_ns_write": "wr.times", "total_time_ns_flush": "fl.times",
    }
    return wire.BlockIo(**{ours: int(record.get(f"block.{i}.{theirs}", 0)) for ours, theirs in keys.items()})


def _net_io(record: dict[str, Any], i: int) -> wire.NetIo:
    # libvirt counts on the host side of the tap; the guest receives what the host sends.
    keys = {"bytes_recv": "tx.bytes", "bytes_sent": "rx.bytes", "packets_recv": "tx.pkts", "packets_sent": "rx.pkts"}
    return wire.NetIo(**{ours: int(record.get(f"net.{i}.{theirs}", 0)) for ours, theirs in keys.items()})

