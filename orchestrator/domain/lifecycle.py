"""The server state machine of spec §13 as one table, and the transitions recorded in the store.

Handlers consult :data:`ACTIONS` (through :func:`check`) before they record an action's first
status, so an immediate GET shows it and a conflicting action gets 403; the work layer records
what the hosts report with the same statuses (``orchestrator/domain/transitions.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from orchestrator.db.models import Server
from orchestrator.domain.errors import forbidden


class Status(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    PAUSED = "paused"
    UNAVAILABLE = "unavailable"


# Holding a claim on a host: every status but stopped.
ACTIVE = frozenset(Status) - {Status.STOPPED}


@dataclass(frozen=True)
class Action:
    verb: str                      # as the refusal says it: 'Cannot <verb> server in state …'
    allowed: frozenset[Status]     # the matrix's row: where the action is accepted
    becomes: Status | None = None  # the status recorded when it is accepted (None: unchanged)


def _action(verb: str, *allowed: Status, becomes: Status | None = None) -> Action:
    return Action(verb, frozenset(allowed), becomes)


S = Status
ACTIONS: dict[str, Action] = {
    "start": _action("start", S.STOPPED, becomes=S.STARTING),
    "stop": _action("stop", S.STARTING, S.RUNNING, S.STOPPING, S.PAUSED, becomes=S.STOPPING),
    "shutdown": _action("shutdown", S.RUNNING, becomes=S.STOPPING),
    "restart": _action("restart", S.RUNNING),
    "open_vnc": _action("open a vnc tunnel to", S.RUNNING),
    "close_vnc": _action("close a vnc tunnel to", S.RUNNING),
    "open_console": _action("open a console tunnel to", S.RUNNING),
    "close_console": _action("close a console tunnel to", S.RUNNING),
    "clone": _action("clone", S.STOPPED),
    "delete": _action("delete", S.STOPPED),
    "edit": _action("edit every field of", S.STOPPED),  # otherwise name/meta/tags only (§14)
}
# Statuses in which a guest may be booting or running on its host (reconciliation, boot races).
BOOTED = frozenset({S.STARTING, S.RUNNING})
# A lifecycle event "running" from the host moves these to running.
REVIVED_BY_RUNNING = frozenset({S.STARTING, S.UNAVAILABLE, S.PAUSED})


def allows(action: str, status: str) -> bool:
    return status in ACTIONS[action].allowed


def check(server: Server, action: str) -> None:
    """403 unless ``action`` is accepted in the server's status; records its first status."""
    rule = ACTIONS[action]
    if server.status not in rule.allowed:
        wanted = " or ".join(f'"{s}"' for s in Status if s in rule.allowed)
        raise forbidden(f'Cannot {rule.verb} server in state "{server.status}"; it must be {wanted}')
    if rule.becomes is not None:
        server.status = rule.becomes
