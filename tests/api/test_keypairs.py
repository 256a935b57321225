"""Keypairs and pubkeys (spec §35), servers' ``pubkeys``, the global context (§33.4), locations (§34)
and the profile's upstream keys (§36), against a real ``strato serve``.

Test keys are made here with ``cryptography`` (no key files in the repository); the 8192-bit RSA
public key is built from a random odd modulus, which is all a public key line holds (generating real
8192-bit primes takes far longer and proves nothing more about a size check).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from tests.api.conftest import assert_error, make_server, make_tag, uuids
from tests.strato_process import Api

PEM, OPENSSH, RAW = ser.Encoding.PEM, ser.Encoding.OpenSSH, ser.NoEncryption()


def public_line(key: Any) -> str:
    public = key if not hasattr(key, "public_key") else key.public_key()
    return public.public_bytes(OPENSSH, ser.PublicFormat.OpenSSH).decode()


def md5_fingerprint(line: str) -> str:
    """What ``ssh-keygen -l -E md5`` prints, computed independently of the server."""
    digest = hashlib.md5(base64.b64decode(line.split()[1])).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, 32, 2))


def private_text(key: Any, fmt: ser.PrivateFormat) -> str:
    return key.private_bytes(PEM, fmt, RAW).decode()


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    """Keys made once per module (RSA generation is the slow part)."""
    huge = rsa.RSAPublicNumbers(65537, secrets.randbits(8192) | (1 << 8191) | 1).public_key()
    return {"rsa": rsa.generate_private_key(65537, 2048), "rsa2": rsa.generate_private_key(65537, 2048),
            "rsa4096": rsa.generate_private_key(65537, 4096), "ed25519": ed25519.Ed25519PrivateKey.generate(),
            "dsa": dsa.generate_private_key(1024), "ecdsa": ec.generate_private_key(ec.SECP256R1()),
            "rsa8192_public": huge}


def create(api: Api, body: dict[str, Any] | list[dict[str, Any]], status: int = 201) -> Any:
    wrapped = {"objects": body if isinstance(body, list) else [body]}
    got = api.ok("POST", "keypairs/", wrapped, status)
    return got["objects"] if isinstance(body, list) else got["objects"][0]


def keypair(api: Api, key: Any, *, private: bool = True, **extra: Any) -> dict[str, Any]:
    body = {"name": f"kp-{secrets.token_hex(4)}", "public_key": public_line(key), **extra}
    if private:
        body["private_key"] = private_text(key, ser.PrivateFormat.TraditionalOpenSSL
                                           if isinstance(key, rsa.RSAPrivateKey) else ser.PrivateFormat.OpenSSH)
    return create(api, body)


KEYPAIR_KEYS = {"uuid", "resource_uri", "name", "public_key", "private_key", "fingerprint", "meta", "tags", "grantees",
                "permissions"}
PUBKEY_KEYS = KEYPAIR_KEYS - {"private_key"} | {"has_private_key"}


# --- the three create forms ------------------------------------------------------------------------


@pytest.mark.parametrize("kind,fmt", [("rsa", ser.PrivateFormat.TraditionalOpenSSL), ("rsa", ser.PrivateFormat.PKCS8),
                                      ("rsa", ser.PrivateFormat.OpenSSH), ("ed25519", ser.PrivateFormat.OpenSSH),
                                      ("ed25519", ser.PrivateFormat.PKCS8)])
def test_create_with_own_pair(alice: Api, keys: dict[str, Any], kind: str, fmt: ser.PrivateFormat) -> None:
    key = keys[kind]
    line, private = public_line(key) + " me@laptop", private_text(key, fmt)
    got = create(alice, {"name": "mine", "public_key": line, "private_key": private, "meta": {"k": "v"}})
    assert set(got) == KEYPAIR_KEYS
    assert got["resource_uri"] == f"/api/2.0/keypairs/{got['uuid']}/"
    assert (got["name"], got["public_key"], got["private_key"], got["meta"]) == ("mine", line, private, {"k": "v"})
    assert got["fingerprint"] == md5_fingerprint(line)
    assert alice.ok("GET", f"keypairs/{got['uuid']}/") == got
    public = alice.ok("GET", f"pubkeys/{got['uuid']}/")
    assert set(public) == PUBKEY_KEYS and public["has_private_key"] is True
    assert public["resource_uri"] == f"/api/2.0/pubkeys/{got['uuid']}/"
    assert {k: v for k, v in public.items() if k not in ("has_private_key", "resource_uri")} == {
        k: v for k, v in got.items() if k not in ("private_key", "resource_uri")}


def test_create_with_public_key_only(alice: Api, keys: dict[str, Any]) -> None:
    got = keypair(alice, keys["ed25519"], private=False)
    assert got["private_key"] is None and got["fingerprint"] == md5_fingerprint(got["public_key"])
    assert alice.ok("GET", f"pubkeys/{got['uuid']}/")["has_private_key"] is False


def test_create_with_private_key_only_derives_the_public_key(alice: Api, keys: dict[str, Any]) -> None:
    got = create(alice, {"name": "derived", "private_key": private_text(keys["rsa"], ser.PrivateFormat.PKCS8)})
    assert got["public_key"] == public_line(keys["rsa"])


def test_rsa_4096_is_accepted(alice: Api, keys: dict[str, Any]) -> None:
    got = keypair(alice, keys["rsa4096"])
    assert got["fingerprint"] == md5_fingerprint(public_line(keys["rsa4096"]))


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_generated_pair(alice: Api, algorithm: str) -> None:
    got = create(alice, {"name": f"gen-{algorithm}", "algorithm_type": algorithm})
    text = got["private_key"].encode()
    loaded = ser.load_pem_private_key(text, None) if b"BEGIN RSA" in text else ser.load_ssh_private_key(text, None)
    assert isinstance(loaded, rsa.RSAPrivateKey if algorithm == "rsa" else ed25519.Ed25519PrivateKey)
    if algorithm == "rsa":
        assert text.startswith(b"-----BEGIN RSA PRIVATE KEY-----") and loaded.key_size == 2048
    assert got["public_key"] == public_line(loaded)
    assert got["fingerprint"] == md5_fingerprint(got["public_key"])
    # Stored: GET /keypairs/ shows it again (dumps/response_keypair_get); /pubkeys/ never does.
    assert alice.ok("GET", f"keypairs/{got['uuid']}/")["private_key"] == got["private_key"]
    assert "private_key" not in alice.ok("GET", f"pubkeys/{got['uuid']}/")


def test_bulk_create_and_bare_object(alice: Api, keys: dict[str, Any]) -> None:
    made = create(alice, [{"name": "a", "algorithm_type": "ed25519"},
                          {"name": "b", "public_key": public_line(keys["rsa2"])}])
    assert [k["name"] for k in made] == ["a", "b"]
    r = alice.post("keypairs/", {"name": "bare", "public_key": public_line(keys["ed25519"])})
    assert r.status_code == 201 and r.headers["Location"] == r.json()["objects"][0]["resource_uri"]


# --- bad keys --------------------------------------------------------------------------------------


def _truncated(keys: dict[str, Any]) -> str:
    kind, blob = public_line(keys["rsa"]).split()
    return f"{kind} {blob[:40]}"


BAD: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str]] = [
    ("dsa public key", lambda k: {"public_key": public_line(k["dsa"])}, "public_key"),
    ("ecdsa public key", lambda k: {"public_key": public_line(k["ecdsa"])}, "public_key"),
    ("8192-bit rsa", lambda k: {"public_key": public_line(k["rsa8192_public"])}, "public_key"),
    ("garbage", lambda k: {"public_key": "not a key at all"}, "public_key"),
    ("empty", lambda k: {"public_key": ""}, "public_key"),
    ("truncated blob", lambda k: {"public_key": _truncated(k)}, "public_key"),
    ("two lines", lambda k: {"public_key": public_line(k["rsa"]) + "\n" + public_line(k["rsa2"])}, "public_key"),
    ("type name lies", lambda k: {"public_key": "ssh-ed25519 " + public_line(k["rsa"]).split()[1]}, "public_key"),
    ("not a string", lambda k: {"public_key": 42}, "public_key"),
    ("no key at all", lambda k: {}, "public_key"),
    ("mismatched private key", lambda k: {"public_key": public_line(k["rsa"]),
                                          "private_key": private_text(k["rsa2"], ser.PrivateFormat.PKCS8)},
     "private_key"),
    ("rsa public, ed25519 private", lambda k: {"public_key": public_line(k["rsa"]),
                                               "private_key": private_text(k["ed25519"], ser.PrivateFormat.PKCS8)},
     "private_key"),
    ("ecdsa private key", lambda k: {"public_key": public_line(k["rsa"]),
                                     "private_key": private_text(k["ecdsa"], ser.PrivateFormat.PKCS8)},
     "private_key"),
    ("garbage private key", lambda k: {"public_key": public_line(k["rsa"]), "private_key": "-----BEGIN x"},
     "private_key"),
    ("encrypted private key", lambda k: {"public_key": public_line(k["rsa"]), "private_key": k["rsa"].private_bytes(
        PEM, ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(b"pw")).decode()}, "private_key"),
    ("unknown algorithm", lambda k: {"algorithm_type": "dsa"}, "algorithm_type"),
    ("algorithm and own key", lambda k: {"algorithm_type": "rsa", "public_key": public_line(k["rsa"])},
     "algorithm_type"),
]


@pytest.mark.filterwarnings("ignore:SSH DSA key")  # the DSA key itself is the point
@pytest.mark.parametrize("what,body,point", BAD, ids=[b[0] for b in BAD])
def test_bad_keys_are_400(alice: Api, keys: dict[str, Any], what: str, body: Callable[[dict[str, Any]], Any],
                          point: str) -> None:
    before = uuids(alice, "keypairs")
    assert_error(alice.post("keypairs/", {"objects": [{"name": "bad", **body(keys)}]}), 400, f"objects.0.{point}")
    assert_error(alice.post("keypairs/", {"name": "bad", **body(keys)}), 400, point)  # a bare object: no prefix
    assert uuids(alice, "keypairs") == before


def test_name_is_required_and_bulk_is_all_or_nothing(alice: Api, keys: dict[str, Any]) -> None:
    before = uuids(alice, "keypairs")
    good = {"name": "fine", "public_key": public_line(keys["rsa"])}
    assert_error(alice.post("keypairs/", {"objects": [good, {"public_key": public_line(keys["rsa"])}]}), 400,
                 "objects.1.name")
    assert_error(alice.post("keypairs/", {"objects": [good, {"name": "x", "public_key": "junk"}]}), 400,
                 "objects.1.public_key")
    assert uuids(alice, "keypairs") == before


# --- lists, views, edits ---------------------------------------------------------------------------


def test_lists_and_filters(new_user: Callable[[], Api], keys: dict[str, Any]) -> None:
    api = new_user()
    first, second = keypair(api, keys["rsa"], name="first"), keypair(api, keys["ed25519"], private=False)
    for collection in ("keypairs", "pubkeys"):
        for view in ("", "detail/"):
            listed = api.ok("GET", f"{collection}/{view}")
            assert [k["uuid"] for k in listed["objects"]] == [first["uuid"], second["uuid"]]
            assert listed["meta"] == {"limit": 20, "offset": 0, "total_count": 2}
        assert [k["uuid"] for k in api.ok("GET", f"{collection}/?name=first")["objects"]] == [first["uuid"]]
        assert api.ok("GET", f"{collection}/?limit=1&offset=1")["objects"][0]["uuid"] == second["uuid"]
        schema = api.ok("GET", f"{collection}/schema/")
        assert {"uuid", "name", "public_key", "fingerprint"} <= set(schema["fields"])
    assert api.ok("GET", "keypairs/")["objects"][0]["private_key"] == first["private_key"]
    assert [k["has_private_key"] for k in api.ok("GET", "pubkeys/")["objects"]] == [True, False]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_pubkeys_are_read_only(alice: Api, keys: dict[str, Any], method: str) -> None:
    kp = keypair(alice, keys["ed25519"], private=False)
    target = "pubkeys/" if method == "POST" else f"pubkeys/{kp['uuid']}/"
    assert_error(alice.request(method, target, {"name": "x", "public_key": kp["public_key"]}), 405)
    assert alice.ok("GET", f"keypairs/{kp['uuid']}/") == kp


def test_put_changes_name_meta_tags_only(alice: Api, keys: dict[str, Any]) -> None:
    kp, tag = keypair(alice, keys["rsa"]), make_tag(alice)
    # Clients send the whole object back (dumps/request_keypair_update): unchanged keys are fine.
    body = dict(kp, name="renamed", meta={"purpose": "deploy"}, tags=[tag["uuid"]], fingerprint="00:00")
    got = alice.ok("PUT", f"keypairs/{kp['uuid']}/", body)
    assert (got["name"], got["meta"], [t["uuid"] for t in got["tags"]]) == ("renamed", {"purpose": "deploy"},
                                                                            [tag["uuid"]])
    assert {k: got[k] for k in ("public_key", "private_key", "fingerprint")} == {
        k: kp[k] for k in ("public_key", "private_key", "fingerprint")}
    assert alice.ok("GET", f"keypairs/{kp['uuid']}/") == got
    assert [r["uuid"] for r in alice.ok("GET", f"tags/{tag['uuid']}/")["resources"]] == [kp["uuid"]]
    for key, value in (("public_key", public_line(keys["rsa2"])), ("private_key", None), ("name", 5)):
        assert_error(alice.put(f"keypairs/{kp['uuid']}/", {key: value}), 400, key)
    assert alice.ok("GET", f"keypairs/{kp['uuid']}/") == got


# --- servers' pubkeys and deletion ------------------------------------------------------------------


def test_server_pubkeys_reference_forms_and_delete(alice: Api, keys: dict[str, Any]) -> None:
    one, two, three = (keypair(alice, keys[k], private=False) for k in ("rsa", "ed25519", "rsa2"))
    server = make_server(alice, pubkeys=[one["uuid"], f"/api/2.0/pubkeys/{two['uuid']}/",
                                         {"uuid": three["uuid"], "resource_uri": three["resource_uri"]}])
    assert server["pubkeys"] == [{"uuid": k["uuid"], "resource_uri": f"/api/2.0/pubkeys/{k['uuid']}/"}
                                 for k in (one, two, three)]
    other = make_server(alice, pubkeys=[f"/api/2.0/keypairs/{one['uuid']}/"])
    # What GET returned goes back unchanged (terraform re-sends objects).
    again = alice.ok("PUT", f"servers/{server['uuid']}/", {"pubkeys": server["pubkeys"]})
    assert again["pubkeys"] == server["pubkeys"]

    assert alice.delete(f"keypairs/{one['uuid']}/").status_code == 204
    assert [k["uuid"] for k in alice.ok("GET", f"servers/{server['uuid']}/")["pubkeys"]] == [two["uuid"], three["uuid"]]
    assert alice.ok("GET", f"servers/{other['uuid']}/")["pubkeys"] == []
    for path in (f"keypairs/{one['uuid']}/", f"pubkeys/{one['uuid']}/"):
        assert_error(alice.get(path), 404)
    # The bulk form deletes several at once.
    r = alice.delete("keypairs/", {"objects": [{"uuid": two["uuid"]}, {"uuid": three["uuid"]}]})
    assert r.status_code == 204
    assert alice.ok("GET", f"servers/{server['uuid']}/")["pubkeys"] == []


def test_unknown_pubkeys_are_400(alice: Api, keys: dict[str, Any]) -> None:
    kp = keypair(alice, keys["ed25519"], private=False)
    server = make_server(alice)
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_error(alice.put(f"servers/{server['uuid']}/", {"pubkeys": [kp["uuid"], unknown]}), 400, "pubkeys.1")
    assert_error(alice.put(f"servers/{server['uuid']}/", {"pubkeys": ["/api/2.0/drives/x/"]}), 400, "pubkeys")
    assert alice.ok("GET", f"servers/{server['uuid']}/")["pubkeys"] == []


# --- tenants ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bobs_keypair(bob: Api, keys: dict[str, Any]) -> dict[str, Any]:
    return keypair(bob, keys["rsa"], name="bobs")


@pytest.mark.parametrize("method,path", [("GET", "keypairs/{}/"), ("PUT", "keypairs/{}/"), ("DELETE", "keypairs/{}/"),
                                         ("GET", "pubkeys/{}/"), ("GET", "keypairs/{}"), ("GET", "pubkeys/{}")])
def test_other_users_keypair_is_404(alice: Api, bob: Api, bobs_keypair: dict[str, Any], method: str,
                                    path: str) -> None:
    r = alice.request(method, path.format(bobs_keypair["uuid"]), {"name": "stolen"} if method == "PUT" else None)
    assert_error(r, 404, error_type="notexist")
    assert bob.ok("GET", f"keypairs/{bobs_keypair['uuid']}/") == bobs_keypair


def test_other_users_keypair_is_never_listed_or_referenced(alice: Api, bob: Api,
                                                            bobs_keypair: dict[str, Any]) -> None:
    uuid = bobs_keypair["uuid"]
    for collection in ("keypairs", "pubkeys"):
        for query in ("", "detail/", f"?uuid={uuid}", "?name=bobs"):
            assert uuid not in {k["uuid"] for k in alice.ok("GET", f"{collection}/{query}")["objects"]}
    assert_error(alice.post("servers/", {"objects": [{"name": "s", "cpu": 1000, "mem": 2**29, "vnc_password": "p",
                                                      "pubkeys": [uuid]}]}), 400, "objects.0.pubkeys.0")
    assert_error(alice.delete("keypairs/", {"objects": [{"uuid": uuid}]}), 404)
    assert bob.ok("GET", f"keypairs/{uuid}/") == bobs_keypair


# --- global context ---------------------------------------------------------------------------------


def test_global_context_round_trip(new_user: Callable[[], Api], bob: Api) -> None:
    api = new_user()
    assert api.ok("GET", "global_context/") == {}
    assert api.ok("POST", "global_context/", {"a": "1", "b": "two"}) == {"a": "1", "b": "two"}
    assert api.ok("GET", "global_context/") == {"a": "1", "b": "two"}
    # The body replaces the whole object (spec §33.4 decision).
    assert api.ok("POST", "global_context/", {"c": "3"}) == {"c": "3"}
    assert api.ok("GET", "global_context") == {"c": "3"}
    assert api.ok("POST", "global_context/", {}) == {}
    assert "c" not in bob.ok("GET", "global_context/")


@pytest.mark.parametrize("raw,point", [(b"[1, 2]", None), (b'"text"', None), (b"{bad json", None), (b"", None),
                                       (b'{"k": {"nested": "x"}}', "k"), (b'{"k": [1]}', "k"),
                                       (b'{"k": "a\\u0000b"}', "k")])
def test_global_context_bad_bodies(new_user: Callable[[], Api], raw: bytes, point: str | None) -> None:
    api = new_user()
    api.ok("POST", "global_context/", {"keep": "me"})
    assert_error(api.request("POST", "global_context/", raw=raw), 400, point)
    assert api.ok("GET", "global_context/") == {"keep": "me"}


# --- locations --------------------------------------------------------------------------------------


LOCATION_KEYS = {"alternative_frontend_url", "api_endpoint", "country_code", "default_frontend_signup_url",
                 "default_frontend_url", "display_name", "documentation_url", "id", "upload_url", "websocket_url"}


@pytest.mark.parametrize("who", ["anonymous", "alice"])
def test_locations_describe_this_node(request: pytest.FixtureRequest, who: str) -> None:
    api: Api = request.getfixturevalue(who)
    got = api.ok("GET", "locations/?limit=0")
    assert got["meta"] == {"limit": 0, "offset": 0, "total_count": 1}
    (here,) = got["objects"]
    assert set(here) == LOCATION_KEYS and all(isinstance(v, str) and v for v in here.values())
    assert here["api_endpoint"] == here["upload_url"] == f"{api.base}/api/2.0/"
    assert here["websocket_url"] == f"{api.base.replace('http://', 'ws://')}/websocket"
    assert (here["id"], here["country_code"]) == ("STRATO", "ZZ")
    # The advertised endpoint is one a client can use.
    assert requests.get(here["api_endpoint"] + "capabilities/", auth=("alice@example.com", "alice-pw"),
                        timeout=30).status_code == 200


def test_locations_check_credentials_that_are_sent(anonymous: Api) -> None:
    assert_error(Api(anonymous.base, ("alice@example.com", "wrong")).get("locations/"), 401)


# --- profile ----------------------------------------------------------------------------------------


def test_profile_carries_upstream_keys(new_user: Callable[[], Api]) -> None:
    api = new_user()
    got = api.ok("GET", "profile/")
    assert got["state"] == "REGULAR" and got["clone_naming"] == "NONE" and got["language"] == "EN"
    assert (got["first_name"], got["currency"], got["tax_rate"], got["autotopup_amount"]) == ("", None, None, "0")
    changed = api.ok("PUT", "profile/", {"first_name": "Ada", "company": "Engines", "mailing_list": False,
                                         "state": "BLOCKED", "currency": "USD", "autotopup_amount": "12.50"})
    assert (changed["first_name"], changed["company"], changed["mailing_list"]) == ("Ada", "Engines", False)
    assert (changed["state"], changed["currency"], changed["autotopup_amount"]) == ("REGULAR", None, "12.50")
    # Merge semantics: what was not sent stays.
    again = api.ok("PUT", "profile/", {"last_name": "Lovelace"})
    assert (again["first_name"], again["last_name"]) == ("Ada", "Lovelace")
    assert api.ok("GET", "profile/") == again
    for key, value in (("first_name", 5), ("mailing_list", "yes"), ("autotopup_amount", "lots"),
                       ("clone_naming", "RANDOM")):
        assert_error(api.put("profile/", {key: value}), 400, key)
