"""The API node answers real HTTP with Basic auth and the CloudSigma error format."""

from tests.strato_process import Api


def test_create_and_get_server(alice: Api) -> None:
    created = alice.ok("POST", "servers/", {"objects": [{"name": "s", "cpu": 1000, "mem": 2**29,
                                                          "vnc_password": "pw"}]}, 201)["objects"][0]
    assert created["status"] == "stopped" and created["smp"] == 1
    got = alice.ok("GET", f"servers/{created['uuid']}")
    assert got == created
    alice.ok("DELETE", f"servers/{created['uuid']}/", status=204)
    assert alice.get(f"servers/{created['uuid']}/").status_code == 404


def test_unauthenticated_gets_challenge(anonymous: Api) -> None:
    r = anonymous.get("servers/")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="users"'
    assert r.json()[0]["error_type"] == "permission"
