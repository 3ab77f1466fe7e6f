"""Fresh identifiers: branches, tags and Call-IDs.

They come from :mod:`secrets` so that they cannot be guessed: a predictable
To-tag or branch lets an off-path attacker inject a BYE or a CANCEL.
"""

from __future__ import annotations

import secrets

__all__ = ["BRANCH_COOKIE", "new_branch", "new_call_id", "new_tag"]

#: RFC 3261 §8.1.1.7: every branch we create starts with the magic cookie.
BRANCH_COOKIE = "z9hG4bK"


def new_branch() -> str:
    return BRANCH_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


def new_call_id(host: str | None = None) -> str:
    token = secrets.token_hex(12)
    return f"{token}@{host}" if host else token
