"""`glmaas usage`: usage totals from the daily aggregates, as a table, CSV or JSON."""

from __future__ import annotations

import argparse

from glmaas.cli.common import (
    add_command,
    add_format_option,
    in_transaction,
    print_csv,
    print_json,
    print_table,
)
from glmaas.platform import admin

TOTALS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens", "cost")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `usage` to the `glmaas` command."""
    p = add_command(sub, "usage", report, "usage totals")
    p.add_argument("--by", default="key,model", help="any of day,account,key,model (default key,model)")
    p.add_argument("--account")
    add_format_option(p, ("table", "csv", "json"))


def report(args: argparse.Namespace) -> int:
    by = tuple(d.strip() for d in args.by.split(",") if d.strip())
    rows = in_transaction(args, lambda s, _: admin.usage_report(s, by, args.account))
    fields = [*by, *TOTALS]
    if args.format == "json":
        print_json(rows)
    elif args.format == "csv":
        print_csv(rows, fields)
    else:
        print_table(rows, fields)
    return 0
