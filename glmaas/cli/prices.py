"""`glmaas prices set|list`: prices per million tokens, in units of currency."""

from __future__ import annotations

import argparse

from glmaas.cli.common import add_command, in_transaction, print_json
from glmaas.platform import admin
from glmaas.platform.pricing import PriceSheet, parse_amount


def register(sub: argparse._SubParsersAction) -> None:
    """Add `prices` and its subcommands to the `glmaas` command."""
    prices = sub.add_parser("prices", help="prices per million tokens").add_subparsers(
        dest="prices_command", required=True)
    p = add_command(prices, "set", set_, "set a model's prices (units of currency per million tokens)")
    p.add_argument("model")
    p.add_argument("--input", required=True)
    p.add_argument("--cached-input")
    p.add_argument("--output", required=True)
    p.add_argument("--training", help="per million tokens trained by a fine-tuning job (default 0)")
    add_command(prices, "list", list_, "list prices")


def set_(args: argparse.Namespace) -> int:
    inp = parse_amount(args.input)
    price = PriceSheet(inp, parse_amount(args.cached_input) if args.cached_input else inp,
                       parse_amount(args.output), parse_amount(args.training) if args.training else 0)
    in_transaction(args, lambda s, _: admin.put_price(s, args.model, price))
    print(f"{args.model}: input {args.input}, cached input {args.cached_input or args.input}, "
          f"output {args.output}, training {args.training or 0} per million tokens")
    return 0


def list_(args: argparse.Namespace) -> int:
    print_json(in_transaction(args, lambda s, _: admin.prices(s)))
    return 0
