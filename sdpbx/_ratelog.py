"""Log lines that cannot grow with an attacker's packet rate.

A flood of malformed messages, failing connections or unreachable peers
would otherwise write one line (or one traceback) each: 90 MB of log for a
million fuzzed datagrams, and a full disk for a patient attacker. Each kind
of event gets a :class:`LogLimiter`: one line per interval at its level, the
others counted into the next line and logged at DEBUG for whoever needs
every one.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

__all__ = ["LogLimiter"]


class LogLimiter:
    """At most one log line per ``interval`` seconds; the rest are counted.

    Each line that is written carries its traceback (a handler's bugs differ);
    it says how many were suppressed since the last one, so the log shows the
    rate without growing with it.
    The clock is :func:`time.monotonic`, not the event loop's, since UDP calls
    this from a loop reader callback where no async library is detectable.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._next = -math.inf
        self._suppressed = 0

    def warning(self, msg: str, *args: Any, exc: BaseException | None = None) -> None:
        self.log(logging.WARNING, msg, *args, exc=exc)

    def info(self, msg: str, *args: Any) -> None:
        self.log(logging.INFO, msg, *args)

    def error(self, msg: str, *args: Any, exc: BaseException | None = None) -> None:
        self.log(logging.ERROR, msg, *args, exc=exc)

    def log(self, level: int, msg: str, *args: Any, exc: BaseException | None = None) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            self.logger.debug(msg, *args, exc_info=exc)
            return
        self._next = now + self.interval
        if self._suppressed:
            msg += " (%d similar suppressed)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        self.logger.log(level, msg, *args, exc_info=exc)
