"""User backends: memory, plain file, console extensions (real SQLite), chains, config."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import anyio
import pytest

from sdpbx.config import (
    ExtensionUserBackendConfig,
    MemoryUserBackendConfig,
    MemoryUserConfig,
    PlainUserBackendConfig,
)
from sdpbx.errors import ConfigError
from sdpbx.sip.auth import compute_ha1
from sdpbx.store import Database, ExtensionStore
from sdpbx.users import (
    ChainUserBackend,
    ExtensionUserBackend,
    MemoryUserBackend,
    PlainUserBackend,
    SipUser,
    UserBackend,
    UserBackendError,
    UserRejected,
    user_backend_from_config,
)

pytestmark = pytest.mark.anyio


# -- memory ------------------------------------------------------------------------------------


async def test_memory_realm_matching() -> None:
    anywhere = SipUser("1001", "any")
    scoped = SipUser("1001", "scoped", realm="PBX.com")
    only_b = SipUser("2001", "b", realm="b.example")
    backend = MemoryUserBackend([anywhere, scoped, only_b])
    assert await backend.get_user("1001", "pbx.com") == scoped  # realm match wins, any case
    assert await backend.get_user("1001", "other.org") == anywhere
    assert await backend.get_user("2001", "b.example") == only_b
    assert await backend.get_user("2001", "pbx.com") is None
    assert await backend.get_user("9999", "pbx.com") is None


async def test_memory_usernames_are_case_sensitive_and_mutable() -> None:
    backend = MemoryUserBackend([SipUser("alice", "pw")])
    assert await backend.get_user("Alice", "x") is None
    backend.add(SipUser("Alice", "pw2"))
    assert (await backend.get_user("Alice", "x")) == SipUser("Alice", "pw2")
    assert backend.remove("alice") == SipUser("alice", "pw")
    assert await backend.get_user("alice", "x") is None
    assert len(backend) == 1


async def test_memory_disabled_user_is_rejected() -> None:
    backend = MemoryUserBackend([SipUser("1001", "pw", enabled=False)])
    with pytest.raises(UserRejected) as info:
        await backend.get_user("1001", "pbx.com")
    assert info.value.reason == "disabled"


# -- plain file -----------------------------------------------------------------------------------


async def test_plain_file_parsing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "users.txt"
    path.write_text(
        "# staff\n\n1001:secret\n  1002:pa:ss:word  \nbroken line\n#1003:commented\n:nouser\n"
    )
    backend = PlainUserBackend(path)
    assert await backend.get_user("1001", "pbx.com") == SipUser("1001", "secret")
    assert await backend.get_user("1002", "pbx.com") == SipUser("1002", "pa:ss:word")
    assert await backend.get_user("1003", "pbx.com") is None
    assert await backend.get_user("#1003", "pbx.com") is None
    assert await backend.get_user("broken line", "pbx.com") is None
    assert "users.txt:5: not a user:password line" in caplog.text
    assert "users.txt:7" in caplog.text


async def test_a_burst_of_lookups_checks_the_file_once(tmp_path: Path) -> None:
    """A REGISTER flood must not queue one worker-thread stat() per request."""
    path = tmp_path / "users.txt"
    path.write_text("1001:secret\n")
    backend = PlainUserBackend(path)
    checks = 0
    current = backend._current

    def counting() -> dict[str, str]:
        nonlocal checks
        checks += 1
        return current()

    backend._current = counting  # type: ignore[method-assign]
    found: list[SipUser | None] = []

    async def lookup(name: str) -> None:
        found.append(await backend.get_user(name, "pbx.com"))

    async with anyio.create_task_group() as tg:
        for n in range(500):
            tg.start_soon(lookup, "1001" if n % 2 else f"x{n}")
    assert checks == 1
    assert found.count(SipUser("1001", "secret")) == 250
    assert found.count(None) == 250


async def test_lookups_during_a_slow_check_use_the_last_read(tmp_path: Path) -> None:
    """Nobody queues behind the once-a-second stat(): a queue would count against the
    per-source lookup cap and turn a registration burst into 503s."""
    path = tmp_path / "users.txt"
    path.write_text("1001:secret\n")
    backend = PlainUserBackend(path)
    assert await backend.get_user("1001", "pbx.com") == SipUser("1001", "secret")
    release = threading.Event()
    current = backend._current

    def slow() -> dict[str, str]:
        release.wait(10)
        return current()

    backend._current = slow  # type: ignore[method-assign]
    backend._checked_at = -math.inf  # the next lookup checks the file
    async with anyio.create_task_group() as tg:
        tg.start_soon(backend.get_user, "1001", "pbx.com")
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(5):
            for _ in range(100):
                assert await backend.get_user("1001", "pbx.com") == SipUser("1001", "secret")
        release.set()


async def test_plain_file_reloaded_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text("1001:old\n")
    backend = PlainUserBackend(path)
    backend.check_interval = 0.0  # every lookup checks the file
    assert await backend.get_user("1001", "pbx.com") == SipUser("1001", "old")
    path.write_text("1001:new\n1002:added\n")
    # Make the change visible even on a file system with coarse timestamps.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert await backend.get_user("1001", "pbx.com") == SipUser("1001", "new")
    assert await backend.get_user("1002", "pbx.com") == SipUser("1002", "added")
    # Replaced by rename, as editors and config management tools do.
    tmp = tmp_path / "users.txt.tmp"
    tmp.write_text("1003:renamed\n")
    tmp.replace(path)
    assert await backend.get_user("1001", "pbx.com") is None
    assert await backend.get_user("1003", "pbx.com") == SipUser("1003", "renamed")


async def test_plain_file_with_realm(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text("1001:pw\n")
    backend = PlainUserBackend(path, realm="pbx.com")
    assert await backend.get_user("1001", "PBX.COM") == SipUser("1001", "pw", realm="pbx.com")
    assert await backend.get_user("1001", "other.org") is None


async def test_plain_file_missing_is_backend_error(tmp_path: Path) -> None:
    backend = PlainUserBackend(tmp_path / "nope.txt")
    with pytest.raises(UserBackendError, match="cannot read user file"):
        await backend.get_user("1001", "pbx.com")


# -- console extensions (real SQLite file) ---------------------------------------------------------


async def test_extension_backend(tmp_path: Path) -> None:
    async with Database(tmp_path / "sdpbx.sqlite3") as db:
        store = ExtensionStore(db)
        backend = ExtensionUserBackend(store)
        assert await backend.get_user("1001", "pbx.com") is None

        # Created through the store (as the console does): found at once.
        ext_id = await store.create(
            "1001", "secret", display_name="Alice", email="a@example.com", allow_guest_calls=True
        )
        assert await backend.get_user("1001", "pbx.com") == SipUser(
            username="1001",
            password="secret",
            display_name="Alice",
            email="a@example.com",
            allow_guest_calls=True,
            id=ext_id,
        )

        await store.update(ext_id, enabled=False)
        with pytest.raises(UserRejected) as info:
            await backend.get_user("1001", "pbx.com")
        assert info.value.reason == "disabled"


async def test_extension_ha1_and_realm(tmp_path: Path) -> None:
    ha1 = compute_ha1("1002", "pbx.com", "secret")
    async with Database(tmp_path / "sdpbx.sqlite3") as db:
        store = ExtensionStore(db)
        await store.create("1002", password_ha1=ha1, realm="pbx.com")
        await store.create("1003")
        backend = ExtensionUserBackend(store)
        user = await backend.get_user("1002", "pbx.com")
        assert user is not None
        assert user.password is None and user.realm == "pbx.com"
        assert user.ha1 == (("MD5", ha1),)
        assert user.secret().ha1_for("1002", "pbx.com", "MD5") == ha1
        assert await backend.get_user("1002", "elsewhere.org") is None
        with pytest.raises(UserRejected, match="no password"):
            await backend.get_user("1003", "pbx.com")


async def test_extension_database_failure_is_backend_error(tmp_path: Path) -> None:
    db = Database(tmp_path / "sdpbx.sqlite3")
    await db.open()
    store = ExtensionStore(db)
    await db.close()
    with pytest.raises(UserBackendError, match="extension lookup failed"):
        await ExtensionUserBackend(store).get_user("1001", "pbx.com")


# -- chains ---------------------------------------------------------------------------------------


class Broken:
    def __init__(self) -> None:
        self.calls = 0

    async def get_user(self, username: str, realm: str) -> SipUser | None:
        self.calls += 1
        raise UserBackendError("service down")


class Refuses:
    async def get_user(self, username: str, realm: str) -> SipUser | None:
        raise UserRejected("spam")


async def test_chain_first_hit_wins() -> None:
    first = MemoryUserBackend([SipUser("1001", "from-first")])
    second = MemoryUserBackend([SipUser("1001", "from-second"), SipUser("1002", "pw")])
    chain = ChainUserBackend([first, second])
    assert (await chain.get_user("1001", "r")) == SipUser("1001", "from-first")
    assert (await chain.get_user("1002", "r")) == SipUser("1002", "pw")
    assert await chain.get_user("1003", "r") is None
    assert await ChainUserBackend([]).get_user("1001", "r") is None


async def test_chain_rejection_is_final() -> None:
    after = Broken()
    chain = ChainUserBackend([Refuses(), after])
    with pytest.raises(UserRejected):
        await chain.get_user("1001", "r")
    assert after.calls == 0


async def test_chain_error_falls_through_then_raises() -> None:
    broken = Broken()
    chain = ChainUserBackend([broken, MemoryUserBackend([SipUser("1001", "pw")])])
    assert await chain.get_user("1001", "r") == SipUser("1001", "pw")
    with pytest.raises(UserBackendError, match="service down"):
        await chain.get_user("1002", "r")
    assert broken.calls == 2
    # A later rejection still wins over an earlier error.
    with pytest.raises(UserRejected):
        await ChainUserBackend([Broken(), Refuses()]).get_user("1001", "r")


async def test_custom_backend_satisfies_protocol() -> None:
    class Numbers:
        async def get_user(self, username: str, realm: str) -> SipUser | None:
            return SipUser(username, password=username[::-1]) if username.isdigit() else None

    backend: UserBackend = Numbers()
    chain = ChainUserBackend([backend])
    assert await chain.get_user("1234", "r") == SipUser("1234", "4321")


# -- from config ------------------------------------------------------------------------------


async def test_from_config_memory_and_plain(tmp_path: Path) -> None:
    memory = user_backend_from_config(
        MemoryUserBackendConfig(
            users=(
                MemoryUserConfig(username="1001", password="pw", display_name="A"),
                MemoryUserConfig(username="1002", password="pw", enabled=False, realm="x.org"),
            )
        )
    )
    assert await memory.get_user("1001", "pbx.com") == SipUser("1001", "pw", display_name="A")
    with pytest.raises(UserRejected):
        await memory.get_user("1002", "x.org")

    path = tmp_path / "users.txt"
    path.write_text("1003:pw3\n")
    plain = user_backend_from_config(PlainUserBackendConfig(path=str(path), realm="pbx.com"))
    assert await plain.get_user("1003", "pbx.com") == SipUser("1003", "pw3", realm="pbx.com")


async def test_from_config_extension(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="database"):
        user_backend_from_config(ExtensionUserBackendConfig())
    async with Database(tmp_path / "sdpbx.sqlite3") as db:
        store = ExtensionStore(db)
        backend = user_backend_from_config(ExtensionUserBackendConfig(), extension_store=store)
        await store.create("1001", "pw")
        user = await backend.get_user("1001", "pbx.com")
        assert user is not None and user.password == "pw"
