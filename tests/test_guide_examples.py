"""The Python examples of the guides, README and docstrings run, so they cannot drift.

Which blocks are Python:

- in ``docs/quickstart.rst`` and ``docs/guide/*.rst``: ``.. code-block:: python``
  blocks, and ``::`` literal blocks that start like Python (``import``, ``from``,
  ``def``, ``async def``, ``class``, ``@``, ``await``, ``async with``);
- in ``README.md``: `````python`` fences;
- in ``sdpbx/`` docstrings: ``.. code-block:: python`` blocks.

Every block must compile (top-level ``await`` is allowed in a fragment). A block
is *self-contained* when it uses no name it does not define or import; such a
block is run. The others are illustrative fragments (they continue an example,
``await phone.register()``): their imports are executed, so a renamed module or
class still fails here, and in the guides they must say so with
``:class: fragment`` on their ``.. code-block:: python``. A guide block marked as
a fragment that is in fact self-contained fails too: it should run. README's
fences cannot carry a class, so there the check is the self-containment alone.

Running a block: it is executed as ``__main__``, with ``anyio.run`` captured
instead of blocking and with UDP/TCP/WS transports bound to 127.0.0.1 port 0
(an example may say ``0.0.0.0:5060``; the test must neither collide with a real
server nor listen beyond loopback). Each captured ``anyio.run(main)`` is then
run: an example that ends itself (it cancels its own task group when done, as a
test would) runs to its end, and its own ``assert`` lines check what it shows;
one that serves forever is stopped once the SIP stacks it started are serving
and every one of them has answered an OPTIONS with 200 over each of its UDP and
TCP transports.
"""

from __future__ import annotations

import ast
import builtins
import re
import symtable
import textwrap
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from attrs import frozen

import sdpbx.transport
from sdpbx.stack import SipStack

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "docs" / "quickstart.rst", *sorted((ROOT / "docs" / "guide").glob("*.rst"))]
README = ROOT / "README.md"
PACKAGE = ROOT / "sdpbx"

_DIRECTIVE = re.compile(r"^(\s*)\.\. (?:code-block|code|sourcecode)::\s*(\S*)\s*$")
_OPTION = re.compile(r"^\s+:([\w-]+):\s*(.*)$")
_LITERAL = re.compile(r"^(\s*)(?!\.\. )\S.*::\s*$")
_PYTHON_START = re.compile(
    r"^(import |from \S+ import |def |async def |class |@|await |async with )"
)
_FENCE = re.compile(r"^```(\w*)\s*(.*)$")


@frozen
class Block:
    """One code block: where it is, its text, and whether its author marked it a fragment."""

    where: str
    source: str
    marked_fragment: bool
    markable: bool  # False where the format has no marker (README fences)


def _indented(lines: list[str], start: int, base: int) -> tuple[str, int]:
    """The block of lines indented deeper than ``base`` from ``start`` (blank lines kept)."""
    body: list[str] = []
    i = start
    while i < len(lines):
        line = lines[i]
        if line.strip() and len(line) - len(line.lstrip()) <= base:
            break
        body.append(line)
        i += 1
    return textwrap.dedent("\n".join(body)).strip("\n") + "\n", i


def rst_blocks(text: str, name: str, *, literals: bool = True) -> Iterator[Block]:
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        literal = _LITERAL.match(line) if literals else None
        if directive:
            base = len(directive[1])
            options: dict[str, str] = {}
            i += 1
            while i < len(lines) and (option := _OPTION.match(lines[i])):
                options[option[1]] = option[2]
                i += 1
            source, end = _indented(lines, i, base)
            if directive[2] in ("python", "python3", "py"):
                fragment = "fragment" in options.get("class", "").split()
                yield Block(f"{name}:{i}", source, fragment, markable=True)
            i = end
        elif literal:
            source, end = _indented(lines, i + 1, len(literal[1]))
            first = source.lstrip("\n").split("\n", 1)[0]
            if _PYTHON_START.match(first):
                yield Block(f"{name}:{i + 2}", source, False, markable=True)
            i = max(end, i + 1)
        else:
            i += 1


def markdown_blocks(text: str, name: str) -> Iterator[Block]:
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence and fence[1] in ("python", "py"):
            end = lines.index("```", i + 1)
            source = "\n".join(lines[i + 1 : end]) + "\n"
            yield Block(f"{name}:{i + 2}", source, False, markable=False)
            i = end + 1
        else:
            i += 1


def docstring_blocks() -> Iterator[Block]:
    """``.. code-block:: python`` in any docstring of the package (the API reference)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(
                node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            ):
                continue
            doc = ast.get_docstring(node)
            if doc is None or ".. code-block:: python" not in doc:
                continue
            owner = getattr(node, "name", "module")
            name = f"{path.relative_to(ROOT)}:{owner}"
            # Only code-block blocks: a docstring's ``::`` blocks sketch usage.
            yield from rst_blocks(doc, name, literals=False)


def all_blocks() -> list[Block]:
    blocks: list[Block] = []
    for path in GUIDES:
        blocks += rst_blocks(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    blocks += markdown_blocks(README.read_text(encoding="utf-8"), "README.md")
    blocks += docstring_blocks()
    return blocks


BLOCKS = all_blocks()
_IDS = [block.where for block in BLOCKS]


# -- what a block needs --------------------------------------------------------------------------

_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def free_names(source: str) -> set[str]:
    """Names the block uses but neither defines nor imports (nor are builtins).

    Top-level ``await`` makes a block a fragment by definition: it cannot run as a
    script, so it counts as the free name ``await``.
    """
    try:
        table = symtable.symtable(source, "<block>", "exec")
    except SyntaxError:
        return {"await"}
    defined = {
        s.get_name()
        for s in table.get_symbols()
        if s.is_assigned() or s.is_imported() or s.is_namespace()
    }
    used: set[str] = set()

    def walk(t: symtable.SymbolTable) -> None:
        for s in t.get_symbols():
            if s.is_referenced() and (t is table or s.is_global()):
                used.add(s.get_name())
        for child in t.get_children():
            walk(child)

    walk(table)
    return used - defined - set(dir(builtins)) - {"__name__", "__file__"}


def _imports_only(source: str) -> str:
    tree = ast.parse(source)
    kept = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    return ast.unparse(ast.Module(body=kept, type_ignores=[]))


# -- the tests ----------------------------------------------------------------------------------


def test_blocks_are_found() -> None:
    """The extraction itself works: the guides have runnable examples and fragments."""
    where = {block.where.split(":")[0] for block in BLOCKS}
    for guide in ("calls.rst", "registrar.rst", "routing.rst", "stack.rst", "users.rst"):
        assert f"docs/guide/{guide}" in where, guide
    assert "README.md" in where
    assert "sdpbx/proxy.py" in where  # Proxy.from_parts
    assert any(not free_names(block.source) for block in BLOCKS)
    assert any(block.marked_fragment for block in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=_IDS)
def test_block_compiles_and_is_marked_for_what_it_is(block: Block) -> None:
    compile(block.source, block.where, "exec", flags=_FLAGS, dont_inherit=True)
    free = free_names(block.source)
    if block.markable and free and not block.marked_fragment:
        pytest.fail(
            f"{block.where} uses {sorted(free)} without defining them: make it "
            "self-contained, or mark it '.. code-block:: python' with ':class: fragment'"
        )
    if block.marked_fragment and not free:
        pytest.fail(f"{block.where} is self-contained: drop ':class: fragment' so it runs")


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if free_names(b.source)], ids=lambda b: b.where
)
def test_fragment_imports_exist(block: Block) -> None:
    exec(compile(_imports_only(block.source), block.where, "exec"), {"__name__": "__fragment__"})


# -- running self-contained blocks -------------------------------------------------------------


def _loopback(cls: type[Any]) -> type[Any]:
    class Loopback(cls):  # type: ignore[misc,valid-type]
        def __init__(self, host: str, port: int, *args: Any, **kwargs: Any) -> None:
            super().__init__("127.0.0.1", 0, *args, **kwargs)

    Loopback.__name__ = Loopback.__qualname__ = cls.__name__
    return Loopback


def _options(port: int, transport: str, local_port: int) -> bytes:
    call_id = uuid.uuid4().hex
    return (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{local_port};branch=z9hG4bK{call_id[:16]}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1>;tag={call_id[:8]}\r\n"
        f"To: <sip:127.0.0.1:{port}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _status(data: bytes) -> int:
    first = data.split(b"\r\n", 1)[0].decode("latin-1")
    assert first.startswith("SIP/2.0 "), first
    return int(first.split(" ", 2)[1])


async def _probe_udp(port: int) -> int:
    async with await anyio.create_udp_socket(local_host="127.0.0.1") as sock:
        local_port = sock.extra(anyio.abc.SocketAttribute.local_port)
        await sock.sendto(_options(port, "UDP", local_port), "127.0.0.1", port)
        while True:
            data, _ = await sock.receive()
            if not data.startswith(b"SIP/2.0 1"):
                return _status(data)


async def _probe_tcp(port: int) -> int:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        local_port = stream.extra(anyio.abc.SocketAttribute.local_port)
        await stream.send(_options(port, "TCP", local_port))
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
        return _status(data)


class _Watch:
    """The stacks an example has started serving, and a wake-up for whoever waits on them."""

    def __init__(self) -> None:
        self.stacks: list[SipStack] = []
        self.changed = anyio.Event()
        self.returned = False

    async def run(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        await fn(*args)
        self.returned = True
        self.changed.set()


async def _run_example(
    watch: _Watch, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], ends_itself: bool
) -> None:
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run, fn, args)
            await watch.changed.wait()
            if ends_itself:
                return  # the task group waits for the example's own end
            for stack in watch.stacks:
                for transport in stack.transports:
                    probe = {"UDP": _probe_udp, "TCP": _probe_tcp}.get(transport.name)
                    if probe is not None:
                        assert await probe(transport.local_port) == 200, transport.name
            tg.cancel_scope.cancel()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if not free_names(b.source)], ids=lambda b: b.where
)
async def test_self_contained_block_runs(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # examples speak from the root of a clone
    for name in ("UdpTransport", "TcpTransport", "WsTransport"):
        monkeypatch.setattr(sdpbx.transport, name, _loopback(getattr(sdpbx.transport, name)))
    captured: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] = []
    monkeypatch.setattr(anyio, "run", lambda fn, *args, **_: captured.append((fn, args)))
    watch = _Watch()
    original_serve = SipStack.serve

    async def serve(self: SipStack, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(original_serve, self)
            watch.stacks.append(self)
            task_status.started()
            watch.changed.set()

    monkeypatch.setattr(SipStack, "serve", serve)

    exec(compile(block.source, block.where, "exec"), {"__name__": "__main__"})

    # An example that ends itself (it cancels its task group when done) runs to its end;
    # one that serves forever is stopped once its stacks have answered.
    ends_itself = "cancel_scope.cancel()" in block.source
    for fn, args in captured:
        watch = _Watch()
        await _run_example(watch, fn, args, ends_itself)
        assert watch.returned or watch.stacks, f"{block.where}: {fn.__name__} did nothing"
        assert watch.returned or not ends_itself, f"{block.where}: {fn.__name__} did not end"
