"""The SQLite database every sdpbx store shares.

Why one connection on one dedicated thread: stdlib :mod:`sqlite3` blocks, so
it must stay off the event loop; SQLite allows one writer at a time anyway; and
a single ordered queue of jobs gives writes a total order. That order is what
lets synchronous code (the stack's timer expiring bindings, a TCP connection
closing) hand a write to :meth:`Database.defer` without awaiting, and still be
sure a later awaited write for the same row lands after it.

Transactions are a function run in the database thread
(:meth:`Database.transaction`), not an ``async with`` block: a transaction that
spans ``await`` points would either hold a lock across unrelated tasks or let
their statements slip into it.

Connection settings: WAL journal (readers never block the writer),
``synchronous=NORMAL`` (a commit survives a crash of the process, not a power
cut, which is the usual trade for a PBX's registrations and CDRs), foreign keys
on, and a busy timeout so an outside reader (``sqlite3`` CLI, a backup) does not
make us fail at once.

Schema migrations
-----------------
The schema version is ``PRAGMA user_version``: the number of entries of
:data:`MIGRATIONS` already applied. On :meth:`Database.open` every missing
entry runs in order, each atomically together with its version bump. To change
the schema, **append** a new SQL script to :data:`MIGRATIONS` (trunks, routes,
call records, console users, ...); never edit or reorder an entry that has been
released, because databases in the field have already applied it. A database
whose version is newer than the code refuses to open rather than guessing.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from attrs import frozen

from ..errors import ConfigError, SdpbxError

__all__ = [
    "MIGRATIONS",
    "Database",
    "DuplicateError",
    "ExecResult",
    "NotFoundError",
    "Params",
    "StoreError",
]

logger = logging.getLogger("sdpbx.store")

T = TypeVar("T")
Params = Sequence[Any] | dict[str, Any]

MIGRATIONS: tuple[str, ...] = (
    # 1: console extensions and registrar bindings.
    """
    CREATE TABLE extensions (
        id INTEGER PRIMARY KEY,
        username TEXT UNIQUE NOT NULL,
        password TEXT,
        password_ha1 TEXT,
        realm TEXT,
        display_name TEXT,
        email TEXT,
        enabled INTEGER NOT NULL DEFAULT 1,
        allow_guest_calls INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE locations (
        aor TEXT NOT NULL,
        contact TEXT NOT NULL,
        transport TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        connection_id INTEGER,
        expires_at REAL NOT NULL,
        q REAL NOT NULL DEFAULT 1.0,
        call_id TEXT NOT NULL,
        cseq INTEGER NOT NULL,
        path TEXT NOT NULL DEFAULT '[]',
        user_agent TEXT NOT NULL DEFAULT '',
        instance_id TEXT,
        reg_id INTEGER,
        registered_at REAL NOT NULL,
        PRIMARY KEY (aor, contact)
    ) WITHOUT ROWID;
    CREATE INDEX locations_expires_at ON locations (expires_at);
    """,
)


class StoreError(SdpbxError):
    """The database failed or refused an operation."""


class DuplicateError(StoreError):
    """A row with the same unique key (a username, a name) already exists."""


class NotFoundError(StoreError):
    """The row to read, update or delete does not exist."""


@frozen
class ExecResult:
    """What a write reports: rows touched and the rowid it inserted, if any."""

    rowcount: int
    lastrowid: int | None


def _translate(exc: sqlite3.Error) -> StoreError:
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc).upper():
        return DuplicateError(str(exc))
    return StoreError(f"{type(exc).__name__}: {exc}")


class _Job:
    """One unit of work for the database thread; ``done`` is set on the loop."""

    __slots__ = ("done", "error", "fn", "result", "token")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        token: anyio.lowlevel.EventLoopToken | None,
    ) -> None:
        self.fn = fn
        self.token = token
        self.done: anyio.Event | None = anyio.Event() if token is not None else None
        self.result: Any = None
        self.error: BaseException | None = None


_STOP = object()


def _close_connection(conn: sqlite3.Connection) -> None:
    conn.close()


class Database:
    """One SQLite database, opened once and shared by every store.

    ``path`` may be ``":memory:"`` (tests, throwaway servers).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        migrations: Sequence[str] = MIGRATIONS,
        busy_timeout: float = 5.0,
    ) -> None:
        self._path = str(path)
        self._migrations = tuple(migrations)
        self._busy_timeout = busy_timeout
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Database:
        """Accept RustPBX's ``database_url`` forms: ``sqlite://file.sqlite3``,
        ``sqlite:///abs/path``, ``sqlite::memory:``, ``sqlite://:memory:``
        (an sqlx-style ``?mode=rwc`` query is ignored)."""
        if not url.startswith("sqlite:"):
            raise ConfigError([("database_url", f"only sqlite URLs are supported, got {url!r}")])
        rest = url[len("sqlite:") :].split("?", 1)[0]
        if rest.startswith("//"):
            rest = rest[2:]
        if rest in (":memory:", ""):
            if rest == "":
                raise ConfigError([("database_url", f"no database path in {url!r}")])
            return cls(":memory:", **kwargs)
        return cls(rest, **kwargs)

    @property
    def path(self) -> str:
        return self._path

    @property
    def is_open(self) -> bool:
        return self._thread is not None and not self._closed

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        """Start the database thread, connect and apply pending migrations."""
        if self._thread is not None:
            raise StoreError("database already opened")
        self._thread = threading.Thread(
            target=self._worker, name=f"sdpbx-sqlite:{self._path}", daemon=True
        )
        self._thread.start()
        try:
            await self._call(self._migrate)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise

    async def close(self) -> None:
        """Finish every queued write, then close. Safe to call twice."""
        thread = self._thread
        if thread is None or self._closed:
            return
        self._closed = True
        job = _Job(_close_connection, anyio.lowlevel.current_token())
        self._queue.put(job)
        self._queue.put(_STOP)
        with anyio.CancelScope(shield=True):
            await self._wait(job)
            await anyio.to_thread.run_sync(thread.join)

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- queries -------------------------------------------------------------------

    async def execute(self, sql: str, params: Params = ()) -> ExecResult:
        def run(conn: sqlite3.Connection) -> ExecResult:
            cur = conn.execute(sql, params)
            return ExecResult(cur.rowcount, cur.lastrowid)

        return await self._call(run)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> int:
        """Run one statement for many rows in a single transaction."""

        def run(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                return conn.executemany(sql, rows).rowcount

        return await self._call(run)

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        return await self._call(lambda conn: conn.execute(sql, params).fetchall())

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = await self._call(
            lambda conn: conn.execute(sql, params).fetchone()
        )
        return row

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in the database thread inside ``BEGIN IMMEDIATE`` …
        ``COMMIT``; any exception rolls back and propagates (sqlite3 errors as
        :class:`StoreError`). ``fn`` must not block on anything but SQLite."""

        def run(conn: sqlite3.Connection) -> T:
            with _transaction(conn):
                return fn(conn)

        return await self._call(run)

    def defer(self, sql: str, params: Params = ()) -> None:
        """Queue a write from synchronous code without waiting for it.

        It runs before any operation queued after it. Its failure cannot reach
        the caller, so it is logged; :meth:`flush` waits for it to finish.
        """
        self._check_open()

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(sql, params)

        self._queue.put(_Job(run, None))

    async def flush(self) -> None:
        """Return once every write queued before this call has run."""
        await self._call(lambda conn: None)

    async def schema_version(self) -> int:
        return await self._call(_user_version)

    # -- the database thread -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._thread is None or self._closed:
            raise StoreError("database is not open")

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        job = _Job(fn, anyio.lowlevel.current_token())
        self._queue.put(job)
        # The job runs whatever happens to this task (a write that started must
        # finish), so a cancelled caller still waits for it before unwinding.
        with anyio.CancelScope(shield=True):
            await self._wait(job)
        await anyio.lowlevel.checkpoint_if_cancelled()
        if job.error is not None:
            raise job.error
        result: T = job.result
        return result

    @staticmethod
    async def _wait(job: _Job) -> None:
        assert job.done is not None
        await job.done.wait()

    def _worker(self) -> None:
        # The connection is made, used and closed on this thread only.
        conn: sqlite3.Connection | None = None
        connect_error: StoreError | None = None
        try:
            conn = self._connect()
        except Exception as exc:  # the thread must live on to answer every job
            connect_error = StoreError(f"cannot open {self._path}: {exc}")
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, _Job)
            try:
                if conn is None:
                    raise connect_error or StoreError("database is closed")
                item.result = item.fn(conn)
            except sqlite3.Error as exc:
                item.error = _translate(exc)
            except BaseException as exc:
                item.error = exc
            if item.fn is _close_connection:
                conn = None
            if item.done is None:
                if item.error is not None:
                    logger.error("deferred database write failed: %s", item.error)
                continue
            # RuntimeError: the event loop is gone, so nobody is waiting.
            with contextlib.suppress(RuntimeError):
                anyio.from_thread.run_sync(item.done.set, token=item.token)

    def _connect(self) -> sqlite3.Connection:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        current = _user_version(conn)
        if current > len(self._migrations):
            raise StoreError(
                f"database schema version {current} is newer than this sdpbx "
                f"(knows {len(self._migrations)}); refusing to open {self._path}"
            )
        for version, script in enumerate(self._migrations[current:], start=current + 1):
            # executescript commits any open transaction first, so the BEGIN and
            # the version bump live inside the script to keep both atomic.
            try:
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\n;PRAGMA user_version = {version};\nCOMMIT;"
                )
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"migration {version} failed: {exc}") from exc


def _user_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


class _transaction:
    """BEGIN IMMEDIATE / COMMIT, or ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
