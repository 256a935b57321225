"""Issue 16 item 10: console tokens are capped per user (3,000 live links from one user before)."""

from __future__ import annotations

from typing import Any

from orchestrator.hosts.consoles import Consoles, Tunnel


def _tunnel(owner: str) -> Tunnel:
    async def upstream() -> Any:
        raise ConnectionError

    return Tunnel("vnc", f"server-of-{owner}", owner, 20000, "pw", upstream)


def test_a_user_holds_at_most_twenty_live_console_links() -> None:
    consoles = Consoles(None, bind="127.0.0.1", ports=range(20000, 20010), idle_timeout=60, token_ttl=120)  # type: ignore[arg-type]
    alice, bob = _tunnel("alice"), _tunnel("bob")
    bobs = consoles.grant(bob)
    tokens = [consoles.grant(alice) for _ in range(3000)]
    assert sum(g.owner == "alice" for g in consoles.tokens.values()) == Consoles.TOKENS_PER_USER
    consoles.tunnels[("server-of-alice", "vnc")] = alice
    consoles.tunnels[("server-of-bob", "vnc")] = bob
    assert consoles.redeem(tokens[0]) is None         # retired
    assert consoles.redeem(tokens[-1]) is alice        # the newest still works
    assert consoles.redeem(bobs) is bob                # another user's are untouched
