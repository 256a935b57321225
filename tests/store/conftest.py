"""Store fixtures: a real PostgreSQL server (Debian's binaries, run as ``postgres``) and one
``strato serve`` per backend."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.strato_process import StratoServer, free_port

PG_BIN = Path(os.environ.get("STRATO_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"
BACKENDS = ("sqlite", "postgresql")
FAKE_AGENT = Path(__file__).with_name("fake_agent.py")


def _as_postgres(*cmd: str | Path, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # PostgreSQL refuses to run as root; when we are not root we simply are the server's user.
    prefix = ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *map(str, cmd)], check=check, capture_output=True, text=True, timeout=timeout)


def _require_binaries() -> None:
    missing = [name for name in ("initdb", "pg_ctl", "postgres", "createdb") if not (PG_BIN / name).is_file()]
    if missing:
        pytest.fail(f"PostgreSQL server binaries missing in {PG_BIN} ({', '.join(missing)}): "
                    "install Debian's postgresql package (scripts/setup.sh does), or point STRATO_PG_BIN at them",
                    pytrace=False)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            pytest.fail(f"no {PG_USER!r} OS user to run PostgreSQL as (Debian's postgresql package creates it)",
                        pytrace=False)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1:<free port>; yields the URL of database ``strato``
    (also for the benchmarks)."""
    _require_binaries()
    root = Path(tempfile.mkdtemp(prefix="strato-pg-"))
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, PG_USER)
        shutil.chown(sockets, PG_USER)
    os.chmod(root, 0o700)
    port = free_port()
    started = False
    try:
        _as_postgres(PG_BIN / "initdb", "-D", data, "-U", PG_USER, "--auth=trust", "--encoding=UTF8",
                     "--locale=C.UTF-8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockets} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        started = True  # from here on, try to stop it whatever happens
        _as_postgres(PG_BIN / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start")
        _as_postgres(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "strato")
        yield f"postgresql://{PG_USER}@127.0.0.1:{port}/strato"
    except subprocess.CalledProcessError as e:
        server_log = log.read_text()[-3000:] if log.exists() else ""
        pytest.fail(f"PostgreSQL set-up failed: {e.cmd}: {e.stderr or e.stdout}\n{server_log}", pytrace=False)
    finally:
        if started:
            stopped = _as_postgres(PG_BIN / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "30", "stop",
                                   check=False)
            if stopped.returncode != 0 and (data / "postmaster.pid").exists():
                # pg_ctl could not stop it: signal the postmaster whose pid it recorded, and only it.
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int((data / "postmaster.pid").read_text().split()[0]), 9)
                time.sleep(0.5)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StratoServer]:
    """A running ``strato serve`` on an empty database of each backend (users created by the tests)."""
    data_dir = tmp_path_factory.mktemp(f"store-{request.param}") / "data"
    db = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    if db is not None:
        _reset_database(db)
    server = store_server(data_dir, db)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _reset_database(url: str) -> None:
    """Each module's server starts on an empty ``strato`` database."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    for tool in ("dropdb", "createdb"):
        args = ["--if-exists"] if tool == "dropdb" else []
        _as_postgres(PG_BIN / tool, *args, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port),
                     "-U", PG_USER, parts.path.lstrip("/"))


def new_database(base_url: str, name: str) -> str:
    """A fresh empty database ``name`` in the cluster of ``base_url``; returns its URL."""
    base, _, _ = base_url.rpartition("/")
    _reset_database(f"{base}/{name}")
    return f"{base}/{name}"


def store_server(data_dir: Path, db: str | None) -> StratoServer:
    """A ``strato serve`` (not started) whose one host is the in-memory fake agent, not libvirt."""
    server = StratoServer(data_dir, db=db, extra_env={"STRATO_LOCAL_HOST": "false"})
    data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(_register_fake_host(db or f"sqlite:///{(data_dir / 'strato.db').resolve()}"))
    return server


async def _register_fake_host(url: str) -> None:
    from orchestrator.db import models
    from orchestrator.db.engine import make_engine, make_sessionmaker, migrate

    host_model = getattr(models, "Host", None)
    if host_model is None:  # no placement in this version: drives need no host
        return
    engine = make_engine(url)
    try:
        await migrate(engine)
        async with make_sessionmaker(engine).begin() as s:
            s.add(host_model(name="fake", address="local", agent_command=[sys.executable, str(FAKE_AGENT)],
                             state="down", facts={}))
    finally:
        await engine.dispose()
