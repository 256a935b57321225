"""``strato``: run the API node and manage users and API tokens."""

from __future__ import annotations

import gc

# The imports below make some 70,000 objects for the collector and no garbage: the collector walking them
# while they load was a fifth of a command's start-up on a loaded host.  main() freezes them (the
# collector never walks them again, nor at exit: that final walk was another 0.3-1.5 s there).
_COLLECTING = gc.isenabled()
gc.disable()

import argparse
import asyncio
import getpass
import json
import os
import sys
from pathlib import Path

# Each command imports what it runs, in its function: `strato servers migrate` starts in a fraction
# of the time `serve` takes to import (aiohttp, the app, every resource, argon2, asyncssh).
from orchestrator.cli.admin import load_config, run_admin, with_session
from orchestrator.cli.moving import add_drain_arguments, add_evacuate_command, add_moving_commands, hosts_drain
from orchestrator.cli.networks import add_commands as add_network_commands

if _COLLECTING:
    gc.enable()


def users_create(args: argparse.Namespace) -> int:
    from orchestrator.web.auth import create_user

    password = args.password or os.environ.get("STRATO_PASSWORD") or getpass.getpass("Password: ")
    if not password:
        print("strato: a password is required", file=sys.stderr)
        return 2

    async def work(session):  # type: ignore[no-untyped-def]
        user = await create_user(session, args.email, password)
        return user.uuid

    from sqlalchemy.exc import IntegrityError

    try:
        print(asyncio.run(with_session(load_config(args), work)))
    except IntegrityError:
        print(f"strato: user {args.email} exists already", file=sys.stderr)
        return 1
    return 0


def users_disable(args: argparse.Namespace) -> int:
    from orchestrator.cli.users import set_disabled

    return run_admin(args, lambda session: set_disabled(session, args.email, True))


def users_enable(args: argparse.Namespace) -> int:
    from orchestrator.cli.users import set_disabled

    return run_admin(args, lambda session: set_disabled(session, args.email, False))


def users_delete(args: argparse.Namespace) -> int:
    from orchestrator.cli.users import delete_user

    try:
        result = asyncio.run(delete_user(load_config(args), args.email, args.purge))
    except ValueError as e:
        print(f"strato: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def tokens_create(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from orchestrator.db.models import User
    from orchestrator.web.auth import create_token

    async def work(session):  # type: ignore[no-untyped-def]
        user = await session.scalar(select(User).where(User.email == args.email))
        return None if user is None else await create_token(session, user)

    token = asyncio.run(with_session(load_config(args), work))
    if token is None:
        print(f"strato: no user {args.email}", file=sys.stderr)
        return 1
    print(token)
    return 0


def tokens_revoke(args: argparse.Namespace) -> int:
    """Delete one token (``--token``) or every token of the user; Bearer checks read the store, so
    a revoked token fails on its next request."""
    from sqlalchemy import delete, select

    from orchestrator.db.models import ApiToken, User
    from orchestrator.web.auth import hash_token

    async def work(session):  # type: ignore[no-untyped-def]
        user = await session.scalar(select(User).where(User.email == args.email))
        if user is None:
            return None
        wanted = delete(ApiToken).where(ApiToken.user_uuid == user.uuid)
        if args.token:
            wanted = wanted.where(ApiToken.token_hash == hash_token(args.token))
        return (await session.execute(wanted)).rowcount

    revoked = asyncio.run(with_session(load_config(args), work))
    if revoked is None:
        print(f"strato: no user {args.email}", file=sys.stderr)
        return 1
    print(f"{revoked} token(s) revoked")
    return 0 if revoked or not args.token else 1


def quotas_set(args: argparse.Namespace) -> int:
    """Set (a number), keep (not given) or lift (``none``) each of a user's quotas."""
    from sqlalchemy import select

    from orchestrator.db.models import Quota, User

    async def work(session):  # type: ignore[no-untyped-def]
        user = await session.scalar(select(User).where(User.email == args.email))
        if user is None:
            return None
        quota = await session.get(Quota, user.uuid) or Quota(user_uuid=user.uuid)
        session.add(quota)
        for name in ("servers", "cpu", "mem", "storage", "tunnels"):
            value = getattr(args, name)
            if value is not None:
                setattr(quota, name, None if value.lower() == "none" else int(value))
        return {name: getattr(quota, name) for name in ("servers", "cpu", "mem", "storage", "tunnels")}

    try:
        result = asyncio.run(with_session(load_config(args), work))
    except ValueError as e:
        print(f"strato: {e}", file=sys.stderr)
        return 2
    if result is None:
        print(f"strato: no user {args.email}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def hosts_add(args: argparse.Namespace) -> int:
    if bool(args.ssh) == bool(args.local):
        print("strato: give exactly one of --ssh USER@HOST[:PORT] and --local", file=sys.stderr)
        return 2
    from orchestrator.hosts.registry import add_host

    address = "local" if args.local else f"ssh://{args.ssh}"
    config = load_config(args)

    async def work(session):  # type: ignore[no-untyped-def]
        host = await add_host(session, args.name, address, agent_command=args.agent_command, key_file=args.key,
                              known_hosts=args.known_hosts, config=config)
        return {"name": host.name, "address": host.address, "agent_command": host.agent_command}

    return run_admin(args, work)


def hosts_list(args: argparse.Namespace) -> int:
    from orchestrator.hosts.registry import list_hosts

    return run_admin(args, list_hosts)


def hosts_resume(args: argparse.Namespace) -> int:
    from orchestrator.hosts.registry import resume_host

    return run_admin(args, lambda session: resume_host(session, args.name))


def hosts_remove(args: argparse.Namespace) -> int:
    from orchestrator.hosts.registry import remove_host

    return run_admin(args, lambda session: remove_host(session, args.name))


def libdrives_import(args: argparse.Namespace) -> int:
    from orchestrator.cli.library import Entry, import_image

    entry = Entry(name=args.name, os=args.os, arch=args.arch, media=args.media, description=args.description or "",
                  distribution=args.distribution, version=args.version, url=args.url or "",
                  category=args.category.split(",") if args.category else ["general"])
    try:
        uuid, created = asyncio.run(import_image(load_config(args), args.file, entry, args.host, args.storage_type))
    except (ValueError, OSError) as e:
        print(f"strato: {e}", file=sys.stderr)
        return 1
    print(uuid)
    if not created:
        print(f"strato: {args.file} is already the library drive {uuid}", file=sys.stderr)
    return 0


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds from ``90``, ``45s``, ``30m``, ``12h`` or ``7d``."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in DURATION_UNITS else (text, "s")
    try:
        seconds = float(number) * DURATION_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90, 45s, 30m, 12h, 7d)") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration is not negative")
    return seconds


def jobs_purge(args: argparse.Namespace) -> int:
    """Remove the finished jobs older than ``--older-than`` (default: the configured job_max_age)."""
    from datetime import timedelta

    from orchestrator.db.models import utcnow
    from orchestrator.domain.jobs import purge

    config = load_config(args)
    age = timedelta(seconds=config.job_max_age if args.older_than is None else args.older_than)
    removed = asyncio.run(with_session(config, lambda s: purge(s, age, utcnow())))
    print(f"{removed} finished job(s) older than {age} removed")
    return 0


def serve(args: argparse.Namespace) -> int:
    from orchestrator.cli.serve import serve as run

    return run(args)


def doctor(args: argparse.Namespace) -> int:
    from orchestrator.cli.doctor import diagnose

    findings = asyncio.run(diagnose(load_config(args), args.host))
    for finding in findings:
        print(finding)
    return 0 if all(f.ok for f in findings) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="strato", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="JSON config file (environment STRATO_<KEY> and flags win)")
    common.add_argument("--data-dir", type=Path, help="data directory (default ./data)")
    common.add_argument("--db", help="database URL (default: SQLite file in the data directory)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", parents=[common], help="run the API node")
    s.add_argument("--listen", help="HOST:PORT of plain HTTP (default 127.0.0.1:8080; keep it on loopback)")
    s.add_argument("--tls-listen", help="HOST:PORT of HTTPS (certificate: tls_cert/tls_key, else self-signed)")
    s.set_defaults(func=serve)
    d = sub.add_parser("doctor", parents=[common], help="check each host (libvirtd, virt type, pool directories "
                       "QEMU can reach, free space) and say what to fix; exit status 1 when something needs fixing")
    d.add_argument("--host", help="only this host")
    d.set_defaults(func=doctor)
    jobs = sub.add_parser("jobs", help="background jobs").add_subparsers(dest="action", required=True)
    j = jobs.add_parser("purge", parents=[common], help="remove finished jobs (running ones never); serve does "
                        "this in the background for those older than job_max_age")
    j.add_argument("--older-than", type=duration, metavar="AGE", help="e.g. 3600, 12h, 7d (default: job_max_age)")
    j.set_defaults(func=jobs_purge)
    users = sub.add_parser("users").add_subparsers(dest="action", required=True)
    u = users.add_parser("create", parents=[common], help="create a user")
    u.add_argument("email")
    u.add_argument("--password", help="default: $STRATO_PASSWORD or a prompt")
    u.set_defaults(func=users_create)
    for name, func, text in (("disable", users_disable, "refuse the user's logins, sessions, tokens and consoles"),
                             ("enable", users_enable, "undo disable")):
        u = users.add_parser(name, parents=[common], help=text)
        u.add_argument("email")
        u.set_defaults(func=func)
    u = users.add_parser("delete", parents=[common], help="delete a user who owns nothing (or everything, --purge)")
    u.add_argument("email")
    u.add_argument("--purge", action="store_true", help="first stop and delete the user's servers, drives (their "
                   "volumes on the hosts), IPs, tags and keys; VLANs return to the operator")
    u.set_defaults(func=users_delete)
    tokens = sub.add_parser("tokens").add_subparsers(dest="action", required=True)
    t = tokens.add_parser("create", parents=[common], help="create a Bearer API token for a user")
    t.add_argument("email")
    t.set_defaults(func=tokens_create)
    t = tokens.add_parser("revoke", parents=[common], help="revoke a user's Bearer API tokens (or one of them)")
    t.add_argument("email")
    t.add_argument("--token", help="only this token (default: all of the user's)")
    t.set_defaults(func=tokens_revoke)
    quotas = sub.add_parser("quotas", help="per-user limits").add_subparsers(dest="action", required=True)
    q = quotas.add_parser("set", parents=[common], help="set a user's quotas (a number, or none to lift one)")
    q.add_argument("email")
    for name, unit in (("servers", "servers"), ("cpu", "MHz"), ("mem", "bytes"), ("storage", "bytes of drives"),
                       ("tunnels", "open consoles")):
        q.add_argument(f"--{name}", metavar=unit.upper().split()[0])
    q.set_defaults(func=quotas_set)
    hosts = sub.add_parser("hosts", help="hypervisor hosts").add_subparsers(dest="action", required=True)
    h = hosts.add_parser("add", parents=[common], help="register a host (a running API node connects within seconds)")
    h.add_argument("name")
    h.add_argument("--ssh", metavar="USER@HOST[:PORT]", help="reach the agent over SSH")
    h.add_argument("--local", action="store_true", help="run the agent as a local subprocess")
    h.add_argument("--key", help="SSH private key file")
    h.add_argument("--known-hosts", help="known_hosts file to check the host key against (default ~/.ssh/...)")
    h.add_argument("--agent-command", help="the agent's command line on the host (default: strato-agent --stdio)")
    h.set_defaults(func=hosts_add)
    for name, func, text in (("list", hosts_list, "list hosts"),
                             ("drain", hosts_drain, "place nothing new there and live-migrate its running servers "
                              "elsewhere (the API node must be running)"),
                             ("resume", hosts_resume, "a drained host takes new servers again"),
                             ("remove", hosts_remove, "forget a host that runs no server")):
        h = hosts.add_parser(name, parents=[common], help=text)
        if name != "list":
            h.add_argument("name")
        h.set_defaults(func=func)
        if name == "drain":
            add_drain_arguments(h)
    add_evacuate_command(hosts, common)
    add_moving_commands(sub, common)
    libdrives = sub.add_parser("libdrives", help="the drive library").add_subparsers(dest="action", required=True)
    li = libdrives.add_parser("import", parents=[common], help="add an image (qcow2, raw or ISO, told from its "
                              "content) to the library; prints its uuid (the same file and name again: a no-op)")
    li.add_argument("file", type=Path)
    li.add_argument("--name", required=True)
    li.add_argument("--os", required=True, help="linux, windows, other")
    li.add_argument("--arch", required=True, choices=("32", "64"))
    li.add_argument("--media", required=True, choices=("disk", "cdrom"))
    for flag in ("--description", "--distribution", "--version", "--url", "--host"):
        li.add_argument(flag)
    li.add_argument("--storage-type", help="the storage type whose pool (storage_pools) holds it "
                    "(default: default_storage_type)")
    li.add_argument("--category", help="comma-separated (default general)")
    li.set_defaults(func=libdrives_import)
    add_network_commands(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    gc.freeze()  # what was imported lives as long as the command (serve unfreezes at its end)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
