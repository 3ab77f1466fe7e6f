"""Trunks: carriers and other PBXs, how calls reach them and how they are told apart.

A :class:`Trunk` is a ``[proxy.trunks.<name>]`` table made ready for use: the
destination parsed once, the inbound networks compiled. Three jobs live here
because they all hang off that one table:

- building the URI a call to the trunk is sent to (:meth:`Trunk.target_uri`);
- choosing among several trunks of one route, and the order of the others as
  failover candidates (:class:`TrunkSelector`);
- telling where a call comes from (:func:`detect_direction`) and keeping each
  trunk under its ``max_calls`` / ``max_cps`` (:class:`TrunkLimiter`).
"""

from __future__ import annotations

import collections
import ipaddress
import math
import random
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from attrs import frozen

from ..config import RouteSelect, TrunkConfig
from ..errors import ConfigError
from ..sip.errors import SipParseError
from ..sip.uri import SipUri
from .base import Direction, RouteDecision

__all__ = [
    "Trunk",
    "TrunkLimiter",
    "TrunkSelector",
    "detect_direction",
    "direction_after_route",
    "trunks_from_config",
]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_ip(text: str) -> _Address | None:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@frozen
class Trunk:
    """A trunk ready to dial: where its calls go and which sources it calls from.

    ``networks`` ``None`` stands for ``"*"`` in ``inbound_hosts`` (any source).
    ``weight`` is used by ``select = "weighted"``; the config has no such key
    yet, so every trunk weighs 1 unless built in Python.
    """

    name: str
    scheme: str
    host: str
    port: int | None = None
    transport: str | None = None
    username: str | None = None
    password: str | None = None
    networks: tuple[_Network, ...] | None = ()
    max_calls: int | None = None
    max_cps: float | None = None
    weight: float = 1.0

    @classmethod
    def from_config(cls, name: str, cfg: TrunkConfig) -> Trunk:
        """Parse ``dest`` (a SIP URI or ``host[:port]``) and ``inbound_hosts``."""
        dest = cfg.dest.strip()
        text = dest if dest.startswith(("sip:", "sips:")) else f"sip:{dest}"
        try:
            uri = SipUri.parse(text)
        except SipParseError as exc:
            raise ConfigError([(f"proxy.trunks.{name}.dest", str(exc))]) from None
        transport = cfg.transport or (uri.transport or "").lower() or None
        networks: list[_Network] = []
        any_source = False
        for entry in cfg.inbound_hosts:
            if entry.strip() == "*":
                any_source = True
            else:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        weight = getattr(cfg, "weight", None)
        return cls(
            name=name,
            scheme=uri.scheme,
            host=uri.host,
            port=uri.port,
            transport=transport,
            username=cfg.username,
            password=cfg.password,
            networks=None if any_source else tuple(networks),
            max_calls=cfg.max_calls,
            max_cps=cfg.max_cps,
            weight=1.0 if weight is None else float(weight),
        )

    def target_uri(self, user: str | None) -> str:
        """``sip:{user}@{host:port};transport=...``: the Request-URI of a call via this trunk."""
        params: tuple[tuple[str, str | None], ...] = ()
        if self.transport:
            params = (("transport", self.transport.lower()),)
        return str(SipUri(self.scheme, self.host, user or None, None, self.port, params))

    def accepts_from(self, ip: _Address) -> bool:
        """Whether a request from ``ip`` is this trunk calling us."""
        if self.networks is None:
            return True
        return any(ip.version == net.version and ip in net for net in self.networks)


def trunks_from_config(trunks: Mapping[str, TrunkConfig]) -> dict[str, Trunk]:
    """Every ``[proxy.trunks.<name>]`` as a :class:`Trunk`, in config order."""
    return {name: Trunk.from_config(name, cfg) for name, cfg in trunks.items()}


# -- direction ---------------------------------------------------------------------------------


def detect_direction(
    source_ip: str,
    trunks: Mapping[str, Trunk] | Iterable[Trunk],
    is_local_caller: bool,
    *,
    callee_is_local: bool = True,
) -> tuple[Direction, str | None]:
    """Which way a new call goes, before it is routed.

    - the source IP is in a trunk's ``inbound_hosts``: ``("inbound", trunk)``
      (the first such trunk in config order);
    - the caller is none of ours (an unauthenticated guest from elsewhere):
      ``("inbound", None)``;
    - one of ours calling a callee outside our realms: ``("outbound", None)``;
    - otherwise ``("internal", None)``. Routing may still send an internal-looking
      call to a trunk; :func:`direction_after_route` corrects that.
    """
    ip = _parse_ip(source_ip)
    if ip is not None:
        for trunk in trunks.values() if isinstance(trunks, Mapping) else trunks:
            if trunk.accepts_from(ip):
                return ("inbound", trunk.name)
    if not is_local_caller:
        return ("inbound", None)
    if not callee_is_local:
        return ("outbound", None)
    return ("internal", None)


def direction_after_route(direction: Direction, decision: RouteDecision) -> Direction:
    """``internal`` becomes ``outbound`` when the chosen route goes out through a trunk."""
    if direction == "internal" and decision.action == "forward" and decision.target_trunks:
        return "outbound"
    return direction


# -- selection ---------------------------------------------------------------------------------


class TrunkSelector:
    """Orders a route's trunks: the chosen one first, then the failover candidates.

    - ``rr``: round robin per route; the others follow in ``dest`` order after
      the chosen one (wrapping round), so the failover order rotates too.
    - ``random``: a random order.
    - ``hash``: the first trunk is fixed by a stable hash (CRC-32) of the
      caller, so one caller always leaves through the same carrier while it
      is up; the rest follow as for ``rr``.
    - ``weighted``: a random order where a trunk's chance to come before
      another is proportional to its weight (a trunk of weight 0 comes last).

    ``rng`` can be seeded for reproducible tests.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._counters: dict[object, int] = collections.defaultdict(int)

    def order(
        self,
        key: object,
        names: Sequence[str],
        mode: RouteSelect,
        *,
        caller: str = "",
        weights: Sequence[float] | None = None,
    ) -> list[str]:
        """``names`` in the order to try them; ``key`` identifies the route (for ``rr``)."""
        count = len(names)
        if count <= 1:
            return list(names)
        if mode == "rr":
            start = self._counters[key] % count
            self._counters[key] = start + 1
            return _rotate(names, start)
        if mode == "hash":
            return _rotate(names, zlib.crc32(caller.encode("utf-8", "surrogateescape")) % count)
        if mode == "random":
            shuffled = list(names)
            self._rng.shuffle(shuffled)
            return shuffled
        if mode == "weighted":
            return self._weighted(names, weights or [1.0] * count)
        raise ValueError(f"unknown select mode {mode!r}")

    def _weighted(self, names: Sequence[str], weights: Sequence[float]) -> list[str]:
        # Efraimidis-Spirakis: sort by u ** (1 / w), which draws without
        # replacement with probabilities proportional to the weights.
        keyed: list[tuple[float, int, str]] = []
        for index, (name, weight) in enumerate(zip(names, weights, strict=True)):
            u = self._rng.random()
            score = u ** (1.0 / weight) if weight > 0 else -1.0
            keyed.append((score, -index, name))
        keyed.sort(reverse=True)
        return [name for _, _, name in keyed]


def _rotate(names: Sequence[str], start: int) -> list[str]:
    return [*names[start:], *names[:start]]


# -- limits ------------------------------------------------------------------------------------


class _Limits(Protocol):
    @property
    def max_calls(self) -> int | None: ...

    @property
    def max_cps(self) -> float | None: ...


class TrunkLimiter:
    """Keeps each trunk under its ``max_calls`` (concurrent) and ``max_cps``.

    The B2BUA asks :meth:`try_acquire` before dialling a trunk and calls
    :meth:`release` once that leg is over; a refusal means "try the next
    trunk" (or 503 when none is left), as a carrier would refuse the excess
    anyway, often by blocking the account.

    Calls per second use a sliding window: with ``max_cps = 10`` at most 10
    calls start in any 1 s span. A rate below 1 (``0.2``) widens the window
    instead (one call per 5 s). Memory per trunk is bounded by the limit.
    Time is passed in, so tests need no clock.
    """

    def __init__(self, trunks: Mapping[str, _Limits] | None = None) -> None:
        self._limits: dict[str, tuple[int | None, float | None]] = {}
        self._active: dict[str, int] = collections.defaultdict(int)
        self._starts: dict[str, collections.deque[float]] = {}
        self.update(trunks or {})

    def update(self, trunks: Mapping[str, _Limits]) -> None:
        """Take new limits (a config reload) keeping the calls in progress counted."""
        self._limits = {name: (t.max_calls, t.max_cps) for name, t in trunks.items()}

    def active(self, trunk: str) -> int:
        """Calls through ``trunk`` now."""
        return self._active.get(trunk, 0)

    def try_acquire(self, trunk: str, now: float) -> bool:
        """Count a new call on ``trunk`` if its limits allow it; ``False`` if not."""
        max_calls, max_cps = self._limits.get(trunk, (None, None))
        if max_calls is not None and self._active.get(trunk, 0) >= max_calls:
            return False
        if max_cps is not None:
            window, allowed = (1.0, math.floor(max_cps)) if max_cps >= 1 else (1.0 / max_cps, 1)
            starts = self._starts.get(trunk)
            if starts is None:
                starts = self._starts[trunk] = collections.deque()
            while starts and starts[0] <= now - window:
                starts.popleft()
            if len(starts) >= allowed:
                return False
            starts.append(now)
        self._active[trunk] += 1
        return True

    def release(self, trunk: str) -> None:
        """A call counted by :meth:`try_acquire` is over."""
        count = self._active.get(trunk, 0)
        if count <= 1:
            self._active.pop(trunk, None)
        else:
            self._active[trunk] = count - 1
