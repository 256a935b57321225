"""Issue 16 item 3: Argon2id hashes, the same work for unknown users, throttled guessing (429)."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import statistics
import time
from collections.abc import Callable

import requests

from orchestrator.web.auth import check_password, hash_password
from tests.api.conftest import assert_error
from tests.strato_process import Api, StratoServer


def test_hashes_are_argon2id_and_old_scrypt_hashes_still_verify() -> None:
    stored = hash_password("s3cret")
    assert stored.startswith("$argon2id$") and check_password("s3cret", stored) and not check_password("x", stored)
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(b"old", salt=salt, n=2**14, r=8, p=1)
    legacy = f"scrypt${2**14}$8$1${salt.hex()}${digest.hex()}"
    assert check_password("old", legacy) and not check_password("new", legacy)
    assert not check_password("x", "garbage")


def test_users_get_argon2_hashes(strato_server: StratoServer, new_user: Callable[[], Api]) -> None:
    new_user()
    with sqlite3.connect(strato_server.data_dir / "strato.db") as con:
        hashes = [row[0] for row in con.execute("SELECT password_hash FROM users")]
    assert hashes and all(h.startswith("$argon2id$") for h in hashes)


def _median_ms(url: str, auth: tuple[str, str], n: int = 9) -> float:
    times = []
    for i in range(n):
        started = time.perf_counter()
        r = requests.get(url, auth=(auth[0], f"{auth[1]}-{i}"), timeout=30)
        times.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 401, r.text
    return statistics.median(times)


def test_unknown_users_cost_the_same_work(strato_server: StratoServer) -> None:
    known = strato_server.add_user("timing@example.com", "right")
    url = known.url("servers/")
    unknown_ms = _median_ms(url, ("nobody-here@example.com", "wrong"))
    known_ms = _median_ms(url, ("timing@example.com", "wrong"))
    assert 0.5 < unknown_ms / known_ms < 2, (unknown_ms, known_ms)


def test_guessing_is_throttled_per_user(strato_server: StratoServer, alice: Api) -> None:
    victim = strato_server.add_user("guessed@example.com", "right-one")
    for i in range(10):
        assert_error(requests.get(victim.url("servers/"), auth=("guessed@example.com", f"guess{i}"), timeout=30), 401)
    r = requests.get(victim.url("servers/"), auth=("guessed@example.com", "guess-11"), timeout=30)
    assert_error(r, 429, None, "permission")
    assert int(r.headers["Retry-After"]) >= 1
    # Even the right password waits now, through Basic auth and the login action alike ...
    assert_error(victim.get("servers/"), 429)
    login = requests.post(victim.url("accounts/action/?do=login"), timeout=30,
                          json={"username": "guessed@example.com", "password": "right-one"})
    assert_error(login, 429)
    # ... and nobody else does.
    assert alice.get("servers/").status_code == 200
    time.sleep(int(r.headers["Retry-After"]) + 0.2)
    assert victim.get("servers/").status_code == 200


def test_tokens_revoke(strato_server: StratoServer) -> None:
    strato_server.add_user("tokens@example.com", "pw")
    first, second = (strato_server.cli("tokens", "create", "tokens@example.com") for _ in range(2))
    url = f"{strato_server.base}/api/2.0/servers/"

    def status(token: str) -> int:
        return requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code

    assert status(first) == status(second) == 200
    assert "1 token" in strato_server.cli("tokens", "revoke", "tokens@example.com", "--token", first)
    assert (status(first), status(second)) == (401, 200)
    assert "1 token" in strato_server.cli("tokens", "revoke", "tokens@example.com")
    assert status(second) == 401
