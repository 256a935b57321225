"""The store behaves the same on SQLite and PostgreSQL, through a real ``strato serve`` on each.

Every test runs once per backend (the ``backend`` fixture is parametrised); the module's two
servers each start on an empty database, so the first start applies the migrations from nothing.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import re
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from orchestrator.db.engine import make_engine
from tests.store.conftest import new_database, store_server
from tests.strato_process import Api, StratoServer

pytestmark = pytest.mark.postgres

GiB, TiB = 2**30, 2**40


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from orchestrator.db.engine import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head() or ""


HEAD = _head()  # newest revision in orchestrator/db/migrations/versions


# --- helpers -------------------------------------------------------------------------------------


def db_url(server: StratoServer) -> str:
    if server.db_args:
        return server.db_args[1]
    return f"sqlite:///{(server.data_dir / 'strato.db').resolve()}"


def query(server: StratoServer, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one SQL statement, straight from the server's database."""

    async def run() -> list[tuple[Any, ...]]:
        engine = make_engine(db_url(server))
        try:
            async with engine.connect() as conn:
                return [tuple(row) for row in (await conn.execute(text(sql))).all()]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def user(server: StratoServer, name: str) -> Api:
    """A new user on this server (unique per call, so tests stay independent)."""
    return server.add_user(f"{name}-{uuidlib.uuid4().hex[:8]}@example.com", f"{name}-pw")


def create(api: Api, collection: str, *objects: dict[str, Any]) -> list[dict[str, Any]]:
    """Created objects; drives once their volume exists (they left ``creating``)."""
    made = api.ok("POST", f"{collection}/", {"objects": list(objects)}, 201)["objects"]
    if collection == "drives":
        made = [settled(api, drive["uuid"]) for drive in made]
    return made


def settled(api: Api, uuid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (drive := api.ok("GET", f"drives/{uuid}/"))["status"] == "creating":
        assert time.monotonic() < deadline, f"drive {uuid} still creating"
        time.sleep(0.05)
    return drive


def server_body(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "cpu": 2000, "mem": 2 * GiB, "vnc_password": "secret", **extra}


def drive_body(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "size": 10 * GiB, "media": "disk", **extra}


def everything(api: Api) -> dict[str, Any]:
    """All of a user's objects, full views."""
    return {c: api.ok("GET", f"{c}/detail/?limit=0") for c in ("servers", "drives", "tags")}


def names(listing: dict[str, Any]) -> list[str]:
    return sorted(o["name"] for o in listing["objects"])


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAC = re.compile(r"22(:[0-9a-f]{2}){5}")


def normalise(value: Any) -> Any:
    """Random identifiers → ``<uuid N>`` / ``<mac N>`` in order of appearance: comparable transcripts."""
    seen: dict[str, str] = {}

    def sub(kind: str) -> Any:
        return lambda m: seen.setdefault(m[0], f"<{kind} {len(seen)}>")

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, list):
            items = [walk(x) for x in v]
            if items and all(isinstance(x, dict) and set(x) == {"resource_uri", "uuid"} for x in items):
                # plain link lists (tags, mounted_on) are ordered by uuid: random, so compare as sets
                items.sort(key=lambda x: x["uuid"])
            return items
        if isinstance(v, str):
            return MAC.sub(sub("mac"), UUID.sub(sub("uuid"), v))
        return v

    return walk(value)


# --- migrations ----------------------------------------------------------------------------------


def test_migrations_apply_on_empty_database(backend: StratoServer) -> None:
    assert query(backend, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    tables = {"users", "api_tokens", "servers", "drives", "tags", "tag_links", "server_drives"}
    for table in tables:
        assert query(backend, f"SELECT count(*) FROM {table}") is not None
    r = backend.add_user("first@example.com", "pw").get("servers/")
    assert r.status_code == 200 and r.json()["meta"]["total_count"] == 0


def test_migrations_idempotent_on_restart(backend: StratoServer) -> None:
    api = user(backend, "migrate")
    made = create(api, "servers", server_body("survives-migration"))[0]
    for _ in range(2):
        backend.stop()
        backend.start()  # runs the migrations again on the migrated database
    assert query(backend, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert api.ok("GET", f"servers/{made['uuid']}/") == made
    # the command line migrates too, on the same live database
    backend.cli("users", "create", f"cli-{uuidlib.uuid4().hex[:6]}@example.com", "--password", "x")


# --- CRUD round trips ----------------------------------------------------------------------------


def scenario(api: Api) -> list[Any]:
    """Create, list, get, edit and delete servers, drives and tags; return every response body."""
    out: list[Any] = []
    tag_a, tag_b = create(api, "tags", {"name": "web", "meta": {"team": "blue"}}, {"name": "db"})
    out += [tag_a, tag_b]
    big, cd = create(api, "drives", drive_body("big", size=2 * TiB + 1, meta={"k": "v"}, tags=[tag_a["uuid"]]),
                     drive_body("cd", media="cdrom", size=5 * 2**20, allow_multimount=True))
    out += [big, cd]
    assert big["size"] == 2 * TiB + 4096, "sizes round up to 4 KiB blocks and need 64-bit columns"
    srv = create(api, "servers", server_body(
        "alpha", mem=128 * GiB, meta={"role": "web", "n": "1"}, tags=[tag_a["uuid"], tag_b["uuid"]],
        drives=[{"drive": big["uuid"], "device": "virtio", "dev_channel": "0:0", "boot_order": 1},
                {"drive": cd["uuid"], "device": "ide", "dev_channel": "0:1"}],
        nics=[{"model": "virtio", "ip_v4_conf": {"conf": "dhcp"}}, {"model": "e1000", "ip_v4_conf": None}],
    ))[0]
    other = create(api, "servers", server_body("beta", drives=[
        {"drive": cd["uuid"], "device": "ide", "dev_channel": "0:0"}]))[0]
    out += [srv, other]
    assert [d["drive"]["uuid"] for d in srv["drives"]] == [big["uuid"], cd["uuid"]]
    assert srv["meta"] == {"role": "web", "n": "1"} and srv["mem"] == 128 * GiB
    assert {t["uuid"] for t in srv["tags"]} == {tag_a["uuid"], tag_b["uuid"]}

    out.append(api.ok("GET", f"servers/{srv['uuid']}/"))
    assert out[-1] == srv
    out.append(api.ok("GET", f"drives/{big['uuid']}/"))
    assert out[-1]["status"] == "mounted" and out[-1]["mounted_on"] == [{
        "resource_uri": f"/api/2.0/servers/{srv['uuid']}/", "uuid": srv["uuid"]}]
    assert [m["uuid"] for m in api.ok("GET", f"drives/{cd['uuid']}/")["mounted_on"]] == sorted(
        [srv["uuid"], other["uuid"]])
    tag = api.ok("GET", f"tags/{tag_a['uuid']}/")
    out.append(tag)
    assert [(r["res_type"], r["uuid"]) for r in tag["resources"]] == [("drives", big["uuid"]), ("servers", srv["uuid"])]
    for path in ("servers/", "servers/detail/", "drives/", "drives/detail/", "tags/",
                 "servers/?limit=1&offset=1", "servers/?order_by=-name", f"servers/?tag={tag_b['uuid']}",
                 "servers/?tag__name=web", f"tags/{tag_a['uuid']}/servers/", f"tags/{tag_a['uuid']}/drives/detail/",
                 "drives/?media=cdrom", "servers/?name=beta", "servers/?fields=name,meta"):
        out.append(api.ok("GET", path))
    assert api.ok("GET", "servers/")["meta"]["total_count"] == 2
    assert [o["name"] for o in api.ok("GET", "servers/?order_by=-name")["objects"]] == ["beta", "alpha"]
    assert [o["name"] for o in api.ok("GET", "servers/?tag__name=db")["objects"]] == ["alpha"]

    # edits: columns, meta, nics (kept by MAC), drives, tags
    mac = srv["nics"][0]["mac"]
    edited = api.ok("PUT", f"servers/{srv['uuid']}/", server_body(
        "alpha2", cpu=4000, meta={"role": "db"}, tags=[tag_b["uuid"]],
        drives=[{"drive": big["uuid"], "device": "virtio", "dev_channel": "0:1"}],
        nics=[{"mac": mac, "model": "virtio", "ip_v4_conf": {"conf": "manual"}}, {"model": "rtl8139"}]))
    out.append(edited)
    assert edited["name"] == "alpha2" and edited["cpu"] == 4000 and edited["meta"] == {"role": "db"}
    assert edited["nics"][0]["mac"] == mac and edited["nics"][1]["model"] == "rtl8139"
    assert [t["uuid"] for t in edited["tags"]] == [tag_b["uuid"]]
    assert [d["dev_channel"] for d in edited["drives"]] == ["0:1"]
    assert api.ok("GET", f"servers/{srv['uuid']}/") == edited
    assert api.ok("GET", f"drives/{cd['uuid']}/")["mounted_on"] == [
        {"resource_uri": f"/api/2.0/servers/{other['uuid']}/", "uuid": other["uuid"]}]

    out.append(api.ok("PUT", f"drives/{big['uuid']}/", {"name": "bigger", "meta": {}, "tags": []}))
    assert out[-1]["meta"] == {} and out[-1]["tags"] == []
    out.append(api.ok("PUT", f"tags/{tag_b['uuid']}/", {"name": "db2", "meta": {"x": "y"},
                                                          "resources": [cd["uuid"], other["uuid"]]}))
    assert sorted(r["uuid"] for r in out[-1]["resources"]) == sorted([cd["uuid"], other["uuid"]])
    out.append(api.ok("GET", f"servers/{srv['uuid']}/"))
    out.append(api.ok("GET", f"tags/{tag_a['uuid']}/"))
    assert out[-1]["resources"] == []

    # deletes: a server with recurse, a tag (links go), a drive still attached to a stopped server
    api.ok("DELETE", f"tags/{tag_b['uuid']}/", status=204)
    assert api.ok("GET", f"servers/{other['uuid']}/")["tags"] == []
    api.ok("DELETE", f"servers/{srv['uuid']}/?recurse=disks", status=204)
    assert api.get(f"servers/{srv['uuid']}/").status_code == 404
    assert api.get(f"drives/{big['uuid']}/").status_code == 404  # its disk went with it
    assert api.ok("GET", f"drives/{cd['uuid']}/")["mounted_on"] == [  # the cdrom stays
        {"resource_uri": f"/api/2.0/servers/{other['uuid']}/", "uuid": other["uuid"]}]
    api.ok("DELETE", "servers/", {"objects": [{"uuid": other["uuid"]}]}, status=204)
    assert api.ok("GET", "servers/")["meta"]["total_count"] == 0
    assert api.ok("GET", f"tags/{tag_a['uuid']}/servers/")["objects"] == []
    out.append(everything(api))
    return out


def test_crud_round_trip(backend: StratoServer) -> None:
    scenario(user(backend, "crud"))


@pytest.fixture(scope="module")
def pair(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, StratoServer]]:
    """One more server per backend, side by side, for transcripts compared across backends."""
    servers = {"sqlite": store_server(tmp_path_factory.mktemp("pair-sqlite") / "data", None),
               "postgresql": store_server(tmp_path_factory.mktemp("pair-pg") / "data",
                                          new_database(postgres_url, "strato_pair"))}
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_both_backends_answer_identically(pair: dict[str, StratoServer]) -> None:
    transcripts = {name: normalise(scenario(server.add_user("same@example.com", "pw")))
                   for name, server in pair.items()}
    if transcripts["sqlite"] != transcripts["postgresql"]:
        a, b = (json.dumps(transcripts[n], indent=1, sort_keys=True).splitlines() for n in ("sqlite", "postgresql"))
        pytest.fail("\n".join(difflib.unified_diff(a, b, "sqlite", "postgresql", lineterm="", n=4)), pytrace=False)


# --- filters -------------------------------------------------------------------------------------

AWKWARD = ["100% done", "100 percent", "a_b", "axb", "back\\slash", "backslash", "two\\\\slashes", "50%_\\mix",
           "plain", "comma,name"]


@pytest.mark.parametrize(("needle", "expected"), [
    ("%", ["100% done", "50%_\\mix"]),
    ("0%", ["100% done", "50%_\\mix"]),
    ("_", ["50%_\\mix", "a_b"]),
    ("a_b", ["a_b"]),
    ("\\", ["50%_\\mix", "back\\slash", "two\\\\slashes"]),  # a lone backslash is taken literally
    ("k\\s", ["back\\slash"]),
    ("\\\\", ["50%_\\mix", "back\\slash", "two\\\\slashes"]),  # "\\" is the escape for one backslash
    ("o\\\\\\\\s", ["two\\\\slashes"]),
    ("%_\\", ["50%_\\mix"]),
    ("%%", []),
    ("__", []),
    ("BACK", ["back\\slash", "backslash"]),  # case-insensitive
    ("a\\,n", ["comma,name"]),                 # "\," escapes the value separator
    ("axb,100 ", ["100 percent", "axb"]),      # commas OR values
])
def test_contains_matches_literally(backend: StratoServer, needle: str, expected: list[str]) -> None:
    api = _filter_user(backend)
    r = api.get("servers/", params={"name__contains": needle, "limit": 0})
    assert r.status_code == 200, r.text
    assert names(r.json()) == sorted(expected)
    r = api.get("drives/", params={"name__icontains": needle, "limit": 0})
    assert r.status_code == 200, r.text
    assert len(r.json()["objects"]) == len(expected)


_filter_users: dict[str, Api] = {}
_filter_lock = threading.Lock()


def _filter_user(server: StratoServer) -> Api:
    with _filter_lock:
        if server.base not in _filter_users:
            api = user(server, "filters")
            create(api, "servers", *(server_body(n) for n in AWKWARD))
            create(api, "drives", *(drive_body(n) for n in AWKWARD))
            _filter_users[server.base] = api
        return _filter_users[server.base]


def test_exact_name_filter_with_awkward_values(backend: StratoServer) -> None:
    api = _filter_user(backend)
    assert names(api.ok("GET", "servers/?name=100%25%20done&limit=0")) == ["100% done"]
    assert names(api.get("servers/", params={"name": "a_b", "limit": 0}).json()) == ["a_b"]
    assert names(api.get("servers/", params={"name": "a%", "limit": 0}).json()) == []


# --- unicode -------------------------------------------------------------------------------------

UNICODE_NAME = "Сервер 🚀 日本語 — ñandú ǅ"
UNICODE_META = {"ключ": "значение 🎉", "emoji😀": "😀" * 100, "日本": "東京\ttab\nnewline \"quote\" \\"}


def test_unicode_names_and_meta_survive(backend: StratoServer) -> None:
    api = user(backend, "unicode")
    tag = create(api, "tags", {"name": "тег 🏷", "meta": UNICODE_META})[0]
    drive = create(api, "drives", drive_body(UNICODE_NAME, meta=UNICODE_META))[0]
    srv = create(api, "servers", server_body(UNICODE_NAME, meta=UNICODE_META, tags=[tag["uuid"]]))[0]
    long_name = "ж" * 1024
    long_srv = create(api, "servers", server_body(long_name))[0]
    for obj, collection in ((srv, "servers"), (drive, "drives"), (tag, "tags")):
        got = api.ok("GET", f"{collection}/{obj['uuid']}/")
        assert got["meta"] == UNICODE_META and list(got["meta"]) == list(UNICODE_META)
        assert got == ({**obj, "resources": got["resources"]} if collection == "tags" else obj)
    assert srv["name"] == UNICODE_NAME == drive["name"] and long_srv["name"] == long_name
    found = api.get("servers/", params={"name__contains": "日本語 — ñ", "limit": 0}).json()
    assert names(found) == [UNICODE_NAME]
    assert names(api.get("servers/", params={"name": UNICODE_NAME}).json()) == [UNICODE_NAME]
    assert api.ok("GET", "tags/?name=" + "тег 🏷")["objects"][0]["meta"] == UNICODE_META
    # too long (code points, not bytes) and NUL characters are refused on both backends, never stored
    assert api.post("servers/", server_body("ж" * 1025)).status_code == 400
    for bad in (server_body("nul\x00name"), server_body("ok", meta={"k": "v\x00"})):
        r = api.post("servers/", bad)
        assert r.status_code == 400 and r.json()[0]["error_type"] == "validation", r.text
    assert api.ok("GET", "servers/")["meta"]["total_count"] == 2


# --- isolation -----------------------------------------------------------------------------------


def test_users_are_isolated(backend: StratoServer) -> None:
    alice, bob = user(backend, "alice"), user(backend, "bob")
    tag = create(alice, "tags", {"name": "mine"})[0]
    drive = create(alice, "drives", drive_body("alice-disk"))[0]
    srv = create(alice, "servers", server_body("alice-srv", tags=[tag["uuid"]], drives=[
        {"drive": drive["uuid"], "device": "virtio", "dev_channel": "0:0"}]))[0]
    create(bob, "servers", server_body("bob-srv"))
    for collection in ("servers", "drives", "tags"):
        assert all(o["owner"]["uuid"] != srv["owner"]["uuid"]
                   for o in bob.ok("GET", f"{collection}/detail/?limit=0")["objects"])
    assert names(bob.ok("GET", "servers/?limit=0")) == ["bob-srv"]
    assert bob.ok("GET", "drives/")["meta"]["total_count"] == 0
    assert bob.ok("GET", "servers/?name__contains=alice")["meta"]["total_count"] == 0
    assert bob.ok("GET", f"servers/?tag={tag['uuid']}")["meta"]["total_count"] == 0
    for collection, obj in (("servers", srv), ("drives", drive), ("tags", tag)):
        assert bob.get(f"{collection}/{obj['uuid']}/").status_code == 404
        assert bob.put(f"{collection}/{obj['uuid']}/", {"name": "stolen"}).status_code == 404
        assert bob.delete(f"{collection}/{obj['uuid']}/").status_code == 404
    assert bob.get(f"tags/{tag['uuid']}/servers/").status_code == 404
    # bob can reference none of alice's objects
    assert bob.post("servers/", server_body("x", drives=[
        {"drive": drive["uuid"], "device": "virtio", "dev_channel": "0:0"}])).status_code == 400
    assert bob.post("servers/", server_body("x", tags=[tag["uuid"]])).status_code == 400
    assert bob.post("tags/", {"name": "grab", "resources": [srv["uuid"]]}).status_code == 400
    assert bob.delete("servers/", {"objects": [{"uuid": srv["uuid"]}]}).status_code == 404
    # and alice's objects are untouched
    assert alice.ok("GET", f"servers/{srv['uuid']}/") == srv
    assert alice.ok("GET", f"tags/{tag['uuid']}/")["name"] == "mine"
    assert names(bob.ok("GET", "servers/?limit=0")) == ["bob-srv"]


def test_bulk_drive_create_and_bulk_delete(backend: StratoServer) -> None:
    """Bulk writes in one transaction: drives tagged in request order; a DELETE naming one unknown
    object deletes nothing (its error points at that object), then the rest go in one request."""
    api = user(backend, "bulkwrite")
    unknown = str(uuidlib.uuid4())
    tag = create(api, "tags", {"name": "fleet"})[0]
    drives = create(api, "drives", *(drive_body(f"d{i}", tags=[tag["uuid"]]) for i in range(6)))
    assert [d["name"] for d in drives] == [f"d{i}" for i in range(6)]
    assert all(d["status"] == "unmounted" and [t["uuid"] for t in d["tags"]] == [tag["uuid"]] for d in drives), drives
    assert [r["uuid"] for r in api.ok("GET", f"tags/{tag['uuid']}/")["resources"]] == [d["uuid"] for d in drives]
    r = api.post("drives/", {"objects": [drive_body("ok", tags=[tag["uuid"]]), drive_body("bad", tags=[unknown])]})
    assert r.status_code == 400 and [e["error_point"] for e in r.json()] == ["objects.1.tags.0"], r.text
    assert api.ok("GET", "drives/?limit=0")["meta"]["total_count"] == 6

    servers = create(api, "servers", *(server_body(f"s{i}", tags=[tag["uuid"]]) for i in range(3)))
    r = api.delete("servers/", {"objects": [{"uuid": servers[0]["uuid"]}, {"uuid": unknown}, servers[2]["uuid"]]})
    assert r.status_code == 404 and [e["error_point"] for e in r.json()] == ["objects.1"], r.text
    assert names(api.ok("GET", "servers/detail/?limit=0")) == ["s0", "s1", "s2"]
    api.ok("DELETE", "servers/", [servers[0]["uuid"], {"uuid": servers[2]["uuid"]}], status=204)
    assert names(api.ok("GET", "servers/detail/?limit=0")) == ["s1"]
    api.ok("DELETE", "drives/", [d["uuid"] for d in drives[:4]], status=204)
    assert names(api.ok("GET", "drives/detail/?limit=0")) == ["d4", "d5"]
    assert [r["uuid"] for r in api.ok("GET", f"tags/{tag['uuid']}/")["resources"]] == [
        d["uuid"] for d in drives[4:]] + [servers[1]["uuid"]]


def test_a_disabled_user_is_refused_by_the_reads_that_check_their_caller(backend: StratoServer) -> None:
    """``GET /servers/{uuid}/``, its ``runtime/`` and ``/drives/{uuid}/`` confirm the caller in their
    own statement (a remembered Basic credential runs no check of its own there): disabled from the
    command line, the next of them is refused as a wrong password is, and enabled again answers."""
    dora = user(backend, "dora")
    assert dora.auth is not None
    email = dora.auth[0]
    drive = create(dora, "drives", drive_body("dora-disk"))[0]
    srv = create(dora, "servers", server_body("dora-srv"))[0]
    paths = (f"servers/{srv['uuid']}/", f"servers/{srv['uuid']}/runtime/", f"drives/{drive['uuid']}/")
    for path in paths:
        assert dora.get(path).status_code == 200, path  # the credential is remembered from here on
    assert dora.get(f"servers/{uuidlib.uuid4()}/").status_code == 404
    backend.cli("users", "disable", email)
    wrong = Api(backend.base, (email, "not-the-password")).get(paths[0])
    assert wrong.status_code == 401
    for path in paths:
        refused = dora.get(path)
        assert (refused.status_code, refused.json()) == (401, wrong.json()), path
    backend.cli("users", "enable", email)
    answers = [dora.ok("GET", path) for path in paths]  # 200 each
    assert answers[0] == srv


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_burst_of_creates(backend: StratoServer) -> None:
    api = user(backend, "burst")
    tag = create(api, "tags", {"name": "burst"})[0]
    api.ok("GET", "servers/")  # the password check happens once; the burst measures the store
    barrier = threading.Barrier(20)

    def one(i: int) -> tuple[int, str]:
        mine = Api(api.base, api.auth)  # a session (connection) per thread
        barrier.wait(30)
        kind = ("servers", server_body(f"burst-{i}", tags=[tag["uuid"]], meta={"i": str(i)})) if i % 2 else (
            "drives", drive_body(f"burst-{i}", tags=[tag["uuid"]]))
        r = mine.post(f"{kind[0]}/", {"objects": [kind[1]]})
        return r.status_code, r.text

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert [status for status, _ in results] == [201] * 20, [t for s, t in results if s != 201]
    servers, drives = api.ok("GET", "servers/?limit=0"), api.ok("GET", "drives/?limit=0")
    assert servers["meta"]["total_count"] == 10 == len(servers["objects"])
    assert drives["meta"]["total_count"] == 10 == len(drives["objects"])
    assert names(servers) == sorted(f"burst-{i}" for i in range(1, 20, 2))
    assert api.ok("GET", f"servers/?tag={tag['uuid']}&limit=5")["meta"]["total_count"] == 10
    assert len(api.ok("GET", f"tags/{tag['uuid']}/")["resources"]) == 20


def test_concurrent_burst_of_bulk_creates(backend: StratoServer) -> None:
    api = user(backend, "bulk")
    api.ok("GET", "servers/")

    def one(i: int) -> int:
        r = Api(api.base, api.auth).post("servers/", {"objects": [server_body(f"b{i}-{j}") for j in range(5)]})
        return r.status_code

    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(one, range(20))) == [201] * 20
    assert api.ok("GET", "servers/?limit=3")["meta"]["total_count"] == 100


# --- restart -------------------------------------------------------------------------------------


def test_restart_keeps_everything(backend: StratoServer) -> None:
    api = user(backend, "restart")
    tag = create(api, "tags", {"name": "keep", "meta": UNICODE_META})[0]
    drive = create(api, "drives", drive_body("keep-disk", size=3 * TiB, tags=[tag["uuid"]]))[0]
    create(api, "servers", server_body("keep-srv", meta=UNICODE_META, tags=[tag["uuid"]], nics=[{"model": "virtio"}],
                                       drives=[{"drive": drive["uuid"], "device": "virtio", "dev_channel": "0:0"}]))
    before = {name: everything(a) for name, a in (("restart", api), ("filters", _filter_user(backend)))}
    users_before = query(backend, "SELECT count(*) FROM users")
    backend.stop()
    backend.start()
    after = {name: everything(a) for name, a in (("restart", api), ("filters", _filter_user(backend)))}
    assert after == before
    assert query(backend, "SELECT count(*) FROM users") == users_before
    assert query(backend, "SELECT version_num FROM alembic_version") == [(HEAD,)]


def test_database_files_stay_in_data_dir(backend: StratoServer) -> None:
    sqlite_file = Path(backend.data_dir, "strato.db")
    assert sqlite_file.exists() == (not backend.db_args)
