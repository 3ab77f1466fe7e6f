"""One page of a listing, in the console's JSON shape.

The console answers every list endpoint with ``{items, current_page, per_page,
total_items, total_pages, has_prev, has_next}``; building that shape once here
keeps every store's ``list()`` consistent and lets the API layer serialise a
:class:`Page` without recomputing anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from attrs import field, frozen

__all__ = ["Page", "check_paging"]

T = TypeVar("T")


def check_paging(page: int, per_page: int) -> None:
    """Reject page numbers the SQL ``OFFSET`` would silently misread."""
    if page < 1:
        raise ValueError(f"page must be >= 1, got {page}")
    if per_page < 1:
        raise ValueError(f"per_page must be >= 1, got {per_page}")


@frozen
class Page(Generic[T]):
    """A slice of a listing plus what a client needs to walk the rest."""

    items: tuple[T, ...] = field(converter=tuple)
    current_page: int
    per_page: int
    total_items: int

    @classmethod
    def of(cls, items: Sequence[T], page: int, per_page: int, total_items: int) -> Page[T]:
        return cls(items, page, per_page, total_items)

    @property
    def total_pages(self) -> int:
        # Ceiling division: an empty listing has 0 pages, as sea-orm (RustPBX) reports.
        return -(-self.total_items // self.per_page)

    @property
    def has_prev(self) -> bool:
        return self.current_page > 1

    @property
    def has_next(self) -> bool:
        return self.current_page < self.total_pages
