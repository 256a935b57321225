"""An API node and three real hosts (tests/hosts/harness.py) for the live-migration tests.

The API node runs on this machine and reaches each host only over SSH, at the host's address on
the harness's bridge; each host has a local pool (``default``) and mounts the ``shared`` pool
(one directory, at the same path on every host, as an NFS mount would be).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from tests.hosts.harness import Host, Hosts, make_hosts
from tests.strato_process import Api, StratoServer, remove_libvirt_objects

MiB = 1024 * 1024
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # lookups that miss are answers here, not noise

HOSTS = 3


@dataclass
class Cloud:
    hosts: Hosts
    server: StratoServer
    api: Api

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts.hosts if h.name == name)

    def hosts_list(self) -> dict[str, dict]:
        return {h["name"]: h for h in json.loads(self.server.cli("hosts", "list"))}

    @staticmethod
    def _open(host: Host) -> libvirt.virConnect | None:
        """The host's libvirtd; None while it is down (a test killed it)."""
        try:
            return libvirt.open(host.uri)
        except libvirt.libvirtError:
            return None

    def running_on(self, uuid: str) -> list[str]:
        """The hosts whose own libvirtd runs a domain with this uuid (asked directly, not through Strato)."""
        return self._having(uuid, active=True)

    def defined_on(self, uuid: str) -> list[str]:
        return self._having(uuid, active=False)

    def _having(self, uuid: str, *, active: bool) -> list[str]:
        """The hosts whose libvirtd has a domain with this uuid (running, if ``active``)."""
        found = []
        for host in self.hosts.hosts:
            conn = self._open(host)
            if conn is None:
                continue
            try:
                dom = conn.lookupByUUIDString(uuid)
                if not active or dom.isActive():
                    found.append(host.name)
            except libvirt.libvirtError:
                pass
            finally:
                conn.close()
        return found


@contextlib.contextmanager
def cloud_on(hosts: Hosts, extra_env: dict[str, str] | None = None,
             users: tuple[tuple[str, str], ...] = (("ops@example.com", "ops-pw"),)) -> Iterator[Cloud]:
    """An API node on this machine (no local host) with every host of ``hosts`` added over SSH, all up; its
    ``api`` is the first of ``users``.  The node stops on exit; the hosts are the caller's to close."""
    data = Path(hosts.root) / f"api-{secrets.token_hex(2)}"
    server = StratoServer(data, extra_env={
        "STRATO_LOCAL_HOST": "false", "STRATO_HEARTBEAT": "1", "STRATO_SHUTDOWN_WINDOW": "5",
        "STRATO_STORAGE_POOLS": json.dumps({"zadara": "shared"}), **(extra_env or {})})
    try:
        data.mkdir()
        data.chmod(0o755)
        (email, password), *others = users
        api = server.add_user(email, password)  # first and alone: it creates the database
        # The other commands are independent: run at once (each `strato` command is seconds of imports).
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(server.add_user, *user) for user in others]

            def later(*args: str) -> str:
                pending.append(pool.submit(server.cli, *args))
                return ""

            hosts.register(later)
            for done in pending:
                done.result()
        server.start()
        server.wait_host_up(90, count=len(hosts.hosts))
        yield Cloud(hosts, server, api)
    finally:
        server.stop()
        for host in hosts.hosts:  # what this node's agents made, so that the next node finds the hosts empty
            with contextlib.suppress(libvirt.libvirtError):
                remove_libvirt_objects(host.prefix, host.uri)
        if os.environ.get("STRATO_KEEP_TEST_DIR") is None:
            shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="package")
def cloud() -> Iterator[Cloud]:
    hosts = make_hosts(HOSTS)
    try:
        with cloud_on(hosts) as cloud:
            yield cloud
    finally:
        hosts.close()
