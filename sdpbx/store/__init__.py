"""Persistent state in SQLite: the database, its migrations and the stores over it."""

from __future__ import annotations

from .database import (
    MIGRATIONS,
    Database,
    DuplicateError,
    ExecResult,
    NotFoundError,
    StoreError,
)
from .extensions import Extension, ExtensionStore
from .paging import Page

__all__ = [
    "MIGRATIONS",
    "Database",
    "DuplicateError",
    "ExecResult",
    "Extension",
    "ExtensionStore",
    "NotFoundError",
    "Page",
    "StoreError",
]
