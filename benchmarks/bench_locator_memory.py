"""Memory and insert rate of MemoryLocator at 100,000 bindings.

Goal (DESIGN.md): <= 2 KB per binding, so 100k registered phones cost < 200 MB.
The bindings carry realistic string sizes (a Contact with parameters, a
Call-ID, a User-Agent shared by many phones of one model) and are built inside
the measured region, so the figure is what a registrar really holds.

Run: python benchmarks/bench_locator_memory.py [count]
"""

from __future__ import annotations

import sys
import time
import tracemalloc

import anyio

from sdpbx.locator import Binding, MemoryLocator

USER_AGENTS = [f"Yealink SIP-T46U 108.86.0.{n}" for n in range(20)]


def make_binding(i: int, now: float) -> Binding:
    user = f"{100000 + i}"
    host = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    port = 5060 + i % 1000
    return Binding(
        aor=f"{user}@pbx.example.com",
        contact=f'<sip:{user}@{host}:{port};transport=tcp;ob>;+sip.instance="<urn:uuid:{i:08x}>"',
        transport="TCP",
        host=host,
        port=port,
        connection_id=i,
        expires_at=now + 300 + i % 3600,
        registered_at=now,
        call_id=f"{i:016x}-a9c1f3d2b7e4@{host}",
        cseq=1 + i % 50,
        user_agent=USER_AGENTS[i % len(USER_AGENTS)],
        instance_id=f"<urn:uuid:{i:08x}-0000-4000-8000-000000000000>",
        reg_id=1,
    )


async def main(count: int) -> None:
    now = time.time()
    locator = MemoryLocator()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for i in range(count):
        await locator.save(make_binding(i, now))
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert await locator.count() == count
    print(f"bindings:            {count}")
    print(f"bytes per binding:   {(after - before) / count:.0f} (tracemalloc, index included)")

    # Insert rate without tracemalloc's overhead, bindings prebuilt.
    prebuilt = [make_binding(i, now) for i in range(count)]
    fresh = MemoryLocator()
    start = time.perf_counter()
    for binding in prebuilt:
        await fresh.save(binding)
    elapsed = time.perf_counter() - start
    print(f"inserts per second:  {count / elapsed:,.0f}")

    start = time.perf_counter()
    for binding in prebuilt[: count // 10]:
        await fresh.lookup(binding.aor, now)
    elapsed = time.perf_counter() - start
    print(f"lookups per second:  {count // 10 / elapsed:,.0f}")

    start = time.perf_counter()
    expired = fresh.expire(now + 10_000)
    elapsed = time.perf_counter() - start
    print(f"expire all:          {len(expired)} in {elapsed * 1000:.0f} ms")


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
