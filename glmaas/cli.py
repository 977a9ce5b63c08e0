"""The `glmaas` command. Thin: it parses options and calls into the packages."""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import json
import sys
from dataclasses import asdict

from glmaas.config import Settings, resolve_data_dir

# Packages that add their own subcommands with `register(subparsers)`.
PLUGIN_MODULES = ("glmaas.training.cli", "glmaas.benchmarks.cli")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="where glmaas keeps its data (default: $GLMAAS_DATA_DIR "
                        "or ~/.local/share/glmaas)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)")


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        data_dir=resolve_data_dir(args.data_dir),
        database_url=getattr(args, "database_url", None),
        redis_url=getattr(args, "redis_url", None),
        models=list(getattr(args, "model", None) or []),
        default_model=not getattr(args, "no_default_model", False),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from glmaas.server import build_state, run

    settings = _settings(args)
    state = build_state(settings)
    run(state, settings, host=args.host, port=args.port)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from glmaas.server import open_platform
    from glmaas.platform.accounts import ensure_account
    from glmaas.platform.keys import create_key

    db, box = open_platform(_settings(args))
    models = tuple(m.strip() for m in args.models.split(",")) if args.models else None
    with db.session() as session, session.begin():
        account = ensure_account(session, args.account)
        row, key = create_key(session, box, account, name=args.name, allowed_models=models)
    print(f"Created key {row.id} ({args.name or 'unnamed'}) for account {args.account}.")
    print("Keep it now: it is shown only once.")
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from glmaas.server import open_platform
    from glmaas.platform.keys import list_keys

    db, _ = open_platform(_settings(args))
    with db.session() as session:
        keys = list_keys(session, args.account)
    if args.format == "json":
        print(json.dumps([asdict(k) for k in keys], indent=2))
        return 0
    print(f"{'id':32}  {'account':16}  {'name':20}  status")
    for k in keys:
        status = "revoked" if k.revoked_at else "active"
        print(f"{k.id:32}  {k.account:16}  {k.name:20}  {status}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from glmaas.server import open_platform
    from glmaas.platform.errors import NotFound
    from glmaas.platform.keys import revoke_key

    db, _ = open_platform(_settings(args))
    try:
        with db.session() as session, session.begin():
            view = revoke_key(session, args.key_id.split(".")[0])
    except NotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Revoked key {view.id}.")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from glmaas.server import open_platform
    from glmaas.platform.reports import usage_by_key_and_model

    db, _ = open_platform(_settings(args))
    with db.session() as session:
        rows = usage_by_key_and_model(session)
    fields = ["account", "key_id", "model", "requests", "prompt_tokens", "cached_tokens",
              "completion_tokens", "total_tokens"]
    records = [{**asdict(r), "total_tokens": r.total_tokens} for r in rows]
    if args.format == "json":
        print(json.dumps(records, indent=2))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    else:
        print("  ".join(f"{f:>17}" if i > 2 else f"{f:32}" if f == "key_id" else f"{f:22}"
                        for i, f in enumerate(fields)))
        for r in records:
            print("  ".join(f"{r[f]:>17}" if i > 2 else f"{r[f]:32}" if f == "key_id" else f"{r[f]:22}"
                            for i, f in enumerate(fields)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glmaas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the API server")
    _common(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model", action="append", metavar="ID=SPEC",
                       help="serve another model: ID=PATH.gguf, ID=mock (repeatable)")
    serve.add_argument("--no-default-model", action="store_true",
                       help="do not load the embedded default model")
    serve.add_argument("--redis-url", help="Redis URL for limits shared by several replicas")
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; prints it alone on the last line")
    _common(create)
    create.add_argument("--name", default="")
    create.add_argument("--account", default="default")
    create.add_argument("--models", help="comma-separated model ids the key may use")
    create.set_defaults(func=cmd_keys_create)
    lst = keys.add_parser("list", help="list keys (never their secrets)")
    _common(lst)
    lst.add_argument("--account")
    lst.add_argument("--format", choices=["table", "json"], default="table")
    lst.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    _common(revoke)
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_keys_revoke)

    usage = sub.add_parser("usage", help="usage totals by key and model")
    _common(usage)
    usage.add_argument("--format", choices=["table", "csv", "json"], default="table")
    usage.set_defaults(func=cmd_usage)

    for name in PLUGIN_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
