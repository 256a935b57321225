"""``strato``: run the API node and manage users and API tokens."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from orchestrator.app import create_app
from orchestrator.auth import create_token, create_user
from orchestrator.config import Config
from orchestrator.db.engine import make_engine, make_sessionmaker, migrate
from orchestrator.db.models import User


def _config(args: argparse.Namespace) -> Config:
    config = Config.load(args.config, data_dir=args.data_dir, db=args.db,
                         listen=getattr(args, "listen", None))
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return config


def serve(args: argparse.Namespace) -> int:
    config = _config(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # run_app handles SIGINT and SIGTERM: it stops accepting, finishes requests, runs cleanup_ctx.
    web.run_app(create_app(config), host=config.host, port=config.port, print=None, shutdown_timeout=10)
    return 0


async def _with_session(config: Config, work):  # type: ignore[no-untyped-def]
    engine = make_engine(config.db_url)
    try:
        await migrate(engine)
        async with make_sessionmaker(engine).begin() as session:
            return await work(session)
    finally:
        await engine.dispose()


def users_create(args: argparse.Namespace) -> int:
    password = args.password or os.environ.get("STRATO_PASSWORD") or getpass.getpass("Password: ")
    if not password:
        print("strato: a password is required", file=sys.stderr)
        return 2

    async def work(session):  # type: ignore[no-untyped-def]
        user = await create_user(session, args.email, password)
        return user.uuid

    from sqlalchemy.exc import IntegrityError

    try:
        print(asyncio.run(_with_session(_config(args), work)))
    except IntegrityError:
        print(f"strato: user {args.email} exists already", file=sys.stderr)
        return 1
    return 0


def tokens_create(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    async def work(session):  # type: ignore[no-untyped-def]
        user = await session.scalar(select(User).where(User.email == args.email))
        return None if user is None else await create_token(session, user)

    token = asyncio.run(_with_session(_config(args), work))
    if token is None:
        print(f"strato: no user {args.email}", file=sys.stderr)
        return 1
    print(token)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="strato", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="JSON config file (environment STRATO_<KEY> and flags win)")
    common.add_argument("--data-dir", type=Path, help="data directory (default ./data)")
    common.add_argument("--db", help="database URL (default: SQLite file in the data directory)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", parents=[common], help="run the API node")
    s.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8080)")
    s.set_defaults(func=serve)
    users = sub.add_parser("users").add_subparsers(dest="action", required=True)
    u = users.add_parser("create", parents=[common], help="create a user")
    u.add_argument("email")
    u.add_argument("--password", help="default: $STRATO_PASSWORD or a prompt")
    u.set_defaults(func=users_create)
    tokens = sub.add_parser("tokens").add_subparsers(dest="action", required=True)
    t = tokens.add_parser("create", parents=[common], help="create a Bearer API token for a user")
    t.add_argument("email")
    t.set_defaults(func=tokens_create)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
