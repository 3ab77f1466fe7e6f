"""The sdpbx reference PBX: RustPBX-compatible config in, a running PBX out.

    python examples/full_pbx.py                      # embedded defaults
    python examples/full_pbx.py --config pbx.toml    # a RustPBX-style TOML file
    python examples/full_pbx.py --log-level debug    # every SIP message, too

Without --config it serves SIP on UDP and TCP 127.0.0.1:5060 with its SQLite
database under ./sdpbx-data. Ctrl-C or SIGTERM stops taking new calls, gives
live ones a grace period, then exits.

This is ``sdpbx serve`` (the installed command, :mod:`sdpbx.cli`) written out
step by step; both run the same functions.
"""

from __future__ import annotations

import argparse
import sys

from sdpbx.cli import add_serve_arguments, load_or_report, run_pbx, setup_logging
from sdpbx.pbx import Pbx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_serve_arguments(parser)  # --config, --log-level, --data-dir, --grace, --uvloop
    args = parser.parse_args(argv)

    # 1. The config: a file, or the embedded defaults. Every problem is listed; exit 2.
    config = load_or_report(args.config, args.data_dir)
    if config is None:
        return 2

    # 2. Logging: time, level, logger, message; --log-level wins over log_level.
    setup_logging(args.log_level or config.log_level)

    # 3. The object graph (Pbx: database, users, registrar, router, proxy, stack),
    #    then serve until a signal. A start-up failure is one line and exit 1.
    pbx = Pbx(config)
    return run_pbx(pbx, grace=args.grace, uvloop=args.uvloop)


if __name__ == "__main__":
    sys.exit(main())
