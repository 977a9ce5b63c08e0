"""Hand-written SQL for the request path.

Building a statement with SQLAlchemy's expression language costs more CPU than running it on
SQLite, and the request path runs about a dozen per request. So the hot statements are plain SQL
that SQLite and PostgreSQL both accept, with `:name` parameters rewritten once for the driver, and
run inside the caller's transaction: on SQLite straight on the driver's cursor (SQLAlchemy's
bookkeeping around one statement costs more than SQLite's work), elsewhere with `exec_driver_sql`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, CursorResult, Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection

# The columns of `api_keys`, in the order `key_row` reads them.
KEY_COLUMNS = ("id", "account_id", "name", "secret_hash", "secret_sealed", "created_at", "expires_at",
               "revoked_at", "allowed_models", "rpm", "tpm", "concurrency", "budget", "spent", "held")

STATEMENTS = {
    "debit_account": "UPDATE accounts SET balance = balance - :amount "
                     "WHERE id = :account_id AND balance >= :amount",
    "credit_account": "UPDATE accounts SET balance = balance + :amount WHERE id = :account_id",
    "account_balance": "SELECT balance FROM accounts WHERE id = :account_id",
    # What a request reads through the platform's short-lived caches (auth.py, metering.py), again
    # for every key, model and account at most once a second: the first request after a pause.
    "key_row": f"SELECT {', '.join(KEY_COLUMNS)} FROM api_keys WHERE id = :key_id",
    "price_row": "SELECT input, cached_input, output, training FROM prices WHERE model = :model",
    "account_model_limits": "SELECT model, rpm, tpm, concurrency FROM account_model_limits "
                            "WHERE account_id = :account_id AND model IN (:model, '*')",
    "hold_key_budget": "UPDATE api_keys SET held = held + :amount WHERE id = :key_id "
                       "AND (budget IS NULL OR spent + held + :amount <= budget)",
    "settle_key": "UPDATE api_keys SET held = held - :amount, spent = spent + :charged WHERE id = :key_id",
    "insert_entry": "INSERT INTO ledger_entries (account_id, kind, amount, request_id, key_id, note, created_at) "
                    "VALUES (:account_id, :kind, :amount, :request_id, :key_id, :note, :created_at)",
    "insert_release_and_settlement":
        "INSERT INTO ledger_entries (account_id, kind, amount, request_id, key_id, note, created_at) "
        "VALUES (:account_id, 'release', :released, :request_id, :key_id, '', :created_at), "
        "(:account_id, 'settlement', :charged, :request_id, :key_id, '', :created_at)",
    "insert_hold": "INSERT INTO holds (account_id, request_id, key_id, model, amount, prompt_tokens, "
                   "max_tokens, price_input, price_cached_input, price_output, cached_tokens, "
                   "progress_tokens, owner, state, created_at) VALUES (:account_id, :request_id, :key_id, "
                   ":model, :amount, :prompt_tokens, :max_tokens, :price_input, :price_cached_input, "
                   ":price_output, 0, 0, :owner, 'open', :created_at)",
    "record_progress": "UPDATE holds SET progress_tokens = :progress_tokens, cached_tokens = :cached_tokens "
                       "WHERE account_id = :account_id AND request_id = :request_id AND state = 'open'",
    "claim_hold": "UPDATE holds SET state = 'settled' "
                  "WHERE account_id = :account_id AND request_id = :request_id AND state = 'open'",
    "insert_usage": "INSERT INTO usage_records (request_id, account_id, key_id, model, prompt_tokens, "
                    "cached_tokens, completion_tokens, status, finish_reason, queue_ms, first_token_ms, "
                    "total_ms, created_at, cost, usage_source, end_user) VALUES (:request_id, :account_id, :key_id, "
                    ":model, :prompt_tokens, :cached_tokens, :completion_tokens, :status, :finish_reason, "
                    ":queue_ms, :first_token_ms, :total_ms, :created_at, :cost, :usage_source, :end_user)",
    "add_daily": "INSERT INTO usage_daily (day, account_id, key_id, model, requests, prompt_tokens, "
                 "cached_tokens, completion_tokens, cost) VALUES (:day, :account_id, :key_id, :model, 1, "
                 ":prompt_tokens, :cached_tokens, :completion_tokens, :cost) "
                 "ON CONFLICT (day, account_id, key_id, model) DO UPDATE SET "
                 "requests = usage_daily.requests + 1, "
                 "prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, "
                 "cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens, "
                 "completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens, "
                 "cost = usage_daily.cost + excluded.cost",
}

# PostgreSQL only: each runs a whole step of the ledger as one statement (data-modifying CTEs), so
# with autocommit a step costs one network round trip instead of a dozen. SQLite runs the same
# steps statement by statement in one transaction (ledger.py).
# Every step locks the account's row before its key's, or concurrent holds and settlements of one
# account deadlock. PostgreSQL runs the sub-statements that nothing reads last, in reverse order,
# so the order is forced by reading: the key's update reads the account's (`EXISTS ... FROM`).
PG_STATEMENTS = {
    "pg_place_hold":
        "WITH debit AS (UPDATE accounts SET balance = balance - :amount "
        "  WHERE id = :account_id AND balance >= :amount RETURNING id), "
        "key_held AS (UPDATE api_keys SET held = held + :amount "
        "  WHERE id = :key_id AND EXISTS (SELECT 1 FROM debit) RETURNING id), "
        "entry AS (INSERT INTO ledger_entries (account_id, kind, amount, request_id, key_id, note, created_at) "
        "  SELECT :account_id::varchar, 'hold', -(:amount)::bigint, :request_id::varchar, :key_id::varchar, '', "
        "  :created_at::float8 FROM debit), "
        "hold AS (INSERT INTO holds (account_id, request_id, key_id, model, amount, prompt_tokens, max_tokens, "
        "  price_input, price_cached_input, price_output, cached_tokens, progress_tokens, owner, state, created_at) "
        "  SELECT :account_id::varchar, :request_id::varchar, :key_id::varchar, :model::varchar, :amount::bigint, "
        "  :prompt_tokens::int, :max_tokens::int, :price_input::bigint, :price_cached_input::bigint, "
        "  :price_output::bigint, 0, 0, :owner::varchar, 'open', :created_at::float8 FROM debit RETURNING 1) "
        "SELECT count(*) FROM hold",
    "pg_settle_hold":
        "WITH claim AS (UPDATE holds SET state = 'settled' "
        "  WHERE account_id = :account_id AND request_id = :request_id AND state = 'open' RETURNING 1), "
        "entries AS (INSERT INTO ledger_entries (account_id, kind, amount, request_id, key_id, note, created_at) "
        "  SELECT :account_id::varchar, v.kind, v.amount, :request_id::varchar, :key_id::varchar, '', "
        "  :created_at::float8 FROM claim, "
        "  (VALUES ('release', (:released)::bigint), ('settlement', -(:charged)::bigint)) AS v(kind, amount)), "
        "credit AS (UPDATE accounts SET balance = balance + (:released)::bigint - (:charged)::bigint "
        "  WHERE id = :account_id AND EXISTS (SELECT 1 FROM claim) AND (:released)::bigint > 0 RETURNING 1), "
        "key_settled AS (UPDATE api_keys SET held = held - (:released)::bigint, spent = spent + (:charged)::bigint "
        "  WHERE id = :key_id AND EXISTS (SELECT 1 FROM credit)), "
        "usage AS (INSERT INTO usage_records (request_id, account_id, key_id, model, prompt_tokens, "
        "  cached_tokens, completion_tokens, status, finish_reason, queue_ms, first_token_ms, total_ms, "
        "  created_at, cost, usage_source, end_user) SELECT :request_id::varchar, :account_id::varchar, "
        "  :key_id::varchar, :model::varchar, :prompt_tokens::int, :cached_tokens::int, "
        "  :completion_tokens::int, :status::varchar, :finish_reason::varchar, :queue_ms::float8, "
        "  :first_token_ms::float8, :total_ms::float8, :created_at::float8, (:charged)::bigint, "
        "  :usage_source::varchar, :end_user::varchar FROM claim), "
        "daily AS (INSERT INTO usage_daily (day, account_id, key_id, model, requests, prompt_tokens, "
        "  cached_tokens, completion_tokens, cost) SELECT :day::varchar, :account_id::varchar, "
        "  :key_id::varchar, :model::varchar, 1, :prompt_tokens::bigint, :cached_tokens::bigint, "
        "  :completion_tokens::bigint, (:charged)::bigint FROM claim "
        "  ON CONFLICT (day, account_id, key_id, model) DO UPDATE SET "
        "  requests = usage_daily.requests + 1, "
        "  prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, "
        "  cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens, "
        "  completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens, "
        "  cost = usage_daily.cost + excluded.cost) "
        "SELECT count(*) FROM claim",
}

_NAMED = re.compile(r"(?<!:):(\w+)")  # :name, not the ::type of a cast


def _for_driver(sql: str, dialect: str, paramstyle: str) -> str:
    if dialect == "sqlite":  # sqlite3 takes :name with a dict, whatever SQLAlchemy's paramstyle
        return sql
    if paramstyle == "pyformat":  # psycopg
        return _NAMED.sub(r"%(\1)s", sql)
    raise ValueError(f"no hand-written SQL for {dialect} ({paramstyle})")


_cache: dict[str, dict[str, str]] = {}


@dataclass(frozen=True, slots=True)
class Ran:
    """What the request path reads of a statement run on SQLite's cursor: the rows it changed
    and its first row."""

    rowcount: int
    first: tuple[Any, ...] | None

    def scalar(self) -> Any:
        return None if self.first is None else self.first[0]


@dataclass(frozen=True, slots=True)
class DriverTransaction:
    """A SQLite transaction on a pooled driver connection, for steps that run only the
    statements here: what `run` needs of a `Connection`, without SQLAlchemy's connection and
    transaction bookkeeping, which costs more than the step's own work."""

    dialect: Dialect
    connection: PoolProxiedConnection


# What a ledger step runs its statements in.
Books = Connection | DriverTransaction


@contextmanager
def driver_transaction(engine: Engine) -> Iterator[DriverTransaction]:
    """BEGIN IMMEDIATE (as every SQLite transaction here starts, see store/db.py) ... COMMIT, or
    ROLLBACK when the block raises; the connection goes back to the pool either way."""
    raw = engine.raw_connection()
    try:
        driver = raw.dbapi_connection
        driver.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
        try:
            yield DriverTransaction(engine.dialect, raw)
        except BaseException:
            driver.rollback()  # type: ignore[union-attr]
            raise
        driver.commit()  # type: ignore[union-attr]
    finally:
        raw.close()


def _statements(dialect: Dialect) -> dict[str, str]:
    statements = _cache.get(dialect.name)
    if statements is None:
        own = {**STATEMENTS, **(PG_STATEMENTS if dialect.name == "postgresql" else {})}
        statements = _cache[dialect.name] = {
            k: _for_driver(v, dialect.name, dialect.paramstyle) for k, v in own.items()}
    return statements


def run(conn: Books, name: str, **params: Any) -> CursorResult | Ran:
    """Run the statement `name` with `params` in `conn`'s transaction. A driver's error is raised
    as SQLAlchemy raises it (`IntegrityError` for a duplicate, say) either way."""
    dialect = conn.dialect
    statements = _statements(dialect)
    if dialect.name != "sqlite":
        return conn.exec_driver_sql(statements[name], params)  # type: ignore[union-attr]
    sql = statements[name]
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with _as_sqlalchemy_errors(dialect, sql, params):
            cursor.execute(sql, params)
            return Ran(cursor.rowcount, cursor.fetchone() if cursor.description else None)
    finally:
        cursor.close()


def run_in_one_round_trip(engine: Engine, steps: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """PostgreSQL only: run the statements `steps` names (name, params) in one transaction that
    costs one network round trip (psycopg's pipeline mode: BEGIN, the statements and COMMIT are
    sent together); returns each statement's first column of its first row (None without one).
    If any statement fails, nothing is committed and its error is raised as SQLAlchemy raises it.
    The several steps of a group commit (`platform.group_commit`) run this way."""
    statements = _statements(engine.dialect)
    error = engine.dialect.loaded_dbapi.Error
    raw = engine.raw_connection()
    pg: Any = raw.dbapi_connection
    try:
        pg.autocommit = True  # so that BEGIN goes out with the statements, not in a round trip of its own
        with pg.pipeline():
            pg.execute("BEGIN")
            cursors = [pg.execute(statements[name], params) for name, params in steps]
            pg.execute("COMMIT")
        pg.autocommit = False  # as the pool hands its connections out
        return [None if c.description is None or (row := c.fetchone()) is None else row[0] for c in cursors]
    except BaseException as exc:
        from psycopg.pq import TransactionStatus  # here: SQLite deployments never load psycopg

        try:
            if pg.info.transaction_status != TransactionStatus.IDLE:
                pg.execute("ROLLBACK")
            pg.autocommit = False
        except error:
            raw.invalidate()  # broken: the pool drops it
        if isinstance(exc, error):
            raise DBAPIError.instance("BEGIN; ...; COMMIT", {}, exc, error) from exc
        raise
    finally:
        raw.close()


@contextmanager
def _as_sqlalchemy_errors(dialect: Dialect, sql: str, params: dict[str, Any]) -> Iterator[None]:
    """A driver's error on SQLite's own cursor, raised as SQLAlchemy raises it."""
    try:
        yield
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, params, exc, dialect.loaded_dbapi.Error) from exc


class Reader:
    """Reads of one statement each, outside any transaction: on SQLite on a pooled driver
    connection, on PostgreSQL in autocommit (one round trip, no BEGIN and ROLLBACK). On SQLite
    an ORM session's read of the same row costs 12-18x as much (`bench/cache_reads.py`)."""

    def __init__(self, engine: Engine) -> None:
        self._sqlite = engine.dialect.name == "sqlite"
        self._engine = engine if self._sqlite else engine.execution_options(isolation_level="AUTOCOMMIT")
        self._dialect = engine.dialect

    def rows(self, name: str, **params: Any) -> list[tuple[Any, ...]]:
        sql = _statements(self._dialect)[name]
        if not self._sqlite:
            with self._engine.connect() as conn:
                return [tuple(r) for r in conn.exec_driver_sql(sql, params)]
        raw = self._engine.raw_connection()
        try:
            with _as_sqlalchemy_errors(self._dialect, sql, params):
                return raw.dbapi_connection.execute(sql, params).fetchall()  # type: ignore[union-attr]
        finally:
            raw.close()

    def row(self, name: str, **params: Any) -> tuple[Any, ...] | None:
        rows = self.rows(name, **params)
        return rows[0] if rows else None
