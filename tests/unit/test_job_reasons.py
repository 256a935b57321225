"""How a host's error reads on a failed job (issue 11): the message on one line, paths outside the
installation's data directory replaced, long messages cut."""

from __future__ import annotations

from pathlib import Path

from agents.client import AgentCallError
from orchestrator.domain.jobs import MAX_REASON, Reasons


def test_the_message_only_with_own_paths_kept_and_others_hidden(tmp_path: Path) -> None:
    reasons = Reasons.under([tmp_path / "data"])
    own = tmp_path / "data" / "pools" / "local" / "d.qcow2"
    err = AgentCallError("libvirt", f"Cannot access storage file '{own}' (as uid:64055, gid:64055): Permission "
                         "denied", 38)
    assert reasons.of(err) == f"Cannot access storage file '{own}' (as uid:64055, gid:64055): Permission denied"
    other = AgentCallError("internal", "qemu-img failed: /home/bob/private.img: No such file\n  at line 2", None)
    assert reasons.of(other) == "qemu-img failed: [host path]: No such file at line 2"
    assert reasons.of(f"{tmp_path}/database is near {tmp_path}/data/x") == f"[host path] is near {tmp_path}/data/x"
    assert reasons.of("Child process (/usr/bin/qemu-img convert /srv/x) failed") == (
        "Child process (/usr/bin/qemu-img convert [host path]) failed")


def test_long_and_empty_messages() -> None:
    reasons = Reasons.under(["/srv/strato"])
    assert len(reasons.of("x" * 5000)) == MAX_REASON
    assert reasons.of(TimeoutError()) == "TimeoutError"
