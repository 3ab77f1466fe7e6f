"""The SQLite foundation and the extensions store, on real database files."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from sdpbx.errors import ConfigError
from sdpbx.store import (
    MIGRATIONS,
    Database,
    DuplicateError,
    ExtensionStore,
    NotFoundError,
    Page,
    StoreError,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sdpbx.sqlite3"


# -- URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite://sdpbx.sqlite3", "sdpbx.sqlite3"),
        ("sqlite:///var/lib/sdpbx/db.sqlite3", "/var/lib/sdpbx/db.sqlite3"),
        ("sqlite://data/x.db?mode=rwc", "data/x.db"),
        ("sqlite::memory:", ":memory:"),
        ("sqlite://:memory:", ":memory:"),
    ],
)
def test_from_url(url: str, path: str) -> None:
    assert Database.from_url(url).path == path


@pytest.mark.parametrize("url", ["postgres://localhost/x", "sqlite://", "sdpbx.sqlite3"])
def test_from_url_rejects(url: str) -> None:
    with pytest.raises(ConfigError, match="database_url"):
        Database.from_url(url)


# -- connection and migrations -------------------------------------------------------


async def test_open_applies_migrations_and_settings(db_path: Path) -> None:
    async with Database(db_path) as db:
        assert await db.schema_version() == len(MIGRATIONS)
        tables = {r["name"] for r in await db.fetchall("SELECT name FROM sqlite_master")}
        assert {"extensions", "locations"} <= tables
        assert tuple(await db.fetchone("PRAGMA journal_mode") or ()) == ("wal",)
        assert tuple(await db.fetchone("PRAGMA foreign_keys") or ()) == (1,)
        assert tuple(await db.fetchone("PRAGMA busy_timeout") or ()) == (5000,)


async def test_migrations_idempotent_on_reopen(db_path: Path) -> None:
    async with Database(db_path) as db:
        ext_id = await ExtensionStore(db).create("1001", "secret")
    async with Database(db_path) as db:
        assert await db.schema_version() == len(MIGRATIONS)
        ext = await ExtensionStore(db).get(ext_id)
        assert ext is not None
        assert ext.username == "1001"


async def test_appended_migration_upgrades_existing_database(db_path: Path) -> None:
    async with Database(db_path):
        pass
    extended = (*MIGRATIONS, "CREATE TABLE trunks (id INTEGER PRIMARY KEY, name TEXT);")
    async with Database(db_path, migrations=extended) as db:
        assert await db.schema_version() == len(MIGRATIONS) + 1
        await db.execute("INSERT INTO trunks (name) VALUES ('carrier')")
    # Older code must not open a schema it does not know.
    db = Database(db_path)
    with pytest.raises(StoreError, match="newer"):
        await db.open()
    assert not db.is_open


async def test_failed_migration_is_atomic(db_path: Path) -> None:
    broken = (*MIGRATIONS, "CREATE TABLE half (x INTEGER); CREATE TABLE broken (;")
    with pytest.raises(StoreError, match="migration 2"):
        await Database(db_path, migrations=broken).open()
    async with Database(db_path) as db:
        assert await db.schema_version() == len(MIGRATIONS)
        names = {r["name"] for r in await db.fetchall("SELECT name FROM sqlite_master")}
        assert "half" not in names


async def test_memory_database() -> None:
    async with Database.from_url("sqlite::memory:") as db:
        await ExtensionStore(db).create("1001", "pw")
        assert (await db.fetchone("SELECT COUNT(*) AS n FROM extensions") or {"n": 0})["n"] == 1


async def test_unopenable_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open"):
        await Database(tmp_path / "file" / "db.sqlite3").open()


# -- queries and errors ----------------------------------------------------------------


async def test_errors_are_translated(db_path: Path) -> None:
    async with Database(db_path) as db:
        await db.execute("CREATE TABLE t (k TEXT UNIQUE)")
        await db.execute("INSERT INTO t VALUES (?)", ("a",))
        with pytest.raises(DuplicateError):
            await db.execute("INSERT INTO t VALUES (?)", ("a",))
        with pytest.raises(StoreError, match="OperationalError") as info:
            await db.execute("SELEC nonsense")
        assert not isinstance(info.value, DuplicateError)
        assert not isinstance(info.value, sqlite3.Error)


async def test_execute_results_and_executemany(db_path: Path) -> None:
    async with Database(db_path) as db:
        await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        first = await db.execute("INSERT INTO t (v) VALUES (:v)", {"v": "x"})
        assert (first.rowcount, first.lastrowid) == (1, 1)
        assert await db.executemany("INSERT INTO t (v) VALUES (?)", [("a",), ("b",)]) == 2
        rows = await db.fetchall("SELECT v FROM t ORDER BY id")
        assert [r["v"] for r in rows] == ["x", "a", "b"]
        assert await db.fetchone("SELECT v FROM t WHERE id = 99") is None


async def test_transaction_commits_or_rolls_back(db_path: Path) -> None:
    async with Database(db_path) as db:
        await db.execute("CREATE TABLE t (v INTEGER)")

        def ok(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("INSERT INTO t VALUES (2)")
            return 7

        def fails(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (3)")
            raise RuntimeError("boom")

        def fails_in_sql(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (4)")
            conn.execute("INSERT INTO missing VALUES (5)")

        assert await db.transaction(ok) == 7
        with pytest.raises(RuntimeError, match="boom"):
            await db.transaction(fails)
        with pytest.raises(StoreError, match="missing"):
            await db.transaction(fails_in_sql)
        rows = await db.fetchall("SELECT v FROM t ORDER BY v")
        assert [r["v"] for r in rows] == [1, 2]


async def test_deferred_writes_keep_order(db_path: Path) -> None:
    async with Database(db_path) as db:
        await db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
        db.defer("INSERT INTO t VALUES ('a', 1)")
        db.defer("DELETE FROM t WHERE k = 'a'")
        await db.execute("INSERT INTO t VALUES ('a', 2)")  # runs after both
        db.defer("UPDATE t SET v = 3 WHERE k = 'a'")
        await db.flush()
        assert [tuple(r) for r in await db.fetchall("SELECT k, v FROM t")] == [("a", 3)]


async def test_deferred_failure_is_logged(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with Database(db_path) as db:
        with caplog.at_level(logging.ERROR, logger="sdpbx.store"):
            db.defer("INSERT INTO nowhere VALUES (1)")
            await db.flush()
    assert "deferred database write failed" in caplog.text


async def test_close_runs_pending_writes_and_then_refuses(db_path: Path) -> None:
    db = Database(db_path)
    await db.open()
    await db.execute("CREATE TABLE t (v INTEGER)")
    db.defer("INSERT INTO t VALUES (1)")
    await db.close()
    await db.close()  # idempotent
    with pytest.raises(StoreError, match="not open"):
        await db.execute("SELECT 1")
    with pytest.raises(StoreError, match="not open"):
        db.defer("SELECT 1")
    with pytest.raises(StoreError, match="already opened"):
        await db.open()
    async with Database(db_path) as again:
        assert [r["v"] for r in await again.fetchall("SELECT v FROM t")] == [1]


async def test_cancelled_caller_still_completes_write(db_path: Path) -> None:
    async with Database(db_path) as db:
        await db.execute("CREATE TABLE t (v INTEGER)")
        with anyio.CancelScope() as scope:
            scope.cancel()
            await db.execute("INSERT INTO t VALUES (1)")
        assert scope.cancelled_caught
        assert [r["v"] for r in await db.fetchall("SELECT v FROM t")] == [1]


# -- paging ------------------------------------------------------------------------------


def test_page_shape() -> None:
    page = Page.of(["a", "b"], 2, 2, 5)
    assert (page.total_pages, page.has_prev, page.has_next) == (3, True, True)
    last = Page.of(["e"], 3, 2, 5)
    assert (last.total_pages, last.has_prev, last.has_next) == (3, True, False)
    empty: Page[str] = Page.of([], 1, 20, 0)
    assert (empty.total_pages, empty.has_prev, empty.has_next) == (0, False, False)


# -- extensions ----------------------------------------------------------------------------


@pytest.fixture
async def extensions(db_path: Path) -> AsyncIterator[ExtensionStore]:
    async with Database(db_path) as db:
        yield ExtensionStore(db)


async def test_extension_crud(extensions: ExtensionStore) -> None:
    ext_id = await extensions.create(
        "1001", "secret", display_name="Alice", email="alice@example.com", realm="pbx.com"
    )
    ext = await extensions.get(ext_id)
    assert ext is not None
    assert (ext.username, ext.password, ext.display_name, ext.realm) == (
        "1001",
        "secret",
        "Alice",
        "pbx.com",
    )
    assert ext.enabled is True
    assert ext.allow_guest_calls is False
    assert ext.password_ha1 is None
    assert ext.created_at.tzinfo is not None
    assert await extensions.get_by_username("1001") == ext
    assert await extensions.get_by_username("1002") is None

    updated = await extensions.update(ext_id, enabled=False, password_ha1="a" * 32, email=None)
    assert (updated.enabled, updated.password_ha1, updated.email) == (False, "a" * 32, None)
    assert updated.updated_at >= ext.updated_at
    assert await extensions.get(ext_id) == updated

    await extensions.delete(ext_id)
    assert await extensions.get(ext_id) is None
    with pytest.raises(NotFoundError):
        await extensions.delete(ext_id)
    with pytest.raises(NotFoundError):
        await extensions.update(ext_id, password="x")


async def test_extension_duplicates(extensions: ExtensionStore) -> None:
    await extensions.create("1001", "a")
    other = await extensions.create("1002", "b")
    with pytest.raises(DuplicateError):
        await extensions.create("1001", "c")
    with pytest.raises(DuplicateError):
        await extensions.update(other, username="1001")
    renamed = await extensions.update(other, username="1003")
    assert renamed.username == "1003"


async def test_extension_bad_arguments(extensions: ExtensionStore) -> None:
    ext_id = await extensions.create("1001")
    with pytest.raises(TypeError, match="created_at"):
        await extensions.update(ext_id, created_at="yesterday")
    with pytest.raises(ValueError, match="username"):
        await extensions.update(ext_id, username="")
    with pytest.raises(ValueError, match="username"):
        await extensions.create("")
    with pytest.raises(ValueError, match="page"):
        await extensions.list(page=0)
    with pytest.raises(ValueError, match="per_page"):
        await extensions.list(per_page=0)


async def test_extension_paging(extensions: ExtensionStore) -> None:
    for n in range(25):
        await extensions.create(f"{1000 + n}", "pw")
    first = await extensions.list(page=1, per_page=10)
    assert [e.username for e in first.items] == [f"{1000 + n}" for n in range(10)]
    assert (first.total_items, first.total_pages, first.has_prev, first.has_next) == (
        25,
        3,
        False,
        True,
    )
    last = await extensions.list(page=3, per_page=10)
    assert [e.username for e in last.items] == [f"{1020 + n}" for n in range(5)]
    assert (last.current_page, last.has_prev, last.has_next) == (3, True, False)
    beyond = await extensions.list(page=4, per_page=10)
    assert beyond.items == ()
    assert beyond.total_items == 25


async def test_extension_search(extensions: ExtensionStore) -> None:
    await extensions.create("1001", display_name="Alice Smith", email="alice@example.com")
    await extensions.create("1002", display_name="Bob", email="bob@corp.example")
    await extensions.create("2001", display_name="100% sales", email=None)
    await extensions.create("2002", display_name="under_score")

    async def names(q: str) -> list[str]:
        return [e.username for e in (await extensions.list(q=q)).items]

    assert await names("100") == ["1001", "1002", "2001"]
    assert await names("ALICE") == ["1001"]
    assert await names("corp") == ["1002"]
    assert await names("%") == ["2001"]
    assert await names("_") == ["2002"]
    assert await names("nobody") == []
    page = await extensions.list(q="100", per_page=2)
    assert (page.total_items, page.total_pages, len(page.items)) == (3, 2, 2)


async def test_extension_concurrent_creates(extensions: ExtensionStore) -> None:
    ids: list[int] = []
    failures: list[DuplicateError] = []

    async def create(username: str) -> None:
        try:
            ids.append(await extensions.create(username, "pw"))
        except DuplicateError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for n in range(50):
            tg.start_soon(create, f"{3000 + n}")
        for _ in range(5):
            tg.start_soon(create, "3000")  # races against the first
    assert len(set(ids)) == 50
    assert len(failures) == 5
    assert (await extensions.list(per_page=100)).total_items == 50
