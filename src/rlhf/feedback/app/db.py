"""Database URLs, engines and schema migrations.

A bare path means a SQLite file, opened in WAL mode with a busy timeout so that many annotators can
submit at once (writers queue instead of failing) and a killed server never loses a committed label.
Anything with "://" is a SQLAlchemy URL, e.g. postgresql://user@host:5432/labels.
"""
from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from rlhf.errors import RLHFError

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 30_000


def database_url(db: str) -> str:
    if db.startswith(("postgresql://", "postgres://")):
        # the driver this package depends on (SQLAlchemy 2.1 would otherwise pick psycopg 3)
        return "postgresql+psycopg2://" + db.split("://", 1)[1]
    if "://" in db:
        return db
    path = Path(db).expanduser()
    if not path.parent.is_dir():
        raise RLHFError(f"database directory does not exist: {path.parent}")
    return f"sqlite:///{path.resolve()}"


SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def sqlite_path(db: str) -> Path | None:
    """The SQLite file behind `db`, or None for a server database (PostgreSQL)."""
    url = database_url(db)
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") and url != "sqlite:///:memory:" else None


class DatabaseFileGuard:
    """Tells whether a path is one of the app's own SQLite files (the database, its WAL, shared
    memory and rollback journal), by name and by inode, so a hard link or symlink is caught too.

    The app must never open these files except through its engine: opening and closing the
    database file in the server process drops SQLite's POSIX locks (SQLite's documented
    corruption case), after which another connection closing can delete the live WAL and
    acknowledged labels are lost on a crash. Only `os.stat` is used here, which takes no locks."""

    def __init__(self, database: Path | None):
        self.paths = [] if database is None else [Path(f"{database}{suffix}") for suffix in SQLITE_SIDE_FILES]

    def __contains__(self, path: str | os.PathLike) -> bool:
        path = Path(path)
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError):
            return True  # cannot tell: treat as protected
        if any(resolved == own.resolve() for own in self.paths):
            return True
        try:
            target = os.stat(resolved)
        except OSError:
            return False
        for own in self.paths:
            try:
                if os.path.samestat(target, os.stat(own)):
                    return True
            except OSError:
                continue
        return False


def make_engine(db: str) -> Engine:
    url = database_url(db)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
                               pool_size=20, max_overflow=40)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        return create_engine(url, pool_size=20, max_overflow=40, pool_pre_ping=True)
    except Exception as exc:  # unknown dialect or driver: the user's URL is at fault
        raise RLHFError(f"cannot use database URL {url!r}: {exc}") from None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=FULL")  # a 200 response means the label is on disk
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision shipped in this package (idempotent)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(db: str) -> sessionmaker[Session]:
    """Engine + migrations + session factory: the one entry point for the server and the CLI."""
    engine = make_engine(db)
    try:
        migrate(engine)
    except Exception as exc:
        if isinstance(exc, RLHFError):
            raise
        raise RLHFError(f"cannot open database {db!r}: {exc.__class__.__name__}: {exc}") from None
    return sessionmaker(engine, expire_on_commit=False)
