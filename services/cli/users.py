"""`cyclonetix users`: the people who may log in to the web UI, with their roles."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from typing import Any

import msgspec

from core.audit import AuditRecord
from core.errors import NotFound
from core.text import printable
from services.audit import audited, new_record
from services.auth import ROLES, User, check_name, check_role, created_now, hash_password
from services.cli.common import add_nats_option, connect, run
from services.cli.main import CliError
from services.commands import cli_requester

ROLE_HELP = (
    "viewer: reads pages and the API; operator: also schedules, cancels and reruns runs; "
    "admin: everything"
)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "users",
        help="web UI users: add, passwd, remove, list",
        description="Users of the web UI and API, kept in the cx_auth KV bucket (passwords as "
        "argon2 hashes). Once a user or a token exists, the UI and API require a login. "
        + ROLE_HELP
        + ".",
    )
    users = parser.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    add = users.add_parser("add", help="add a user", description="Add a user (asks a password).")
    add.add_argument("name", help="the user's name (1-64 letters, digits, '_', '.', '@', '-')")
    add.add_argument("--role", required=True, choices=ROLES, help=ROLE_HELP)
    _password_option(add)
    add_nats_option(add)
    add.set_defaults(func=lambda args: run(add_user(args)))

    passwd = users.add_parser(
        "passwd", help="change a user's password", description="Set a user's password."
    )
    passwd.add_argument("name")
    _password_option(passwd)
    add_nats_option(passwd)
    passwd.set_defaults(func=lambda args: run(change_password(args)))

    remove = users.add_parser(
        "remove",
        help="remove a user",
        description="Remove a user (their open sessions end within seconds).",
    )
    remove.add_argument("name")
    add_nats_option(remove)
    remove.set_defaults(func=lambda args: run(remove_user(args)))

    listing = users.add_parser("list", help="list users", description="List users and roles.")
    listing.add_argument(
        "--json", action="store_true", help="print a JSON list of {name, role, created_at}"
    )
    add_nats_option(listing)
    listing.set_defaults(func=lambda args: run(list_users(args)))


def cli_record(action: str, target: str, detail: str = "") -> AuditRecord:
    """The audit record of an administrative command given here: by `cli:<OS login>`, from
    this host. Written before the change (`services.audit.audited`): a change whose
    record cannot be stored is not made."""
    return new_record(
        action, actor=cli_requester(), target=target, address=socket.gethostname(), detail=detail
    )


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of asking",
    )


def read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Password (again): ")
        except EOFError:
            raise CliError("no password given (use --password-stdin to pipe one)") from None
        if password != again:
            raise CliError("the passwords differ")
    if not password:
        raise CliError("the password must not be empty")
    return password


async def add_user(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    role = check_role(args.role)
    password_hash = hash_password(read_password(args))
    async with await connect(args, "cyclonetix-cli") as backplane:
        if await backplane.auth.user(name) is not None:
            raise CliError(f"user {printable(name)} exists (users passwd to change it)", 1)
        user = User(name, role, password_hash, created_now())
        record = cli_record("users.add", name, f"role {role}")
        await audited(backplane.audit, record, lambda: backplane.auth.put_user(user))
    print(f"user {name} added ({role})")
    return 0


async def change_password(args: argparse.Namespace) -> int:
    async with await connect(args, "cyclonetix-cli") as backplane:
        user = await backplane.auth.user(args.name)
        if user is None:
            raise NotFound(f"no user {args.name!r}")
        password_hash = hash_password(read_password(args))
        changed = msgspec.structs.replace(user, password_hash=password_hash)
        record = cli_record("users.passwd", user.name)
        await audited(backplane.audit, record, lambda: backplane.auth.put_user(changed))
    print(f"password of {user.name} changed")
    return 0


async def remove_user(args: argparse.Namespace) -> int:
    async with await connect(args, "cyclonetix-cli") as backplane:
        user = await backplane.auth.user(args.name)
        removed = False
        if user is not None:  # (an unknown name changes nothing: not recorded)
            record = cli_record("users.remove", user.name, f"role {user.role}")
            removed = await audited(
                backplane.audit, record, lambda: backplane.auth.remove_user(user.name)
            )
    if not removed:
        raise NotFound(f"no user {args.name!r}")
    print(f"user {printable(args.name)} removed")
    return 0


async def list_users(args: argparse.Namespace) -> int:
    async with await connect(args, "cyclonetix-cli") as backplane:
        users = await backplane.auth.users()
    if args.json:
        shown = [{"name": u.name, "role": u.role, "created_at": u.created_at} for u in users]
        print(msgspec.json.encode(shown).decode())
        return 0
    if not users:
        print("no users: the UI is open on loopback (users add NAME --role admin)")
    for u in users:
        print(f"{u.name}  {u.role}  created {u.created_at:%Y-%m-%d %H:%M}")
    return 0
