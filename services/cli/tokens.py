"""`cyclonetix tokens`: API tokens (`Authorization: Bearer cx_<id>_<secret>`) with a role."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from core.errors import NotFound
from core.text import printable
from services.audit import audited
from services.auth import ROLES, check_role, new_token
from services.cli.common import add_nats_option, connect, run
from services.cli.users import ROLE_HELP, cli_record


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "tokens",
        help="API tokens: create, list, revoke",
        description="API tokens for the JSON API, sent as 'Authorization: Bearer <token>'. "
        "Only a hash of each token is kept (cx_auth KV bucket): it is printed once, when "
        "created. " + ROLE_HELP + ".",
    )
    tokens = parser.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)

    create = tokens.add_parser(
        "create", help="create a token", description="Create a token and print it once."
    )
    create.add_argument("name", help="what the token is for (1-64 letters, digits, _.@-)")
    create.add_argument("--role", required=True, choices=ROLES, help=ROLE_HELP)
    add_nats_option(create)
    create.set_defaults(func=lambda args: run(create_token(args)))

    listing = tokens.add_parser(
        "list", help="list tokens", description="List tokens (never their secrets)."
    )
    listing.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of {id, name, role, created_at, revoked}",
    )
    add_nats_option(listing)
    listing.set_defaults(func=lambda args: run(list_tokens(args)))

    revoke = tokens.add_parser(
        "revoke",
        help="revoke a token",
        description="Revoke a token: refused (401) within seconds.",
    )
    revoke.add_argument("id", help="the token's id (tokens list)")
    add_nats_option(revoke)
    revoke.set_defaults(func=lambda args: run(revoke_token(args)))


async def create_token(args: argparse.Namespace) -> int:
    token, text = new_token(args.name, check_role(args.role))
    async with await connect(args, "cyclonetix-cli") as backplane:
        record = cli_record("tokens.create", f"{token.id} ({token.name})", f"role {token.role}")
        await audited(backplane.audit, record, lambda: backplane.auth.put_token(token))
    print(text)
    return 0


async def list_tokens(args: argparse.Namespace) -> int:
    async with await connect(args, "cyclonetix-cli") as backplane:
        tokens = await backplane.auth.tokens()
    if args.json:
        fields = ("id", "name", "role", "created_at", "revoked")
        shown = [{f: getattr(t, f) for f in fields} for t in tokens]
        print(msgspec.json.encode(shown).decode())
        return 0
    if not tokens:
        print("no tokens")
    for t in tokens:
        state = "revoked" if t.revoked else "active"
        print(f"{t.id}  {t.name}  {t.role}  {state}  created {t.created_at:%Y-%m-%d %H:%M}")
    return 0


async def revoke_token(args: argparse.Namespace) -> int:
    async with await connect(args, "cyclonetix-cli") as backplane:
        token = await backplane.auth.token(args.id)
        if token is None:
            raise NotFound(f"no token {printable(args.id)!r}")
        if not token.revoked:
            revoked = msgspec.structs.replace(token, revoked=True)
            record = cli_record("tokens.revoke", f"{token.id} ({token.name})")
            await audited(backplane.audit, record, lambda: backplane.auth.put_token(revoked))
    print(f"token {token.id} ({token.name}) revoked")
    return 0
