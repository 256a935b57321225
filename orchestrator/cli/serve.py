"""``strato serve``: the API node (plain HTTP, and HTTPS beside it when ``tls_listen`` is set)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from aiohttp import web

from orchestrator.app import create_app
from orchestrator.cli.admin import load_config, with_session
from orchestrator.config import Config
from orchestrator.hosts.registry import local_pool_dirs, qemu_cannot_reach
from orchestrator.web.access_log import AccessLog
from orchestrator.web.tls import Certificate, certificate


def serve(args: argparse.Namespace) -> int:
    config = load_config(args)
    if args.tls_listen:
        config.tls_listen = args.tls_listen
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for directory in asyncio.run(with_session(config, lambda s: local_pool_dirs(s, config))):
        if (why := qemu_cannot_reach(directory)) is not None:
            logging.getLogger("strato").error(
                "refusing to serve: %s. Give QEMU's user search permission on that directory (chmod o+x) or "
                "choose a data directory it can traverse (e.g. under /var/lib/strato)", why)
            return 1
    if not config.tls_listen:
        # run_app handles SIGINT and SIGTERM: it stops accepting, finishes requests, runs cleanup_ctx.
        web.run_app(create_app(config), host=config.host, port=config.port, print=None, shutdown_timeout=10,
                    access_log_class=AccessLog)
        return 0
    host, _, port = config.tls_listen.rpartition(":")
    cert = certificate(config.data_dir, config.tls_cert, config.tls_key, host.strip("[]"))
    print(f"strato: HTTPS on {config.tls_listen}, certificate {cert.cert.resolve()}"
          f"{' (self-signed, new)' if cert.generated else ''}, SHA-256 fingerprint {cert.fingerprint}", flush=True)
    asyncio.run(_serve_both(config, host.strip("[]"), int(port), cert))
    return 0


async def _serve_both(config: Config, tls_host: str, tls_port: int, cert: Certificate) -> None:
    """Plain HTTP on ``listen`` and HTTPS on ``tls_listen``, one app; SIGINT/SIGTERM end both (cleanup_ctx runs)."""
    runner = web.AppRunner(create_app(config), handle_signals=False, shutdown_timeout=10, access_log_class=AccessLog)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
        await web.TCPSite(runner, tls_host, tls_port, ssl_context=cert.context()).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
