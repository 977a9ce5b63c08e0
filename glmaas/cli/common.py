"""What the verb groups share: the store options, one transaction against the store, clear
errors, and the output formats (JSON, CSV, aligned table)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from glmaas.config import DATA_DIR_ENV, DEFAULT_DATA_DIR, Settings, resolve_data_dir
from glmaas.platform.errors import PlatformError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from glmaas.platform.secrets import SecretBox

Handler = Callable[[argparse.Namespace], int]
T = TypeVar("T")


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """`--data-dir` and `--database-url`: where a command finds the deployment's data."""
    parser.add_argument("--data-dir", help=f"where glmaas keeps its data (default: ${DATA_DIR_ENV} "
                        f"or {DEFAULT_DATA_DIR})")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)")


def add_format_option(parser: argparse.ArgumentParser, formats: Sequence[str]) -> None:
    """`--format`, one of `formats`, `table` when absent."""
    parser.add_argument("--format", choices=list(formats), default="table")


def add_command(group: argparse._SubParsersAction, name: str, handler: Handler,
                help: str) -> argparse.ArgumentParser:
    """A subcommand that works on the store: it takes the store options, and its domain errors
    become one line on stderr."""
    parser = group.add_parser(name, help=help)
    add_store_options(parser)
    parser.set_defaults(func=guarded(handler))
    return parser


def in_transaction(args: argparse.Namespace, action: Callable[[Session, SecretBox], T]) -> T:
    """Run `action(session, box)` in one transaction on the store the options name."""
    from glmaas.server import open_platform

    settings = Settings(data_dir=resolve_data_dir(args.data_dir), database_url=args.database_url)
    db, box = open_platform(settings)
    try:
        with db.session() as session, session.begin():
            return action(session, box)
    finally:
        db.dispose()


def fail(message: str) -> int:
    """Say what went wrong on stderr; the exit status of a refused command."""
    print(f"error: {message}", file=sys.stderr)
    return 1


def guarded(handler: Handler) -> Handler:
    """Domain errors and bad values become one clear line on stderr and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (PlatformError, ValueError) as exc:
            return fail(str(exc))

    return run


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def print_csv(rows: list[dict[str, Any]], fields: Sequence[str]) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def print_table(rows: list[dict[str, Any]], fields: Sequence[str]) -> None:
    """Columns as wide as their widest cell, two spaces apart, a header line first."""
    widths = {f: max([len(f), *(len(str(r[f])) for r in rows)]) for f in fields}
    print("  ".join(f.ljust(widths[f]) for f in fields))
    for r in rows:
        print("  ".join(str(r[f]).ljust(widths[f]) for f in fields))
