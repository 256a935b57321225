"""One unit of work against the store from the command line (users, tokens, hosts, networks)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.config import Config
from orchestrator.db.engine import make_engine, make_sessionmaker, migrate

Work = Callable[[AsyncSession], Awaitable[Any]]


def load_config(args: argparse.Namespace) -> Config:
    config = Config.load(args.config, data_dir=args.data_dir, db=args.db,
                         listen=getattr(args, "listen", None))
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return config


async def with_session(config: Config, work: Work) -> Any:
    """``work(session)`` in one transaction on a migrated database."""
    engine = make_engine(config.db_url)
    try:
        await migrate(engine)
        async with make_sessionmaker(engine).begin() as session:
            return await work(session)
    finally:
        await engine.dispose()


def run_admin(args: argparse.Namespace, work: Work) -> int:
    """Run ``work``; print its result as JSON, or a ``ValueError`` as the command's error."""
    try:
        result = asyncio.run(with_session(load_config(args), work))
    except ValueError as e:
        print(f"strato: {e}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2))
    return 0
