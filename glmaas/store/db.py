"""Opening the database: SQLite file (WAL) in the data dir by default, any SQLAlchemy URL
otherwise. Opening always brings the schema to the newest migration."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'glmaas.db'}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable across process crashes in WAL mode (only power loss can lose the tail).
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def create_db_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # The driver's own transaction handling off, so that every transaction starts with
        # BEGIN IMMEDIATE: it takes the write lock up front, and concurrent writers from other
        # processes wait (busy_timeout) instead of failing on a stale read snapshot.
        # Every transaction is ended by its owner, so the pool's extra rollback on check-in is
        # skipped; BEGIN goes straight to the driver (it runs twice per request).
        engine = create_engine(url, connect_args={"check_same_thread": False, "isolation_level": None},
                               pool_reset_on_return=None)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", lambda conn: conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE"))
        return engine
    # No pre-ping: it would add a round trip to every transaction on the request path. Connections
    # are recycled instead, and a connection the server dropped fails one request, not the process.
    return create_engine(url, pool_recycle=300, pool_size=10, max_overflow=20)


def migrate(engine: Engine) -> None:
    """Upgrade the schema to head (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def schema_heads() -> frozenset[str]:
    """The newest migration this code knows (one head; a set, as Alembic has it)."""
    return frozenset(ScriptDirectory(str(MIGRATIONS)).get_heads())


def schema_revisions(engine: Engine) -> frozenset[str]:
    """The migration the database is at. A plain read on a connection of the pool, without a
    transaction (on SQLite a transaction here would take the write lock); raises when the
    database cannot be reached."""
    conn = engine.raw_connection()
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT version_num FROM alembic_version")
        return frozenset(row[0] for row in cursor.fetchall())
    finally:
        conn.close()


class Database:
    """The engine and a session factory; one per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        migrate(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(url: str) -> Database:
    return Database(url)


__all__ = ["Database", "Session", "open_database", "schema_heads", "schema_revisions", "sqlite_url"]
