"""Issue 16 item 10: console tokens are capped per user (3,000 live links from one user before).
Issue 13: they live in the database (any API node redeems them), single-use and expiring."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from orchestrator.db.engine import make_engine, make_sessionmaker, migrate, sqlite_url
from orchestrator.db.models import Server, User
from orchestrator.hosts.consoles import Consoles, Tunnel


def _tunnel(owner: str) -> Tunnel:
    async def upstream() -> Any:
        raise ConnectionError

    return Tunnel("vnc", f"server-of-{owner}", owner, 20000, "pw", upstream)


async def _scenario(db: Path) -> None:
    engine = make_engine(sqlite_url(db))
    await migrate(engine)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions.begin() as s:
            for name in ("alice", "bob"):
                s.add(User(uuid=name, email=f"{name}@example.com", password_hash="x"))
            await s.flush()
            for name in ("alice", "bob"):
                s.add(Server(uuid=f"server-of-{name}", owner_uuid=name, name=name, cpu=1000, mem=1 << 27, smp=1,
                             smp_auto=True, vnc_password="pw", cpu_type="amd", hypervisor="kvm",
                             cpus_instead_of_cores=False, enable_numa=False, hv_relaxed=False, hv_tsc=False,
                             context=True, auto_start=False, is_grey=False, meta={}, requirements=[], nics=[],
                             gpus=[], epcs=[], pubkeys=[], status="running", host="h1"))
        consoles = Consoles(None, sessions, bind="127.0.0.1", ports=range(20000, 20010),  # type: ignore[arg-type]
                            idle_timeout=60, token_ttl=120)
        alice, bob = _tunnel("alice"), _tunnel("bob")
        bobs = await consoles.grant(bob)
        tokens = [await consoles.grant(alice) for _ in range(300)]
        consoles.tunnels[("server-of-alice", "vnc")] = alice
        consoles.tunnels[("server-of-bob", "vnc")] = bob
        assert await consoles.redeem(tokens[0]) is None          # retired
        assert await consoles.redeem(tokens[-Consoles.TOKENS_PER_USER]) is alice  # the oldest kept one
        assert await consoles.redeem(tokens[-1]) is alice        # the newest still works
        assert await consoles.redeem(tokens[-1]) is None         # once
        assert await consoles.redeem(bobs) is bob                # another user's are untouched
        assert await consoles.redeem("made-up") is None
        expiring = Consoles(None, sessions, bind="127.0.0.1", ports=range(20000, 20010),  # type: ignore[arg-type]
                            idle_timeout=60, token_ttl=0.2)
        expiring.tunnels = consoles.tunnels
        late = await expiring.grant(alice)
        await asyncio.sleep(0.4)
        assert await expiring.redeem(late) is None               # expired: refused by the query itself
    finally:
        await engine.dispose()


def test_a_user_holds_at_most_twenty_live_console_links(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path / "strato.db"))
