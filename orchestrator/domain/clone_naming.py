"""Names of clones made without an explicit name: the profile's ``clone_naming`` (spec §22)."""

from __future__ import annotations

import re
from datetime import datetime

STRATEGIES = ("NONE", "COUNTER", "DATE", "TIMESTAMP")
_COUNTER = re.compile(r"_(\d+)$", re.ASCII)
_SUFFIX = {"DATE": (re.compile(r"-\d{4}-\d{2}-\d{2}$", re.ASCII), "%Y-%m-%d"),
           "TIMESTAMP": (re.compile(r"-\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$", re.ASCII), "%Y-%m-%d %H:%M:%S")}


def counter(name: str) -> str:
    match = _COUNTER.search(name)
    return f"{name[:match.start()]}_{int(match[1]) + 1}" if match else f"{name}_1"


def clone_name(name: str, strategy: str, now: datetime) -> str:
    if strategy == "COUNTER":
        return counter(name)
    if strategy in _SUFFIX:
        pattern, fmt = _SUFFIX[strategy]
        stamp = "-" + now.strftime(fmt)
        if name.endswith(stamp):  # already today's / this second's: fall back to a counter
            return counter(name)
        return pattern.sub("", name) + stamp
    return name
