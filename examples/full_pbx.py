"""The sdpbx reference PBX: RustPBX-compatible config in, a running PBX out.

    python examples/full_pbx.py                      # embedded defaults
    python examples/full_pbx.py --config pbx.toml    # a RustPBX-style TOML file

Without --config it serves SIP on UDP and TCP 127.0.0.1:5060 with its SQLite
database and data folders under ./sdpbx-data. Ctrl-C or SIGTERM stops taking
new calls, gives live ones a grace period, then exits.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys

import anyio

from sdpbx.config import load_config
from sdpbx.errors import ConfigError
from sdpbx.pbx import Pbx, default_config

LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


async def run(pbx: Pbx, grace: float) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(pbx.serve)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logging.getLogger("sdpbx").info(
                    "%s: draining calls for up to %.0f s", signal.Signals(signum).name, grace
                )
                await pbx.shutdown(grace)
                break
        tg.cancel_scope.cancel()


def _leaves(group: BaseExceptionGroup[OSError]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "--conf", help="RustPBX-style TOML config file")
    parser.add_argument(
        "--data-dir",
        default="sdpbx-data",
        help="where the embedded defaults keep their data (default ./sdpbx-data)",
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds live calls get to end at shutdown"
    )
    parser.add_argument(
        "--uvloop", action="store_true", help="run on uvloop (pip install 'sdpbx[uvloop]')"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config) if args.config else default_config(args.data_dir)
    except ConfigError as exc:
        print(f"error: invalid config {args.config}:", file=sys.stderr)
        for path, message in exc.errors:
            print(f"  {path}: {message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=LEVELS.get((config.log_level or "info").lower(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO: a registration storm's locator webhook
    # would write one line per phone. Its failures still reach our own logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    failed = False
    # A PBX holds tens of thousands of live transactions (each waits out its
    # 32 s timers); CPython's default gen-0 threshold of 700 allocations makes
    # full collections scan them all every few hundred calls, which showed as
    # 200+ ms stalls (p99 call setup) and a quarter of the CPU. Collect
    # rarely, and never rescan what was allocated at startup.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    try:
        anyio.run(run, Pbx(config), args.grace, backend_options={"use_uvloop": args.uvloop})
    except* OSError as group:
        # Binding a port that is taken, a certificate that cannot be read...
        for exc in _leaves(group):
            logging.getLogger("sdpbx").error("cannot start: %s", exc)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
