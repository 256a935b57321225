"""Compare a live JSON response with a recorded CloudSigma dump.

Both trees are walked together: same keys (minus the extra keys this project adds on purpose, spec §10
notes and §18), same JSON types, equal values, except values that identify objects (uuids, and the
uuid inside a link or resource URI), MAC addresses and timestamps, which only have to have the same shape.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from typing import Any

from tests.strato_process import load_dump

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")

# Keys our full views carry that the 2015-era dumps predate (spec §10 notes, §18 table and runtime decision).
SERVER_EXTRA = frozenset({"auto_start", "allocation_pool", "is_grey", "gpus", "epcs"})
DRIVE_EXTRA = frozenset({"iops", "remote_snapshots", "backup_scheduler", "is_downloadable", "is_ephemeral"})


def _shape(value: str) -> str:
    if MAC.match(value):
        return "<mac>"
    if TIMESTAMP.match(value):
        return "<timestamp>"
    return UUID.sub("<uuid>", value)


def diff(ours: Any, theirs: Any, *, extra: Iterable[str] = (), where: str = "") -> list[str]:
    """Differences between our JSON and the dump's, as readable lines ([] when they agree)."""
    extra = frozenset(extra)
    problems: list[str] = []
    if isinstance(theirs, dict):
        if not isinstance(ours, dict):
            return [f"{where or '.'}: expected an object, got {ours!r}"]
        missing = set(theirs) - set(ours)
        unexpected = set(ours) - set(theirs) - extra
        if missing:
            problems.append(f"{where or '.'}: missing keys {sorted(missing)}")
        if unexpected:
            problems.append(f"{where or '.'}: unexpected keys {sorted(unexpected)}")
        for key in sorted(set(theirs) & set(ours)):
            problems += diff(ours[key], theirs[key], extra=extra, where=f"{where}.{key}".lstrip("."))
        return problems
    if isinstance(theirs, list):
        if not isinstance(ours, list):
            return [f"{where}: expected a list, got {ours!r}"]
        if len(ours) != len(theirs):
            return [f"{where}: {len(ours)} items, dump has {len(theirs)}: {ours!r}"]
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            problems += diff(a, b, extra=extra, where=f"{where}.{i}")
        return problems
    if type(ours) is not type(theirs):
        return [f"{where}: type {type(ours).__name__} ({ours!r}), dump has {type(theirs).__name__} ({theirs!r})"]
    if isinstance(theirs, str):
        if _shape(ours) != _shape(theirs):
            return [f"{where}: {ours!r}, dump has {theirs!r}"]
        return []
    if ours != theirs:
        return [f"{where}: {ours!r}, dump has {theirs!r}"]
    return []


def assert_matches(ours: Any, theirs: Any, *, extra: Iterable[str] = ()) -> None:
    problems = diff(ours, theirs, extra=extra)
    assert not problems, "response differs from the dump:\n  " + "\n  ".join(problems)


def setpath(tree: Any, path: str, value: Any) -> None:
    """Set ``a.*.b`` (``*`` = every list item) in a JSON tree: how a test records a documented exception."""
    head, _, rest = path.partition(".")
    targets = tree if head == "*" else [tree]
    for target in targets:
        key: Any = int(head) if isinstance(target, list) and head != "*" else head
        if head == "*":
            if rest:
                setpath(target, rest, value)
            continue
        if rest:
            setpath(target[key], rest, value)
        else:
            target[key] = value


def substitute(tree: Any, mapping: dict[str, str]) -> Any:
    """A copy of ``tree`` with each dump id (uuid, MAC) in any string replaced by ours."""
    if isinstance(tree, dict):
        return {k: substitute(v, mapping) for k, v in tree.items()}
    if isinstance(tree, list):
        return [substitute(v, mapping) for v in tree]
    if isinstance(tree, str):
        for old, new in mapping.items():
            tree = tree.replace(old, new)
    return tree


class Dump:
    """One request/response pair: ``Dump("server_create_minimal")``."""

    def __init__(self, name: str) -> None:
        self.request_line, self.request = load_dump(f"request_{name}")
        self.status_line, self.response = load_dump(f"response_{name}")
        self.method, target, _ = self.request_line.split(" ")
        self.path = target.removeprefix("/api/2.0/")
        self.status = int(self.status_line.split(" ")[1])

    def expected(self, *patches: Callable[[Any], None], **paths: Any) -> Any:
        """The recorded response with documented exceptions applied (``paths`` use ``__`` for dots)."""
        out = copy.deepcopy(self.response)
        for path, value in paths.items():
            setpath(out, path.replace("__", "."), value)
        for patch in patches:
            patch(out)
        return out
