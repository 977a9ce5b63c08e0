"""`glmaas accounts|keys|prices|usage`: the operator's commands, run against the database
directly (the same actions as the `/admin` API, from `platform.admin`)."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from glmaas.config import Settings, resolve_data_dir
from glmaas.platform import admin
from glmaas.platform.errors import PlatformError
from glmaas.platform.pricing import PriceSheet, parse_amount


def common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="where glmaas keeps its data (default: $GLMAAS_DATA_DIR "
                        "or ~/.local/share/glmaas)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)")


def _run(args: argparse.Namespace, action: Callable[..., Any]) -> Any:
    from glmaas.server import open_platform

    settings = Settings(data_dir=resolve_data_dir(args.data_dir), database_url=args.database_url)
    db, box = open_platform(settings)
    try:
        with db.session() as session, session.begin():
            return action(session, box)
    finally:
        db.dispose()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Domain errors and bad values become one clear line on stderr and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (PlatformError, ValueError) as exc:
            return _fail(str(exc))

    return run


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def accounts_create(args: argparse.Namespace) -> int:
    _print(_run(args, lambda s, _: admin.new_account(s, args.name)))
    return 0


def accounts_topup(args: argparse.Namespace) -> int:
    amount = parse_amount(args.amount)
    summary = _run(args, lambda s, _: admin.topup(s, args.name, amount, args.note))
    print(f"{args.name}: balance {summary['balance']}")
    return 0


def accounts_adjust(args: argparse.Namespace) -> int:
    amount = parse_amount(args.amount)
    summary = _run(args, lambda s, _: admin.adjust(s, args.name, amount, args.note))
    print(f"{args.name}: balance {summary['balance']}")
    return 0


def accounts_limits(args: argparse.Namespace) -> int:
    _run(args, lambda s, _: admin.set_account_limits(s, args.name, args.model, args.rpm, args.tpm,
                                                     args.concurrency))
    print(f"{args.name} on {args.model}: rpm={args.rpm} tpm={args.tpm} concurrency={args.concurrency}")
    return 0


def accounts_show(args: argparse.Namespace) -> int:
    summary = _run(args, lambda s, _: admin.account_summary(s, args.name))
    if args.format == "json":
        _print(summary)
        return 0
    print(f"account  {summary['name']} ({summary['id']})")
    print(f"balance  {summary['balance']}  (held by open requests: {summary['held_micro']} micro-units)")
    for k in summary["keys"]:
        state = "revoked" if k["revoked_at"] else "active"
        print(f"key      {k['id']}  {k['name'] or '-'}  {state}")
    return 0


def keys_create(args: argparse.Namespace) -> int:
    expires = None
    if args.expires:
        when = dt.datetime.fromisoformat(args.expires)
        expires = (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
    options = admin.KeyOptions(
        name=args.name, models=tuple(m.strip() for m in args.models.split(",")) if args.models else None,
        expires_at=expires, rpm=args.rpm, tpm=args.tpm, concurrency=args.concurrency,
        budget=parse_amount(args.budget) if args.budget else None)

    def action(session, box):  # type: ignore[no-untyped-def]
        from glmaas.platform.accounts import ensure_account

        if args.account == "default":  # so a first key needs no account set-up
            ensure_account(session, "default")
        return admin.new_key(session, box, args.account, options)

    view, key = _run(args, action)
    print(f"Created key {view['id']} ({args.name or 'unnamed'}) for account {args.account}.")
    print("Keep it now: it is shown only once.")
    print(key)
    return 0


def keys_list(args: argparse.Namespace) -> int:
    from glmaas.platform.keys import list_keys

    keys = _run(args, lambda s, _: [asdict(k) for k in list_keys(s, args.account)])
    if args.format == "json":
        _print(keys)
        return 0
    print(f"{'id':32}  {'account':16}  {'name':20}  status")
    for k in keys:
        status = "revoked" if k["revoked_at"] else "active"
        print(f"{k['id']:32}  {k['account']:16}  {k['name']:20}  {status}")
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    from glmaas.platform.keys import revoke_key

    view = _run(args, lambda s, _: revoke_key(s, args.key_id.split(".")[0]))
    print(f"Revoked key {view.id}.")
    return 0


def prices_set(args: argparse.Namespace) -> int:
    inp = parse_amount(args.input)
    price = PriceSheet(inp, parse_amount(args.cached_input) if args.cached_input else inp,
                       parse_amount(args.output))
    _run(args, lambda s, _: admin.put_price(s, args.model, price))
    print(f"{args.model}: input {args.input}, cached input {args.cached_input or args.input}, "
          f"output {args.output} per million tokens")
    return 0


def prices_list(args: argparse.Namespace) -> int:
    _print(_run(args, lambda s, _: admin.prices(s)))
    return 0


def usage(args: argparse.Namespace) -> int:
    by = tuple(d.strip() for d in args.by.split(",") if d.strip())
    rows = _run(args, lambda s, _: admin.usage_report(s, by, args.account))
    fields = [*by, "requests", "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens", "cost"]
    if args.format == "json":
        _print(rows)
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        widths = {f: max([len(f), *(len(str(r[f])) for r in rows)]) for f in fields}
        print("  ".join(f.ljust(widths[f]) for f in fields))
        for r in rows:
            print("  ".join(str(r[f]).ljust(widths[f]) for f in fields))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    def add(group: argparse._SubParsersAction, name: str, handler, help: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        parser = group.add_parser(name, help=help)
        common_options(parser)
        parser.set_defaults(func=guarded(handler))
        return parser

    accounts = sub.add_parser("accounts", help="tenants and their balances").add_subparsers(
        dest="accounts_command", required=True)
    add(accounts, "create", accounts_create, "create an account").add_argument("name")
    p = add(accounts, "topup", accounts_topup, "add money to an account's balance")
    p.add_argument("name")
    p.add_argument("amount", help="in units of currency, e.g. 12.5")
    p.add_argument("--note", default="")
    p = add(accounts, "adjust", accounts_adjust, "correct a balance (positive or negative)")
    p.add_argument("name")
    p.add_argument("amount")
    p.add_argument("--note", required=True)
    p = add(accounts, "show", accounts_show, "balance, keys and limits of an account")
    p.add_argument("name")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p = add(accounts, "limits", accounts_limits, "limits of an account on a model ('*': any model)")
    p.add_argument("name")
    p.add_argument("model")
    for opt in ("--rpm", "--tpm", "--concurrency"):
        p.add_argument(opt, type=int)

    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="keys_command", required=True)
    p = add(keys, "create", keys_create, "create a key; prints it alone on the last line")
    p.add_argument("--name", default="")
    p.add_argument("--account", default="default")
    p.add_argument("--models", help="comma-separated model ids the key may use")
    p.add_argument("--expires", help="ISO date/time after which the key stops working (UTC if no zone)")
    for opt in ("--rpm", "--tpm", "--concurrency"):
        p.add_argument(opt, type=int)
    p.add_argument("--budget", help="most the key may spend, in units of currency")
    p = add(keys, "list", keys_list, "list keys (never their secrets)")
    p.add_argument("--account")
    p.add_argument("--format", choices=["table", "json"], default="table")
    add(keys, "revoke", keys_revoke, "revoke a key by its id").add_argument("key_id")

    prices = sub.add_parser("prices", help="prices per million tokens").add_subparsers(
        dest="prices_command", required=True)
    p = add(prices, "set", prices_set, "set a model's prices (units of currency per million tokens)")
    p.add_argument("model")
    p.add_argument("--input", required=True)
    p.add_argument("--cached-input")
    p.add_argument("--output", required=True)
    add(prices, "list", prices_list, "list prices")

    p = add(sub, "usage", usage, "usage totals")
    p.add_argument("--by", default="key,model", help="any of day,account,key,model (default key,model)")
    p.add_argument("--account")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
