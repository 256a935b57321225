"""Each rendered ``/schema/`` against ``spec/dumps/response_<res>_schema`` (spec §6.3): the same top-level keys
and field names; per field the same ``type``, ``default``, ``required``, ``readonly``; nested ``fields`` for
writable nested fields; ``choices`` narrowed to what we support (a subset of the dump's)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.strato_process import Api, load_dump

FLAGS = ("type", "default", "required", "readonly")


def field_problems(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> list[str]:
    problems = []
    if set(ours) != set(theirs):
        problems.append(f"{where}: fields {sorted(set(ours) ^ set(theirs))} differ")
    for name in sorted(set(ours) & set(theirs)):
        a, b = ours[name], theirs[name]
        for flag in FLAGS:
            if flag in b and a.get(flag) != b[flag]:
                problems.append(f"{where}{name}.{flag}: {a.get(flag)!r}, dump has {b[flag]!r}")
        if "choices" in b and (not a.get("choices") or not set(a["choices"]) <= set(b["choices"])):
            problems.append(f"{where}{name}.choices: {a.get('choices')!r} not a subset of {b['choices']!r}")
        if "fields" in b and not b.get("readonly"):
            problems += field_problems(a.get("fields", {}), b["fields"], f"{where}{name}.")
    return problems


@pytest.mark.parametrize(("collection", "dump"), [("servers", "server"), ("drives", "drive"), ("tags", "tags"),
                                                 ("ips", "ip"), ("vlans", "vlan")])
def test_schema_matches_dump(alice: Api, collection: str, dump: str) -> None:
    ours = alice.ok("GET", f"{collection}/schema/")
    _, theirs = load_dump(f"response_{dump}_schema")
    assert set(ours) == set(theirs)
    problems = field_problems(ours["fields"], theirs["fields"], "")
    for key in ("allowed_detail_http_methods", "allowed_list_http_methods", "default_format", "default_limit"):
        if ours.get(key) != theirs.get(key):
            problems.append(f"{key}: {ours.get(key)!r}, dump has {theirs.get(key)!r}")
    assert not problems, "\n".join(problems)


def test_profile_schema(alice: Api) -> None:
    """Tastypie's dialect: type, default, readonly and nullable per field as upstream's, except ``resource_uri``
    (ours) and ``signup_time``'s default (upstream shows the time its schema was rendered)."""
    ours = alice.ok("GET", "profile/schema/")
    _, theirs = load_dump("response_profile_schema")
    assert {k: v for k, v in ours.items() if k != "fields"} == {k: v for k, v in theirs.items() if k != "fields"}
    assert set(ours["fields"]) - {"resource_uri"} == set(theirs["fields"])
    problems = [f"{name}.{flag}: {ours['fields'][name][flag]!r}, dump has {field[flag]!r}"
                for name, field in theirs["fields"].items() for flag in ("type", "default", "readonly", "nullable")
                if ours["fields"][name][flag] != field[flag] and (name, flag) != ("signup_time", "default")]
    assert not problems, "\n".join(problems)


def test_capabilities_schema(alice: Api) -> None:
    _, theirs = load_dump("response_capabilities_schema")
    assert alice.ok("GET", "capabilities/schema/") == theirs
