"""The `glmaas` command. Thin: it parses options and calls into the packages."""

from __future__ import annotations

import argparse
import importlib
import importlib.util

from glmaas import cli_platform
from glmaas.config import Settings, resolve_data_dir

# Packages that add their own subcommands with `register(subparsers)`.
PLUGIN_MODULES = ("glmaas.training.cli", "glmaas.benchmarks.cli")


def cmd_serve(args: argparse.Namespace) -> int:
    from glmaas.server import build_state, run

    settings = Settings(
        data_dir=resolve_data_dir(args.data_dir),
        database_url=args.database_url,
        redis_url=args.redis_url,
        models=list(args.model or []),
        default_model=not args.no_default_model,
        max_body_bytes=args.max_body_bytes,
        request_timeout=args.request_timeout,
        usage_retention_days=args.usage_retention_days,
    )
    run(build_state(settings), settings, host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glmaas",
        description="Serve models through a metered, Zhipu- and OpenAI-compatible API; train GLM.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the API server")
    cli_platform.common_options(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model", action="append", metavar="ID=SPEC",
                       help="serve another model: ID=PATH.gguf, ID=mock (repeatable)")
    serve.add_argument("--no-default-model", action="store_true",
                       help="do not load the embedded default model")
    serve.add_argument("--redis-url", help="Redis URL: rate limits shared by several replicas")
    serve.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    serve.add_argument("--request-timeout", type=float, default=600.0,
                       help="seconds a generation may run before it is stopped (and billed as produced)")
    serve.add_argument("--usage-retention-days", type=float, default=90.0,
                       help="per-request usage rows older than this are pruned (daily totals stay)")
    serve.set_defaults(func=cmd_serve)

    cli_platform.register(sub)
    for name in PLUGIN_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
