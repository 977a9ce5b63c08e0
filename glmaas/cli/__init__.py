"""The `glmaas` command: one module per verb group, each thin: it parses options and calls into
the packages. Heavy imports (torch, the web server, the load generator) wait until a command runs."""

from __future__ import annotations

import argparse

from glmaas.cli import accounts, bench, keys, prices, serve, train, upstream_keys, usage

# In the order `glmaas --help` lists them.
VERB_GROUPS = (serve, accounts, keys, upstream_keys, prices, usage, train, bench)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every verb group's subcommands under one parser."""
    parser = argparse.ArgumentParser(
        prog="glmaas",
        description="Serve models through a metered, Zhipu- and OpenAI-compatible API; train GLM.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in VERB_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command `argv` (default: the process's arguments) names; its exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
