"""Digest nonces: stateless to issue and verify, bounded state to stop replays.

A nonce is an HMAC over its issue time and a random salt, so any nonce we
issued verifies without a table, survives a restart that keeps the secret,
and carries its own age. The only state is the highest nonce-count seen per
(nonce, user), kept in issue order within ``max_tracked`` entries: an
evicted nonce is answered *stale*, which costs a client one round trip and
never costs us memory.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict

__all__ = ["NonceManager", "NonceStatus"]


class NonceStatus(enum.Enum):
    VALID = "valid"
    #: Ours and untampered, but too old (or its count was forgotten): re-challenge
    #: with ``stale=true`` so the client retries without asking its user.
    STALE = "stale"
    #: Not a nonce we issued.
    INVALID = "invalid"
    #: The nonce-count did not increase: a replayed request.
    REPLAY = "replay"


_STAMP = struct.Struct(">q")
_SALT_LEN = 8
_MAC_LEN = 16
_RAW_LEN = _STAMP.size + _SALT_LEN + _MAC_LEN  # 32 bytes -> 43 base64 characters
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{43}")
#: The count recorded for a qop-less use: above any 8-hex-digit nc, so every
#: later use of that nonce by that user is a replay.
_SINGLE_USE = 0x1_0000_0000


class NonceManager:
    """Issues HMAC-signed nonces and tracks their nonce-counts within a bound.

    ``now`` must be wall-clock seconds if nonces should stay valid across a
    restart; any clock works otherwise. After a restart the count table is
    empty, so a request captured shortly before it could be replayed once
    within ``lifetime``; keep ``lifetime`` short.
    """

    def __init__(self, secret: bytes, lifetime: float = 300.0, max_tracked: int = 100_000) -> None:
        if len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes")
        if lifetime <= 0 or max_tracked < 1:
            raise ValueError("lifetime and max_tracked must be positive")
        self._key = hmac.new(secret, b"sdpbx digest nonce", hashlib.sha256).digest()
        self.lifetime = lifetime
        self.max_tracked = max_tracked
        #: A fixed opaque value derived from the secret, so it too survives restarts.
        self.opaque = hmac.new(secret, b"sdpbx digest opaque", hashlib.sha256).hexdigest()[:32]
        # (nonce, user) -> (issue time in ms, highest nonce-count seen), in
        # first-use order. Per user, so one account's counts on a nonce it saw
        # cannot turn another account's first use of that nonce into a replay.
        self._seen: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()
        # Every evicted nonce was issued at or before this time (ms).
        self._horizon = -(2**63)

    def __len__(self) -> int:
        return len(self._seen)

    def issue(self, now: float) -> str:
        payload = _STAMP.pack(int(now * 1000)) + secrets.token_bytes(_SALT_LEN)
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_LEN]
        return base64.urlsafe_b64encode(payload + mac).decode("ascii")[:-1]

    def _issued_at(self, nonce: str) -> int | None:
        """The nonce's issue time in ms, or None when it is not one of ours."""
        if not _NONCE_RE.fullmatch(nonce):
            return None
        raw = base64.urlsafe_b64decode(nonce + "=")
        # Several strings decode to the same bytes; accept only the canonical one.
        if base64.urlsafe_b64encode(raw).decode("ascii")[:-1] != nonce:
            return None
        payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_LEN]
        if not hmac.compare_digest(mac, expected):
            return None
        return int(_STAMP.unpack_from(payload)[0])

    def is_ours(self, nonce: str) -> bool:
        """Whether we issued ``nonce`` (an HMAC, no table): a cheap first filter."""
        return self._issued_at(nonce) is not None

    def check(
        self, nonce: str, nc: int | None, now: float, *, user: str = "", record: bool = True
    ) -> NonceStatus:
        """Classify a nonce as presented by ``user`` with ``nc``.

        ``nc`` is None when the client sent no qop: such a nonce is good for one
        request only (there is no count to tell a replay from a new request).
        With ``record=False`` the count table is left alone: a server checks
        first, verifies the digest, and records only a request that proved the
        password, so a forged request cannot burn a legitimate client's counts.
        """
        issued = self._issued_at(nonce)
        if issued is None:
            return NonceStatus.INVALID
        age = now - issued / 1000
        if not -self.lifetime <= age <= self.lifetime:
            return NonceStatus.STALE
        key = (nonce, user)
        count = _SINGLE_USE if nc is None else nc
        entry = self._seen.get(key)
        if entry is None:
            if issued <= self._horizon:
                return NonceStatus.STALE
            if record:
                self._track(key, issued, count, now)
            return NonceStatus.VALID
        if nc is None or nc <= entry[1]:
            return NonceStatus.REPLAY
        if record:
            self._seen[key] = (issued, nc)
        return NonceStatus.VALID

    def expire(self, now: float) -> None:
        """Forget counts of nonces past their lifetime (they answer *stale* anyway)."""
        seen = self._seen
        expired_before = (now - self.lifetime) * 1000
        while seen:
            oldest, (oldest_issued, _) = next(iter(seen.items()))
            if oldest_issued >= expired_before:
                break
            del seen[oldest]
            self._horizon = max(self._horizon, oldest_issued)
        if not seen:
            self._seen = OrderedDict()  # a dict keeps its peak size otherwise

    def _track(self, key: tuple[str, str], issued: int, nc: int, now: float) -> None:
        seen = self._seen
        expired_before = (now - self.lifetime) * 1000
        while seen:
            oldest, (oldest_issued, _) = next(iter(seen.items()))
            if oldest_issued >= expired_before and len(seen) < self.max_tracked:
                break
            del seen[oldest]
            self._horizon = max(self._horizon, oldest_issued)
        seen[key] = (issued, nc)
