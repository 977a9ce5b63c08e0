"""`glmaas keys create|list|revoke`: API keys, run against the database directly. A new key is
printed alone on the last line of `keys create`; its secret is never shown again."""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import asdict
from typing import TYPE_CHECKING

from glmaas.cli.common import add_command, add_format_option, in_transaction, print_json
from glmaas.platform import admin
from glmaas.platform.pricing import parse_amount

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from glmaas.platform.secrets import SecretBox


def register(sub: argparse._SubParsersAction) -> None:
    """Add `keys` and its subcommands to the `glmaas` command."""
    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="keys_command", required=True)
    p = add_command(keys, "create", create, "create a key; prints it alone on the last line")
    p.add_argument("--name", default="")
    p.add_argument("--account", default="default")
    p.add_argument("--models", help="comma-separated model ids the key may use")
    p.add_argument("--expires", help="ISO date/time after which the key stops working (UTC if no zone)")
    for opt in ("--rpm", "--tpm", "--concurrency"):
        p.add_argument(opt, type=int)
    p.add_argument("--budget", help="most the key may spend, in units of currency")
    p = add_command(keys, "list", list_, "list keys (never their secrets)")
    p.add_argument("--account")
    add_format_option(p, ("table", "json"))
    add_command(keys, "revoke", revoke, "revoke a key by its id").add_argument("key_id")


def _expiry(text: str | None) -> float | None:
    """`--expires` as a Unix time; a date or time without a zone is UTC."""
    if not text:
        return None
    when = dt.datetime.fromisoformat(text)
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def create(args: argparse.Namespace) -> int:
    options = admin.KeyOptions(
        name=args.name, models=tuple(m.strip() for m in args.models.split(",")) if args.models else None,
        expires_at=_expiry(args.expires), rpm=args.rpm, tpm=args.tpm, concurrency=args.concurrency,
        budget=parse_amount(args.budget) if args.budget else None)

    def action(session: Session, box: SecretBox) -> tuple[dict, str]:
        from glmaas.platform.accounts import ensure_account

        if args.account == "default":  # so a first key needs no account set-up
            ensure_account(session, "default")
        return admin.new_key(session, box, args.account, options)

    view, key = in_transaction(args, action)
    print(f"Created key {view['id']} ({args.name or 'unnamed'}) for account {args.account}.")
    print("Keep it now: it is shown only once.")
    print(key)
    return 0


def list_(args: argparse.Namespace) -> int:
    from glmaas.platform.keys import list_keys

    keys = in_transaction(args, lambda s, _: [asdict(k) for k in list_keys(s, args.account)])
    if args.format == "json":
        print_json(keys)
        return 0
    print(f"{'id':32}  {'account':16}  {'name':20}  status")
    for k in keys:
        status = "revoked" if k["revoked_at"] else "active"
        print(f"{k['id']:32}  {k['account']:16}  {k['name']:20}  {status}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    from glmaas.platform.keys import revoke_key

    view = in_transaction(args, lambda s, _: revoke_key(s, args.key_id.split(".")[0]))
    print(f"Revoked key {view.id}.")
    return 0
