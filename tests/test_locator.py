"""Bindings: lookup order, expiry without tasks, connection loss, events, restart."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import attrs
import pytest

from sdpbx.locator import Binding, Locator, LocatorEvent, MemoryLocator, SqliteLocator
from sdpbx.store import Database
from sdpbx.transport.base import Peer

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0


def binding(
    contact: str = "<sip:1001@192.0.2.10:5060>",
    *,
    aor: str = "1001@pbx.com",
    expires: float = 60,
    registered_at: float = T0,
    **kw: object,
) -> Binding:
    fields: dict[str, object] = {
        "transport": "UDP",
        "host": "198.51.100.7",
        "port": 40000,
        "call_id": "cid-1",
        "cseq": 1,
    }
    fields.update(kw)
    return Binding(
        aor=aor,
        contact=contact,
        expires_at=registered_at + expires,
        registered_at=registered_at,
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["memory", "sqlite"])
async def locator(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Locator]:
    if request.param == "memory":
        yield MemoryLocator()
        return
    async with Database(tmp_path / "loc.sqlite3") as db:
        sqlite = SqliteLocator(db)
        await sqlite.load(T0)
        yield sqlite


def record(locator: Locator) -> list[LocatorEvent]:
    events: list[LocatorEvent] = []
    locator.subscribe(events.append)
    return events


# -- Binding ---------------------------------------------------------------------------


def test_binding_properties() -> None:
    b = binding(expires=30.2, connection_id=7, transport="TCP")
    assert b.destination == "198.51.100.7:40000"
    assert b.peer == Peer("TCP", "198.51.100.7", 40000, 7)
    assert b.expires_in(T0) == 31
    assert b.expires_in(T0 + 30.2) == 0
    assert b.expires_in(T0 + 100) == 0
    assert binding(host="2001:db8::1", port=5062).destination == "[2001:db8::1]:5062"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        b.port = 1  # type: ignore[misc]


# -- save / lookup -------------------------------------------------------------------


async def test_lookup_orders_by_q_then_recency(locator: Locator) -> None:
    await locator.save(binding("<sip:a@h>", q=0.5))
    await locator.save(binding("<sip:b@h>", q=1.0))
    await locator.save(binding("<sip:c@h>", q=0.5, registered_at=T0 + 1))
    await locator.save(binding("<sip:other@h>", aor="1002@pbx.com"))
    found = await locator.lookup("1001@pbx.com", T0 + 2)
    assert [b.contact for b in found] == ["<sip:b@h>", "<sip:c@h>", "<sip:a@h>"]
    assert await locator.lookup("nobody@pbx.com", T0) == []
    assert await locator.count() == 4


async def test_lookup_skips_expired_but_bindings_keeps_them(locator: Locator) -> None:
    await locator.save(binding("<sip:short@h>", expires=10))
    await locator.save(binding("<sip:long@h>", expires=100))
    assert [b.contact for b in await locator.lookup("1001@pbx.com", T0 + 10)] == ["<sip:long@h>"]
    assert len(await locator.bindings("1001@pbx.com")) == 2


async def test_save_replaces_same_contact(locator: Locator) -> None:
    await locator.save(binding(cseq=1))
    await locator.save(binding(cseq=2, expires=120))
    (only,) = await locator.bindings("1001@pbx.com")
    assert (only.cseq, only.expires_at) == (2, T0 + 120)
    assert await locator.count() == 1


async def test_remove_and_remove_aor(locator: Locator) -> None:
    await locator.save(binding("<sip:a@h>"))
    await locator.save(binding("<sip:b@h>"))
    await locator.save(binding("<sip:c@h>", aor="1002@pbx.com"))
    removed = await locator.remove("1001@pbx.com", "<sip:a@h>", now=T0)
    assert removed is not None
    assert removed.contact == "<sip:a@h>"
    assert await locator.remove("1001@pbx.com", "<sip:a@h>") is None
    assert [b.contact for b in await locator.remove_aor("1001@pbx.com", now=T0)] == ["<sip:b@h>"]
    assert await locator.remove_aor("1001@pbx.com") == []
    assert await locator.count() == 1
    # A removed binding does not come back through the expiry heap.
    assert locator.next_deadline() == T0 + 60
    assert [b.aor for b in locator.expire(T0 + 60)] == ["1002@pbx.com"]


# -- expiry ------------------------------------------------------------------------------


async def test_expiry_via_deadline(locator: Locator) -> None:
    assert locator.next_deadline() is None
    await locator.save(binding("<sip:a@h>", expires=30))
    await locator.save(binding("<sip:b@h>", expires=10))
    await locator.save(binding("<sip:c@h>", expires=20))
    assert locator.next_deadline() == T0 + 10
    assert locator.expire(T0 + 9.999) == []
    assert [b.contact for b in locator.expire(T0 + 20)] == ["<sip:b@h>", "<sip:c@h>"]
    assert locator.next_deadline() == T0 + 30
    assert await locator.count() == 1
    assert [b.contact for b in locator.expire(T0 + 1000)] == ["<sip:a@h>"]
    assert locator.next_deadline() is None
    assert await locator.count() == 0


async def test_refresh_moves_the_deadline(locator: Locator) -> None:
    await locator.save(binding(expires=10))
    await locator.save(binding(expires=60, registered_at=T0 + 5, cseq=2))
    # The stale heap entry for T0+10 is skipped, not honoured.
    assert locator.next_deadline() == T0 + 65
    assert locator.expire(T0 + 10) == []
    assert len(await locator.lookup("1001@pbx.com", T0 + 10)) == 1


async def test_many_refreshes_keep_heap_bounded() -> None:
    locator = MemoryLocator()
    for n in range(5000):
        await locator.save(binding(registered_at=T0 + n, cseq=n))
    assert len(locator._heap) <= 2 * len(locator) + 1024
    assert locator.next_deadline() == T0 + 4999 + 60
    assert [b.cseq for b in locator.expire(T0 + 10_000)] == [4999]


# -- connection loss ------------------------------------------------------------------------


async def test_connection_closed(locator: Locator) -> None:
    await locator.save(binding("<sip:a@h;transport=tcp>", transport="TCP", connection_id=1))
    await locator.save(binding("<sip:b@h;transport=tcp>", transport="TCP", connection_id=1))
    await locator.save(binding("<sip:c@h;transport=tcp>", transport="TCP", connection_id=2))
    await locator.save(binding("<sip:d@h>"))  # UDP
    closed = locator.connection_closed(1, now=T0 + 1)
    assert sorted(b.contact for b in closed) == [
        "<sip:a@h;transport=tcp>",
        "<sip:b@h;transport=tcp>",
    ]
    assert locator.connection_closed(1) == []
    assert locator.connection_closed(99) == []
    remaining = await locator.lookup("1001@pbx.com", T0 + 1)
    assert sorted(b.contact for b in remaining) == ["<sip:c@h;transport=tcp>", "<sip:d@h>"]


async def test_rebinding_on_new_connection_survives_old_close(locator: Locator) -> None:
    await locator.save(binding(transport="TCP", connection_id=1))
    await locator.save(binding(transport="TCP", connection_id=2, registered_at=T0 + 1))
    assert locator.connection_closed(1) == []
    assert [b.connection_id for b in await locator.bindings("1001@pbx.com")] == [2]
    assert len(locator.connection_closed(2)) == 1
    assert await locator.count() == 0


# -- events -------------------------------------------------------------------------------


async def test_events(locator: Locator) -> None:
    events = record(locator)
    first = binding("<sip:a@h>", transport="TCP", connection_id=5)
    await locator.save(first)
    refresh = binding("<sip:a@h>", transport="TCP", connection_id=5, registered_at=T0 + 30)
    await locator.save(refresh)
    await locator.save(binding("<sip:b@h>", expires=10))
    await locator.save(binding("<sip:c@h>"))
    await locator.remove("1001@pbx.com", "<sip:c@h>", now=T0 + 2)
    locator.expire(T0 + 10)
    locator.connection_closed(5, now=T0 + 11)
    summary = [(e.event, e.timestamp, e.binding.contact, e.refreshed) for e in events]
    assert summary == [
        ("registered", T0, "<sip:a@h>", False),
        ("registered", T0 + 30, "<sip:a@h>", True),
        ("registered", T0, "<sip:b@h>", False),
        ("registered", T0, "<sip:c@h>", False),
        ("unregistered", T0 + 2, "<sip:c@h>", False),
        ("offline", T0 + 10, "<sip:b@h>", False),
        ("offline", T0 + 11, "<sip:a@h>", False),
    ]
    assert events[1].binding == refresh


async def test_unsubscribe_and_failing_listener(
    locator: Locator, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def broken(event: LocatorEvent) -> None:
        raise RuntimeError("listener bug")

    locator.subscribe(broken)
    unsubscribe = locator.subscribe(lambda e: seen.append(e.event))
    with caplog.at_level(logging.ERROR, logger="sdpbx.locator"):
        await locator.save(binding("<sip:a@h>"))
    assert "listener bug" in caplog.text
    assert seen == ["registered"]
    assert await locator.count() == 1
    unsubscribe()
    unsubscribe()
    await locator.remove_aor("1001@pbx.com")
    assert seen == ["registered"]


# -- SQLite persistence ---------------------------------------------------------------------


async def test_sqlite_restart_keeps_bindings_and_drops_expired(tmp_path: Path) -> None:
    path = tmp_path / "restart.sqlite3"
    full = binding(
        '<sip:1001@10.0.0.5:5062;transport=tcp;ob>;+sip.instance="<urn:uuid:abc>"',
        transport="TCP",
        connection_id=42,
        q=0.7,
        path=("<sip:edge1.example;lr>", "<sip:edge2.example;lr>"),
        user_agent="Zoiper rv2.10",
        instance_id="<urn:uuid:abc>",
        reg_id=1,
        call_id="abc@host",
        cseq=9,
        expires=3600,
    )
    async with Database(path) as db:
        locator = SqliteLocator(db)
        assert await locator.load(T0) == 0
        await locator.save(full)
        await locator.save(binding("<sip:gone@h>", expires=100))
        await locator.save(binding("<sip:x@h>", aor="1002@pbx.com", expires=50))

    async with Database(path) as db:
        locator = SqliteLocator(db)
        events = record(locator)
        assert await locator.load(T0 + 100) == 1
        assert events == []  # restored bindings were already announced
        (restored,) = await locator.lookup("1001@pbx.com", T0 + 100)
        assert restored == attrs.evolve(full, connection_id=None)
        assert await locator.count() == 1
        rows = await db.fetchall("SELECT contact FROM locations")
        assert [r["contact"] for r in rows] == [full.contact]
        assert locator.next_deadline() == T0 + 3600


async def test_sqlite_sync_removals_reach_the_table(tmp_path: Path) -> None:
    async with Database(tmp_path / "sync.sqlite3") as db:
        locator = SqliteLocator(db)
        await locator.load(T0)
        await locator.save(binding("<sip:a@h>", expires=10))
        await locator.save(binding("<sip:b@h>", transport="TCP", connection_id=3, expires=99))
        await locator.save(binding("<sip:c@h>", expires=99))
        await locator.remove("1001@pbx.com", "<sip:c@h>")
        assert len(locator.expire(T0 + 10)) == 1
        assert len(locator.connection_closed(3)) == 1
        # Re-registering right after the expiry must not be undone by the queued delete.
        await locator.save(binding("<sip:a@h>", registered_at=T0 + 11, cseq=2))
        await locator.flush()
        rows = await db.fetchall("SELECT contact, cseq FROM locations")
        assert [(r["contact"], r["cseq"]) for r in rows] == [("<sip:a@h>", 2)]


async def test_sqlite_concurrent_saves(tmp_path: Path) -> None:
    path = tmp_path / "concurrent.sqlite3"
    async with Database(path) as db:
        locator = SqliteLocator(db)
        await locator.load(T0)
        async with anyio.create_task_group() as tg:
            for n in range(200):
                tg.start_soon(locator.save, binding(f"<sip:{n}@h>", aor=f"{n % 20}@pbx.com"))
            # The same contact saved concurrently: the last save wins, in memory and on disk.
            for cseq in range(1, 21):
                tg.start_soon(locator.save, binding("<sip:race@h>", cseq=cseq))
        assert await locator.count() == 201
        (race,) = [b for b in await locator.bindings("1001@pbx.com") if b.contact == "<sip:race@h>"]
        row = await db.fetchone("SELECT cseq FROM locations WHERE contact = '<sip:race@h>'")
        assert row is not None
        assert row["cseq"] == race.cseq
    async with Database(path) as db:
        again = SqliteLocator(db)
        assert await again.load(T0) == 201
        assert len(await again.lookup("7@pbx.com", T0)) == 10
