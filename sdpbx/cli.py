"""The sdpbx command: run the reference PBX, or check a config file first.

    sdpbx serve [--config FILE] [--log-level LEVEL]   # Ctrl-C or SIGTERM drains and exits
    sdpbx check-config FILE                           # every problem, one per line

``examples/full_pbx.py`` is the same server written out step by step; both are
built from the functions here, so what one does the other does: logging set up
from ``log_level``, start-up failures reduced to one line each (``cannot
start: cannot listen on UDP 127.0.0.1:5060: Address already in use``) and exit
code 1, a config error listed key by key with exit code 2.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import anyio

from .config import Config, ExtensionUserBackendConfig, config_warnings, load_config
from .errors import ConfigError
from .pbx import Pbx, default_config

__all__ = [
    "LOG_LEVELS",
    "add_serve_arguments",
    "check_config",
    "load_or_report",
    "main",
    "root_causes",
    "run_pbx",
    "setup_logging",
    "tls_problems",
]

log = logging.getLogger("sdpbx")

#: ``log_level`` values (RustPBX's, case-insensitive) and the logging levels they mean.
LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: What a newcomer is told when no phone can register (see :func:`_hint_without_users`).
_USERS_HINT = (
    "no users: the extensions table of %s is empty, so no phone can register or call. "
    "For users 1001 and 1002 (password 'secret') run with --config examples/pbx.toml; "
    "docs/guide/users.rst shows every way to add users"
)


def setup_logging(level: str | None, stream: TextIO | None = None) -> None:
    """Log to stderr with time, level, logger and message, at ``level`` (INFO if unset).

    The trace of every SIP message is the ``sdpbx.wire`` logger at DEBUG.
    """
    logging.basicConfig(
        level=LOG_LEVELS.get((level or "info").lower(), logging.INFO),
        format=_FORMAT,
        stream=stream or sys.stderr,
    )
    # httpx logs every request at INFO: a registration storm's locator webhook
    # would write one line per phone. Its failures still reach our own logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sdpbx serve`` (and of ``examples/full_pbx.py``)."""
    parser.add_argument("--config", "--conf", help="RustPBX-style TOML config file")
    parser.add_argument(
        "--log-level",
        choices=sorted(LOG_LEVELS),
        type=str.lower,
        help="overrides the config's log_level (default info)",
    )
    parser.add_argument(
        "--data-dir",
        default="sdpbx-data",
        help="where the embedded defaults (no --config) keep their data (default ./sdpbx-data)",
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds live calls get to end at shutdown"
    )
    parser.add_argument(
        "--uvloop", action="store_true", help="run on uvloop (pip install 'sdpbx[uvloop]')"
    )


def load_or_report(path: str | None, data_dir: str = "sdpbx-data") -> Config | None:
    """The config from ``path`` (the embedded defaults without one), or ``None``
    after printing every problem to stderr."""
    if path is None:
        return default_config(data_dir)
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: invalid config {path}:", file=sys.stderr)
        for key, message in exc.errors:
            print(f"  {key}: {message}", file=sys.stderr)
        return None


def tls_problems(config: Config) -> list[tuple[str, str]]:
    """The certificate and key a config names, loaded as the server will: a
    missing file is reported with its path (``ssl`` itself names none)."""
    proxy = config.proxy
    cert, key = proxy.ssl_certificate, proxy.ssl_private_key
    problems: list[tuple[str, str]] = []
    for name, path in (("proxy.ssl_certificate", cert), ("proxy.ssl_private_key", key)):
        if path is None:
            continue
        try:
            Path(path).open("rb").close()
        except OSError as exc:
            problems.append((name, f"cannot read {path}: {exc.strerror or exc}"))
    if cert is not None and key is not None and not problems:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ValueError) as exc:
            problems.append(("proxy.ssl_certificate", f"cannot load {cert} with {key}: {exc}"))
    return problems


def check_config(path: str, out: TextIO | None = None) -> int:
    """Print every problem of a config file, ``key: message`` one per line, then
    what it would warn about at start-up; 1 if there is any error, else 0."""
    out = out or sys.stdout
    try:
        config = load_config(path)
    except ConfigError as exc:
        for key, message in exc.errors:
            print(f"{key}: {message}", file=out)
        return 1
    problems = tls_problems(config)
    for key, message in problems:
        print(f"{key}: {message}", file=out)
    for message in config_warnings(config):
        print(f"warning: {message}", file=out)
    if problems:
        return 1
    print(f"{path}: OK", file=out)
    return 0


def root_causes(exc: BaseException) -> list[BaseException]:
    """The leaves of nested exception groups: what actually went wrong."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in root_causes(inner)]
    return [exc]


async def _hint_without_users(pbx: Pbx) -> None:
    """Warn when every user backend is the (empty) extensions table."""
    backends = pbx.config.proxy.user_backends
    if not backends or not all(isinstance(b, ExtensionUserBackendConfig) for b in backends):
        return
    try:
        page = await pbx.extensions.list(per_page=1)
    except Exception as exc:
        log.debug("cannot count extensions: %s", exc)
        return
    if page.total_items == 0:
        log.warning(_USERS_HINT, pbx.db.path)


async def serve_until_signalled(
    pbx: Pbx, grace: float, on_started: Callable[[], object] = lambda: None
) -> None:
    """Serve until SIGINT or SIGTERM, then drain calls for up to ``grace`` s."""
    async with anyio.create_task_group() as tg:
        await tg.start(pbx.serve)
        on_started()
        await _hint_without_users(pbx)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s: draining calls for up to %.0f s", signal.Signals(signum).name, grace)
                await pbx.shutdown(grace)
                break
        tg.cancel_scope.cancel()


def run_pbx(pbx: Pbx, *, grace: float = 10.0, uvloop: bool = False) -> int:
    """Run ``pbx`` until a signal; 0 after a clean shutdown, 1 if it could not
    start (each root cause logged as one line) or stopped on an error."""
    problems = tls_problems(pbx.config)
    if problems:
        for key, message in problems:
            log.error("cannot start: %s: %s", key, message)
        return 1
    # A PBX holds tens of thousands of live transactions (each waits out its
    # 32 s timers); CPython's default gen-0 threshold of 700 allocations makes
    # full collections scan them all every few hundred calls, which showed as
    # 200+ ms stalls (p99 call setup) and a quarter of the CPU. Collect
    # rarely, and never rescan what was allocated at startup.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    started: list[bool] = []
    try:
        anyio.run(
            serve_until_signalled,
            pbx,
            grace,
            lambda: started.append(True),
            backend_options={"use_uvloop": uvloop},
        )
    except Exception as exc:
        # A port that is taken, a file that cannot be read: arrive wrapped in the
        # task groups' exception groups, dozens of lines for one cause.
        for cause in root_causes(exc):
            text = str(cause) if isinstance(cause, OSError) else f"{type(cause).__name__}: {cause}"
            log.error("%s: %s", "stopped" if started else "cannot start", text)
            log.debug("the traceback of that failure", exc_info=cause)
        return 1
    return 0


def _serve(args: argparse.Namespace) -> int:
    config = load_or_report(args.config, args.data_dir)
    if config is None:
        return 2
    setup_logging(args.log_level or config.log_level)
    return run_pbx(Pbx(config), grace=args.grace, uvloop=args.uvloop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdpbx", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the PBX (without --config: SIP on 127.0.0.1:5060, data in ./sdpbx-data)",
        description="Run the PBX until Ctrl-C or SIGTERM.",
    )
    add_serve_arguments(serve)
    check = commands.add_parser(
        "check-config",
        help="list every problem of a config file; exit 1 if there are errors",
        description="Print every error (key: message) and start-up warning of a config file.",
    )
    check.add_argument("file", help="RustPBX-style TOML config file")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
