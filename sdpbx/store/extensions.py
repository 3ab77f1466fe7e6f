"""Console extensions: the SIP accounts an operator manages at run time.

Every read goes to the database rather than a cache, so an extension created or
disabled through the console takes effect on the very next REGISTER or INVITE,
as the console contract promises. A lookup by username is one indexed query.

``password`` is the plaintext secret; ``password_ha1`` may hold
``MD5(username:realm:password)`` instead, so an operator can provision an
account without the server ever storing the plaintext. ``realm`` ``None`` means
the extension answers in every realm the proxy serves.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

from attrs import frozen

from .database import Database, NotFoundError
from .paging import Page, check_paging

__all__ = ["Extension", "ExtensionStore"]

_COLUMNS = (
    "id, username, password, password_ha1, realm, display_name, email, enabled, "
    "allow_guest_calls, created_at, updated_at"
)
_MUTABLE = frozenset(
    {
        "username",
        "password",
        "password_ha1",
        "realm",
        "display_name",
        "email",
        "enabled",
        "allow_guest_calls",
    }
)


@frozen
class Extension:
    """One row of ``extensions``; timestamps are timezone-aware UTC."""

    id: int
    username: str
    password: str | None
    password_ha1: str | None
    realm: str | None
    display_name: str | None
    email: str | None
    enabled: bool
    allow_guest_calls: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Extension:
        return cls(
            id=row["id"],
            username=row["username"],
            password=row["password"],
            password_ha1=row["password_ha1"],
            realm=row["realm"],
            display_name=row["display_name"],
            email=row["email"],
            enabled=bool(row["enabled"]),
            allow_guest_calls=bool(row["allow_guest_calls"]),
            created_at=datetime.fromisoformat(row["created_at"]),
            updated_at=datetime.fromisoformat(row["updated_at"]),
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _like_escape(text: str) -> str:
    """Make user text literal inside ``LIKE ... ESCAPE '\\'``."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ExtensionStore:
    """CRUD and paged search over ``extensions``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, id: int) -> Extension | None:
        row = await self._db.fetchone(f"SELECT {_COLUMNS} FROM extensions WHERE id = ?", (id,))
        return None if row is None else Extension.from_row(row)

    async def get_by_username(self, username: str) -> Extension | None:
        """Exact, case-sensitive match: SIP user parts are case-sensitive."""
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM extensions WHERE username = ?", (username,)
        )
        return None if row is None else Extension.from_row(row)

    async def create(
        self,
        username: str,
        password: str | None = None,
        *,
        password_ha1: str | None = None,
        realm: str | None = None,
        display_name: str | None = None,
        email: str | None = None,
        enabled: bool = True,
        allow_guest_calls: bool = False,
    ) -> int:
        """Insert and return the new id; :class:`DuplicateError` if the username exists."""
        if not username:
            raise ValueError("username must not be empty")
        now = _now()
        result = await self._db.execute(
            "INSERT INTO extensions (username, password, password_ha1, realm, display_name, "
            "email, enabled, allow_guest_calls, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                username,
                password,
                password_ha1,
                realm,
                display_name,
                email,
                int(enabled),
                int(allow_guest_calls),
                now,
                now,
            ),
        )
        assert result.lastrowid is not None
        return result.lastrowid

    async def update(self, id: int, **changes: Any) -> Extension:
        """Change the given fields and return the updated row.

        Unknown field names raise :class:`TypeError` (like a bad keyword
        argument); a missing id raises :class:`NotFoundError`; renaming onto an
        existing username raises :class:`DuplicateError`.
        """
        unknown = sorted(set(changes) - _MUTABLE)
        if unknown:
            raise TypeError(f"cannot update extension field(s): {', '.join(unknown)}")
        if changes.get("username", "x") in ("", None):
            raise ValueError("username must not be empty")
        values = {k: int(v) if isinstance(v, bool) else v for k, v in changes.items()}
        values["updated_at"] = _now()
        assignments = ", ".join(f"{name} = :{name}" for name in values)

        def run(conn: sqlite3.Connection) -> sqlite3.Row | None:
            conn.execute(
                f"UPDATE extensions SET {assignments} WHERE id = :id", {**values, "id": id}
            )
            row: sqlite3.Row | None = conn.execute(
                f"SELECT {_COLUMNS} FROM extensions WHERE id = ?", (id,)
            ).fetchone()
            return row

        row = await self._db.transaction(run)
        if row is None:
            raise NotFoundError(f"extension {id} not found")
        return Extension.from_row(row)

    async def delete(self, id: int) -> None:
        result = await self._db.execute("DELETE FROM extensions WHERE id = ?", (id,))
        if result.rowcount == 0:
            raise NotFoundError(f"extension {id} not found")

    async def list(
        self, page: int = 1, per_page: int = 20, q: str | None = None
    ) -> Page[Extension]:
        """One page ordered by id; ``q`` matches a substring of username,
        display name or email, case-insensitively for ASCII."""
        check_paging(page, per_page)
        where = ""
        params: tuple[str, ...] = ()
        if q:
            pattern = f"%{_like_escape(q)}%"
            where = (
                " WHERE username LIKE ? ESCAPE '\\' OR display_name LIKE ? ESCAPE '\\'"
                " OR email LIKE ? ESCAPE '\\'"
            )
            params = (pattern, pattern, pattern)

        def run(conn: sqlite3.Connection) -> tuple[int, list[sqlite3.Row]]:
            total: int = conn.execute(f"SELECT COUNT(*) FROM extensions{where}", params).fetchone()[
                0
            ]
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM extensions{where} ORDER BY id LIMIT ? OFFSET ?",
                (*params, per_page, (page - 1) * per_page),
            ).fetchall()
            return total, rows

        # One transaction so the count and the rows describe the same snapshot.
        total, rows = await self._db.transaction(run)
        return Page.of([Extension.from_row(r) for r in rows], page, per_page, total)
