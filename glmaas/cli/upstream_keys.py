"""`glmaas upstream-keys set|list|delete`: upstream servers' API keys, sealed in the store under
the master key, for `key_secret=NAME` in an upstream spec. `set` reads the key from stdin (so it
stays out of the shell's history and the process list); no command ever prints a key."""

from __future__ import annotations

import argparse
import sys

from glmaas.cli.common import add_command, fail, in_transaction, print_json
from glmaas.platform import upstream_keys


def register(sub: argparse._SubParsersAction) -> None:
    """Add `upstream-keys` and its subcommands to the `glmaas` command."""
    group = sub.add_parser("upstream-keys", help="upstream servers' keys, sealed in the store").add_subparsers(
        dest="upstream_keys_command", required=True)
    add_command(group, "set", set_, "store an upstream's key, read from stdin, sealed").add_argument("name")
    add_command(group, "list", list_, "list the stored keys' names (never the keys)")
    add_command(group, "delete", delete, "delete a stored key").add_argument("name")


def set_(args: argparse.Namespace) -> int:
    upstream_keys.check_name(args.name)
    key = sys.stdin.readline().strip()
    if not key:
        return fail("no key on stdin (e.g. `printenv VLLM_KEY | glmaas upstream-keys set vllm`)")
    in_transaction(args, lambda s, box: upstream_keys.put(s, box, args.name, key))
    print(f"upstream key {args.name} stored, sealed; name it with key_secret={args.name}")
    return 0


def list_(args: argparse.Namespace) -> int:
    print_json(in_transaction(args, lambda s, _: upstream_keys.names(s)))
    return 0


def delete(args: argparse.Namespace) -> int:
    if not in_transaction(args, lambda s, _: upstream_keys.delete(s, args.name)):
        return fail(f"no upstream key named {args.name!r}")
    print(f"upstream key {args.name} deleted")
    return 0
