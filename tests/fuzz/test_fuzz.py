"""Property-based fuzzing of every route of a real node, with requests generated from the field tables.

For each route the app serves (read from ``create_app``'s router, so a new route is fuzzed without
being listed here) Hypothesis draws a caller, path parameters (the caller's object, another user's,
none), query parameters from the resource's filters, a body from its field table and odd bytes and
headers (``strategies.py``).  Every answer must hold:

* no 5xx;
* every 4xx is CloudSigma's error list; a 400 on a body sent as clean JSON names an ``error_point``;
* a rejected write changed nothing the caller (or the other user) can see;
* another user's object and an object that does not exist answer alike.

``test_write`` adds valid and boundary bodies of each resource's field table (POST and PUT of
servers, drives, uploads, tags, keys, the profile): never a wrong type, so each answer is an
acceptance (what a create made is deleted again) or a refusal naming the field at fault.

Budget: ``STRATO_FUZZ_EXAMPLES`` examples per route, and the same again over ``test_write``'s
writes (default 8: about 900 generated requests), derandomised with no example database, so CI
sends the same requests on every run; the count is printed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.api import (
    accounts,
    drives,
    jobs,
    keypairs,
    libdrives,
    networks,
    profile,
    server_actions,
    servers,
    tags,
)
from orchestrator.api.fields import Resource
from orchestrator.app import create_app
from orchestrator.config import Config
from tests.api.conftest import wait_idle
from tests.fuzz import strategies as S
from tests.fuzz.conftest import STATS, Tenant
from tests.strato_process import Api

EXAMPLES = int(os.environ.get("STRATO_FUZZ_EXAMPLES", "8"))
API = "/api/2.0"
TABLES: dict[str, Resource] = {t.name: t for t in (servers.SERVER, drives.DRIVE, tags.TAG, keypairs.KEYPAIR,
                                                   keypairs.PUBKEY, networks.IP, networks.VLAN, jobs.JOB,
                                                   libdrives.LIBDRIVE, profile.PROFILE)}
ACTIONS = {"servers": list(server_actions.ACTIONS), "drives": list(drives.ACTIONS), "libdrives": ["clone"],
           "accounts": list(accounts.ACTIONS)}
# Actions that would boot a QEMU guest of the caller's (two shared cores): aimed at others' objects only.
HEAVY = {("servers", "start"), ("servers", "restart")}
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
VOLATILE = {"status", "runtime", "jobs"}  # moved by background work, not by requests
SETTLED = {"mounted", "unmounted"}


def _routes() -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="strato-fuzz-routes-") as scratch:  # the router only: nothing runs
        app = create_app(Config(data_dir=scratch))
        found = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    return sorted(found, key=lambda mp: (mp[1], mp[0]))


ROUTES = _routes()


def collection_of(template: str) -> str:
    """``/api/2.0/servers/{uuid}/action`` → ``servers``; ``/api/2.0/drives/availability_groups/{uuid}`` → ``drives``."""
    parts = [p for p in template.replace("{_slash}", "").split("/") if p and p not in ("api", "2.0")]
    return parts[0] if parts else ""


@dataclass
class Request:
    route: str
    method: str
    path: str
    query: dict[str, str]
    wire: S.Wire
    caller: str                      # alice | anonymous | wrong
    target: str | None = None        # own | other | random | junk (the {uuid} in the path)
    spoiled: str | None = None       # the body field made hostile
    other_uuid: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _multipart(fields: dict[str, str], data: bytes) -> tuple[bytes, str]:
    parts = [f'--b0und\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode("utf-8", "replace")
             for k, v in fields.items()]
    parts.append(b'--b0und\r\nContent-Disposition: form-data; name="file"; filename="c"\r\n'
                 b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--b0und--\r\n")
    return b"".join(parts), "multipart/form-data; boundary=b0und"


@st.composite
def requests_for(draw: st.DrawFn, method: str, template: str, alice: Tenant, bob: Tenant) -> Request:
    collection = collection_of(template)
    table = TABLES.get("drives" if collection == "initupload" else collection)
    pool = S.Pool(own=lambda c: alice.objects.get(c), other=lambda c: bob.objects.get(c))
    # "wrong": a password guess for an unknown user (guesses for alice would lock her out: 429).
    caller = draw(st.sampled_from(["alice"] * 16 + ["anonymous", "anonymous", "wrong"]))
    path, target, other_uuid = template, None, None
    if "{uuid}" in path:
        kind = "uploading" if "/upload" in template else ("jobs" if collection == "jobs" else collection)
        kind = {"libdrives": "", "availability_groups": "", "ips": "", "vlans": ""}.get(kind, kind)
        target = draw(st.sampled_from(["own", "own", "other", "other", "random", "junk"]))
        if target == "own" and kind:
            uuid = alice.one(kind)
        elif target == "other" and kind:
            uuid = other_uuid = bob.one(kind)
        elif target == "junk":
            uuid = draw(st.sampled_from(["abc", "%00", "..", "00000000-0000-0000-0000-000000000000", "x" * 300,
                                         "%E2%80%AE", "%ud800", "1;DROP"]))
        else:
            uuid = ""
        if not uuid:
            target, uuid = "random", str(uuidlib.uuid4())
        path = path.replace("{uuid}", uuid)
    for name, values in (("{filename}", ["disk.img", "a%00b", "a%0D%0Ab", "x" * 1100, "%F0%9F%98%80", "..%2F.."]),
                         ("{token}", ["abc", "x" * 64, "%00", "..", "A" * 32]),
                         ("{res_type}", ["servers", "drives", "ips", "x", "%00"]), ("{detail}", ["detail", "x"]),
                         ("{file}", ["vnc.html", "..%2F..%2F..%2Fetc%2Fpasswd", "core/rfb.js", "%00", "x" * 300])):
        if name in path:
            path = path.replace(name, draw(st.sampled_from(values)))
    path = path.replace("{_slash}", draw(st.sampled_from(["/", "/", ""])))
    query = draw(S.query_values(table))
    body: Any = None
    spoiled = None
    if "/action" in template:
        names = ACTIONS.get(collection, [])
        do = draw(st.sampled_from([*names, *names, "", "nope", "START", "\x00"]))
        if target == "own" and (collection, do) in HEAVY:
            do = "nope"
        query["do"] = do
        if collection == "accounts":
            body = draw(st.fixed_dictionaries({}, optional={"username": st.one_of(st.just("fuzz-alice@example.com"),
                                                                                  S.JUNK), "password": S.JUNK}))
        elif table is not None:
            extra = st.fixed_dictionaries({}, optional={"chunk_number": S.field_value(drives.CHUNK_FIELD, pool),
                                                        "chunk_size": S.field_value(drives.CHUNK_FIELD, pool),
                                                        "random_vnc_password": st.booleans()})
            body, spoiled = draw(S.edit_body(table, pool))
            body.update(draw(extra))
    elif method in ("POST", "PUT") and ("/upload" in template or "/chunks/" in template):
        data = draw(st.sampled_from([b"", b"\0" * 512, b"QFI\xfb" + b"\0" * 100, b"x" * 70000]))
        if template.endswith("/upload{_slash}") and "{uuid}" in template:
            fields = draw(st.fixed_dictionaries({}, optional={"resumableChunkNumber": st.sampled_from(["1", "0", "x",
                                                                                                      "99", "١"]),
                                                              "resumableChunkSize": st.sampled_from(["1048576",
                                                                                                    "512", "0"])}))
            raw, ctype = _multipart(fields, data) if draw(st.integers(0, 4)) else (data, "application/json")
        else:
            raw, ctype = data, "application/octet-stream"
        wire = S.Wire(raw, {"Content-Type": ctype}, clean=False)
        if draw(st.integers(0, 5)) == 0:
            wire.headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "x"]))
        return Request(template, method, path, query, wire, caller, target, None, other_uuid)
    elif method == "POST" and table is not None and "{uuid}" not in template:
        body, spoiled = draw(S.create_body(table, pool))
    elif method == "PUT" and table is not None:
        body, spoiled = draw(S.edit_body(table, pool) if "{uuid}" in template or collection == "profile"
                             else S.create_body(table, pool))
    elif method == "DELETE" and "{uuid}" not in template:
        body = {"objects": draw(st.lists(S.reference(collection, pool), max_size=2))}
    elif method in ("POST", "PUT"):
        body = draw(st.one_of(S.ANY_JSON, st.dictionaries(S.text(12), S.ANY_JSON, max_size=4)))
    elif draw(st.integers(0, 9)) == 0:
        body = draw(S.ANY_JSON)  # a GET or DELETE with a body
    wire = draw(S.wire(body)) if body is not None else S.Wire(None, {}, clean=True)
    return Request(template, method, path, query, wire, caller, target, spoiled, other_uuid)


def send(alice: Api, req: Request, path: str | None = None) -> requests.Response:
    auth = {"alice": alice.auth, "anonymous": None, "wrong": ("fuzz-mallory@example.com", "guess")}[req.caller]
    url = f"{alice.base}{path or req.path}"
    STATS.total += 1
    try:
        r = requests.request(req.method, url, params=req.query, data=req.wire.raw, headers=req.wire.headers,
                             auth=auth, timeout=60, allow_redirects=False)
    except requests.ConnectionError as e:
        pytest.fail(f"connection dropped: {req.method} {url} {req.query} {req.wire.headers}: {e}")
    STATS.count(f"{req.method} {req.route}", r)
    return r


def snapshot(api: Api) -> dict[str, Any]:
    """What the user can see, without what background work moves on its own."""
    out: dict[str, Any] = {}
    for collection in ("servers", "drives", "tags", "keypairs", "ips", "vlans"):
        objects = api.ok("GET", f"{collection}/detail/?limit=0")["objects"]
        out[collection] = {o["uuid"]: {k: v for k, v in o.items() if k not in VOLATILE} for o in objects}
        if collection == "drives":  # a drive still being made or imported moves on its own
            out["settled"] = {o["uuid"] for o in objects if o["status"] in SETTLED}
        out[f"{collection}#"] = sorted(o["uuid"] for o in api.ok("GET", f"{collection}/?limit=0")["objects"])
    out["profile"] = api.ok("GET", "profile/")
    out["global_context"] = api.ok("GET", "global_context/")
    return out


def _diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    settled = before.pop("settled") & after.pop("settled")
    for snap in (before, after):  # drives are compared once settled in both (the uuid lists always)
        snap["drives"] = {u: d for u, d in snap["drives"].items() if u in settled}
    return {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}


def _normal(r: requests.Response) -> Any:
    body: Any = r.text
    with contextlib.suppress(ValueError):
        body = r.json()
    return r.status_code, json.loads(UUID_RE.sub("<uuid>", json.dumps(body)))


def _describe(req: Request, r: requests.Response) -> str:
    return (f"{req.method} {req.path} query={req.query} caller={req.caller} target={req.target} "
            f"headers={req.wire.headers} body={(req.wire.raw or b'')[:300]!r} → {r.status_code} {r.text[:400]}")


def check_error_format(req: Request, r: requests.Response) -> None:
    assert r.headers.get("Content-Type", "").startswith("application/json"), _describe(req, r)
    errors = r.json()
    assert isinstance(errors, list) and errors, _describe(req, r)
    for e in errors:
        assert set(e) == {"error_type", "error_message", "error_point"}, _describe(req, r)
        assert isinstance(e["error_type"], str) and isinstance(e["error_message"], str), _describe(req, r)
        assert e["error_point"] is None or isinstance(e["error_point"], str), _describe(req, r)
    if r.status_code == 400 and req.spoiled and req.wire.clean and req.caller == "alice":
        assert any(e["error_point"] for e in errors), f"no error_point for {req.spoiled}: {_describe(req, r)}"


def run(req: Request, alice: Tenant, bob: Tenant) -> requests.Response:
    writes = req.method not in ("GET", "OPTIONS")
    before = snapshot(alice.api) if writes else None
    bob_before = snapshot(bob.api) if writes and req.target == "other" else None
    r = send(alice.api, req)
    assert r.status_code < 500, _describe(req, r)
    if r.status_code >= 400:
        check_error_format(req, r)
        if before is not None:
            assert not (changed := _diff(before, snapshot(alice.api))), f"rejected, yet changed {changed}: " \
                                                                         f"{_describe(req, r)}"
    if bob_before is not None:
        assert not (changed := _diff(bob_before, snapshot(bob.api))), f"another user's store changed {changed}: " \
                                                                       f"{_describe(req, r)}"
    if req.target == "other" and req.caller == "alice" and req.other_uuid:
        assert r.status_code >= 400 or "/chunks/" in req.route, f"another user's object answered: {_describe(req, r)}"
        absent = send(alice.api, req, req.path.replace(req.other_uuid, str(uuidlib.uuid4())))
        assert _normal(r) == _normal(absent), (f"hidden and missing differ:\n  {_describe(req, r)}\n  "
                                               f"{absent.status_code} {absent.text[:400]}")
    return r


@pytest.mark.parametrize(("method", "template"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_route(method: str, template: str, tenants: tuple[Tenant, Tenant]) -> None:
    alice, bob = tenants

    # Writes with a field table get as many again in test_write (valid and boundary bodies).
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        run(data.draw(requests_for(method, template, alice, bob)), alice, bob)

    fuzz()



# --- valid and boundary writes ---------------------------------------------------------------------

# The writes of a field table: the body is the table's, drawn without a hostile field (valid values,
# and the edges of each bound), sent as clean JSON by the owner, or at another user's object.
WRITES = [("POST", "servers"), ("POST", "drives"), ("POST", "initupload"), ("POST", "tags"), ("POST", "keypairs"),
          ("PUT", "servers"), ("PUT", "drives"), ("PUT", "tags"), ("PUT", "keypairs"), ("PUT", "profile")]
WRITE_EXAMPLES = (EXAMPLES * 18) // len(WRITES)  # the examples test_route gave these 18 routes twice before
FIELD_AT_FAULT = "a field of the table"  # a 400 for such a body must say which field (error_point)


@st.composite
def write_requests(draw: st.DrawFn, method: str, collection: str, alice: Tenant, bob: Tenant) -> Request:
    table = TABLES["drives" if collection == "initupload" else collection]
    pool = S.Pool(own=lambda c: alice.objects.get(c), other=lambda c: bob.objects.get(c))
    target, other_uuid = None, None
    seed = {"name": "fz-up", "size": 2**21, "media": "disk"} if collection == "initupload" else S.SEEDS.get(table.name)
    body: Any
    if method == "POST":
        body, _ = draw(S.write_body(table.fields, pool, seed=seed))
        body = draw(st.sampled_from([body, {"objects": [body]}, [body]]))
        path = f"{API}/{collection}/"
    elif collection == "profile":
        body, _ = draw(S.write_body(table.fields, pool, seed=None))
        path = f"{API}/profile/"
    else:
        body, _ = draw(S.write_body(table.fields, pool, seed=None))
        target = draw(st.sampled_from(["own", "own", "own", "other"]))
        uuid = alice.one(collection) if target == "own" else (other_uuid := bob.one(collection))
        path = f"{API}/{collection}/{uuid}/"
    return Request(f"{method} {collection} (valid)", method, path, {}, S.Wire(json.dumps(body).encode(),
                   {"Content-Type": "application/json"}, clean=True), "alice", target, FIELD_AT_FAULT, other_uuid)


def _remove_created(api: Api, collection: str, r: requests.Response) -> None:
    """What an accepted create made goes again, so the store (and the host's pool) stays the size it was."""
    with contextlib.suppress(ValueError):
        answer = r.json()
    made = [o["uuid"] for o in answer.get("objects", [])] if isinstance(answer, dict) else []
    path = "drives" if collection == "initupload" else collection
    if collection == "drives" and made:  # deletable once made (an upload's drive at once)
        wait_idle(api, *made, timeout=60)
    for uuid in made:
        STATS.total += 1
        assert api.delete(f"{path}/{uuid}/").status_code == 204


@pytest.mark.parametrize(("method", "collection"), WRITES, ids=[f"{m} {c}" for m, c in WRITES])
def test_write(method: str, collection: str, tenants: tuple[Tenant, Tenant]) -> None:
    """Valid and boundary bodies: accepted, or refused in the error format naming the field at
    fault (400), the store unchanged; at another user's object as at none."""
    alice, bob = tenants

    @settings(max_examples=WRITE_EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        req = data.draw(write_requests(method, collection, alice, bob))
        r = run(req, alice, bob)
        if method == "POST" and r.status_code in (200, 201, 202):
            _remove_created(alice.api, collection, r)

    fuzz()
