"""`glmaas accounts create|topup|adjust|show|limits`: tenants, their balances and limits, run
against the database directly (the same actions as the `/admin` API, from `platform.admin`)."""

from __future__ import annotations

import argparse

from glmaas.cli.common import add_command, add_format_option, in_transaction, print_json
from glmaas.platform import admin
from glmaas.platform.pricing import parse_amount


def register(sub: argparse._SubParsersAction) -> None:
    """Add `accounts` and its subcommands to the `glmaas` command."""
    accounts = sub.add_parser("accounts", help="tenants and their balances").add_subparsers(
        dest="accounts_command", required=True)
    add_command(accounts, "create", create, "create an account").add_argument("name")
    p = add_command(accounts, "topup", topup, "add money to an account's balance")
    p.add_argument("name")
    p.add_argument("amount", help="in units of currency, e.g. 12.5")
    p.add_argument("--note", default="")
    p = add_command(accounts, "adjust", adjust, "correct a balance (positive or negative)")
    p.add_argument("name")
    p.add_argument("amount")
    p.add_argument("--note", required=True)
    p = add_command(accounts, "show", show, "balance, keys and limits of an account")
    p.add_argument("name")
    add_format_option(p, ("table", "json"))
    p = add_command(accounts, "limits", limits, "limits of an account on a model ('*': any model)")
    p.add_argument("name")
    p.add_argument("model")
    for opt in ("--rpm", "--tpm", "--concurrency"):
        p.add_argument(opt, type=int)


def create(args: argparse.Namespace) -> int:
    print_json(in_transaction(args, lambda s, _: admin.new_account(s, args.name)))
    return 0


def topup(args: argparse.Namespace) -> int:
    amount = parse_amount(args.amount)
    summary = in_transaction(args, lambda s, _: admin.topup(s, args.name, amount, args.note))
    print(f"{args.name}: balance {summary['balance']}")
    return 0


def adjust(args: argparse.Namespace) -> int:
    amount = parse_amount(args.amount)
    summary = in_transaction(args, lambda s, _: admin.adjust(s, args.name, amount, args.note))
    print(f"{args.name}: balance {summary['balance']}")
    return 0


def limits(args: argparse.Namespace) -> int:
    in_transaction(args, lambda s, _: admin.set_account_limits(s, args.name, args.model, args.rpm, args.tpm,
                                                               args.concurrency))
    print(f"{args.name} on {args.model}: rpm={args.rpm} tpm={args.tpm} concurrency={args.concurrency}")
    return 0


def show(args: argparse.Namespace) -> int:
    summary = in_transaction(args, lambda s, _: admin.account_summary(s, args.name))
    if args.format == "json":
        print_json(summary)
        return 0
    print(f"account  {summary['name']} ({summary['id']})")
    print(f"balance  {summary['balance']}  (held by open requests: {summary['held_micro']} micro-units)")
    for k in summary["keys"]:
        state = "revoked" if k["revoked_at"] else "active"
        print(f"key      {k['id']}  {k['name'] or '-'}  {state}")
    return 0
