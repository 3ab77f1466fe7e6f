"""Fresh identifiers: branches, tags and Call-IDs.

They come from :mod:`secrets` so that they cannot be guessed: a predictable
To-tag or branch lets an off-path attacker inject a BYE or a CANCEL.
"""

from __future__ import annotations

import secrets

__all__ = ["BRANCH_COOKIE", "new_branch", "new_call_id", "new_tag"]

#: RFC 3261 §8.1.1.7: every branch we create starts with the magic cookie.
BRANCH_COOKIE = "z9hG4bK"


# The OS random source, read 4 KiB at a time: one getrandom() per ~200
# identifiers instead of one per identifier (a call makes about eight).
_pool = bytearray()


def _random_hex(nbytes: int) -> str:
    global _pool
    if len(_pool) < nbytes:
        _pool = bytearray(secrets.token_bytes(4096))
    chunk = _pool[:nbytes]
    del _pool[:nbytes]
    return chunk.hex()


def new_branch() -> str:
    return BRANCH_COOKIE + _random_hex(8)


def new_tag() -> str:
    return _random_hex(6)


def new_call_id(host: str | None = None) -> str:
    token = _random_hex(12)
    return f"{token}@{host}" if host else token
