"""Who is this user? The interface the registrar and the proxy authenticate against.

A :class:`UserBackend` answers one question, asynchronously because the answer
may live in a database or behind a webhook. Backends are chained (first hit
wins), so a deployment can keep a few static users in the config and the rest
in the console's extensions table or its own HTTP service.

A backend has three ways to say no, and they mean different things to the
registrar: ``None`` (not mine: ask the next backend, finally challenge again),
:class:`UserRejected` (known and refused: 403, or silence for spam), and
:class:`UserBackendError` (I could not answer: 503, never a hang).
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.to_thread
from attrs import frozen

from .config import (
    ExtensionUserBackendConfig,
    HttpUserBackendConfig,
    MemoryUserBackendConfig,
    PlainUserBackendConfig,
    UserBackendConfig,
)
from .errors import ConfigError, SdpbxError
from .sip.auth import UserSecret

if TYPE_CHECKING:
    import httpx

    from .store.extensions import ExtensionStore

__all__ = [
    "ChainUserBackend",
    "ExtensionUserBackend",
    "MemoryUserBackend",
    "PlainUserBackend",
    "SipUser",
    "UserBackend",
    "UserBackendError",
    "UserRejected",
    "user_backend_from_config",
]


@frozen
class SipUser:
    """A user that may register and place calls.

    ``password`` is the plaintext secret; a backend that only stores hashes
    sets ``ha1`` instead, a mapping of digest algorithm (``"MD5"``,
    ``"SHA-256"``) to the hex HA1 for this user's realm.
    """

    username: str
    password: str | None = None
    ha1: tuple[tuple[str, str], ...] = ()
    realm: str | None = None
    display_name: str | None = None
    email: str | None = None
    enabled: bool = True
    allow_guest_calls: bool = False
    id: int | str | None = None

    def secret(self) -> UserSecret:
        """The digest secret: the password, else the stored HA1 values."""
        if self.password is not None:
            return UserSecret(password=self.password)
        return UserSecret(ha1=dict(self.ha1))


class UserRejected(SdpbxError):
    """The backend knows this user and refuses it.

    ``reason`` is the backend's machine word (``"disabled"``, ``"invalid"``,
    ``"spam"``); ``spam`` means: drop the request without any response.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message

    @property
    def spam(self) -> bool:
        return self.reason == "spam"


class UserBackendError(SdpbxError):
    """The backend could not answer (timeout, connection refused, bad reply)."""


class UserBackend(Protocol):
    """Looks a user up by name and realm."""

    async def get_user(self, username: str, realm: str) -> SipUser | None:
        """The user, ``None`` if unknown here; may raise :class:`UserRejected`
        or :class:`UserBackendError`."""
        ...


# -- implementations ---------------------------------------------------------------------------

logger = logging.getLogger("sdpbx.users")


def _realm_key(realm: str | None) -> str | None:
    # Realms are host names in practice, and host names are case-insensitive.
    return None if realm is None else realm.lower()


class MemoryUserBackend:
    """Users held in a dict: the config file's ``type = "memory"`` and tests.

    A user whose ``realm`` is ``None`` answers in every realm; one with a realm
    only in that realm, and wins over a realm-less user of the same name.
    """

    def __init__(self, users: Iterable[SipUser] = ()) -> None:
        self._users: dict[tuple[str, str | None], SipUser] = {}
        for user in users:
            self.add(user)

    @classmethod
    def from_passwords(
        cls, passwords: Mapping[str, str], *, realm: str | None = None
    ) -> MemoryUserBackend:
        """Users from a ``{username: password}`` dict, the usual start of a small PBX::

            users = MemoryUserBackend.from_passwords({"1001": "secret", "1002": "secret"})

        ``realm`` binds every user to that realm; without it they answer in every
        realm the proxy serves. For display names, HA1s or disabled users build
        :class:`SipUser` values and pass them to the constructor.
        """
        return cls(SipUser(name, password, realm=realm) for name, password in passwords.items())

    def add(self, user: SipUser) -> None:
        """Add or replace a user; takes effect on the next lookup."""
        self._users[(user.username, _realm_key(user.realm))] = user

    def remove(self, username: str, realm: str | None = None) -> SipUser | None:
        return self._users.pop((username, _realm_key(realm)), None)

    def __len__(self) -> int:
        return len(self._users)

    async def get_user(self, username: str, realm: str) -> SipUser | None:
        user = self._users.get((username, _realm_key(realm))) or self._users.get((username, None))
        if user is not None and not user.enabled:
            raise UserRejected("disabled")
        return user


_FileKey = tuple[int, int, int]


class PlainUserBackend:
    """A ``user:password`` file (``#`` starts a comment line), re-read when it changes.

    The file is stat-ed in a worker thread at most once per
    :attr:`check_interval` (one lookup does it while the others use what was
    read last, so a burst of REGISTERs costs one thread hop, not one each), and
    parsed again only when its mtime (or size, or inode: editors replace files)
    changed, so an operator edits it with any editor and never restarts the
    PBX. The password
    is everything after the first ``:``, so it may itself contain colons.
    A missing or unreadable file is a :class:`UserBackendError`, not "no such
    user": the operator configured it, so its absence is a fault to report.
    """

    #: Seconds a check of the file stays good: an edit is seen within this.
    check_interval = 1.0

    def __init__(self, path: str | os.PathLike[str], realm: str | None = None) -> None:
        self.path = Path(path)
        self.realm = realm
        self._key: _FileKey | None = None
        self._users: dict[str, str] = {}
        self._checked_at = -math.inf
        self._checking = anyio.Lock()

    async def get_user(self, username: str, realm: str) -> SipUser | None:
        if self.realm is not None and _realm_key(self.realm) != _realm_key(realm):
            return None
        users = await self._fresh()
        password = users.get(username)
        if password is None:
            return None
        return SipUser(username=username, password=password, realm=self.realm)

    async def _fresh(self) -> dict[str, str]:
        if time.monotonic() - self._checked_at < self.check_interval:
            return self._users
        if self._checking.locked() and self._key is not None:
            return self._users  # a check is under way: the last file is at most that old
        async with self._checking:
            # Whoever waited here (only before the first load) finds that load done.
            if time.monotonic() - self._checked_at < self.check_interval:
                return self._users
            users = await anyio.to_thread.run_sync(self._current)
            self._checked_at = time.monotonic()
            return users

    def _current(self) -> dict[str, str]:
        """Runs in a worker thread: the parsed file, re-read if it changed."""
        try:
            st = self.path.stat()
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if key == self._key:
                return self._users
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            logger.warning("plain user file %s unreadable: %s", self.path, exc)
            raise UserBackendError(f"cannot read user file {self.path}: {exc}") from exc
        self._users = self._parse(text)
        self._key = key
        return self._users

    def _parse(self, text: str) -> dict[str, str]:
        users: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            username, sep, password = line.partition(":")
            if not sep or not username:
                logger.warning("%s:%d: not a user:password line, ignored", self.path, number)
                continue
            users[username] = password
        return users


class ExtensionUserBackend:
    """The console's ``extensions`` table.

    Every lookup is a query, never a cache, so an extension created or disabled
    through the console counts on the very next REGISTER.
    """

    def __init__(self, store: ExtensionStore) -> None:
        self._store = store

    async def get_user(self, username: str, realm: str) -> SipUser | None:
        try:
            ext = await self._store.get_by_username(username)
        except (SdpbxError, sqlite3.Error) as exc:
            logger.warning("extension lookup of %r failed: %s", username, exc)
            raise UserBackendError(f"extension lookup failed: {exc}") from exc
        if ext is None:
            return None
        if ext.realm is not None and _realm_key(ext.realm) != _realm_key(realm):
            return None
        if not ext.enabled:
            raise UserRejected("disabled")
        if ext.password is None and not ext.password_ha1:
            # An account nobody can authenticate as: refuse it rather than
            # letting the registrar challenge forever.
            raise UserRejected("invalid", "extension has no password")
        return SipUser(
            username=ext.username,
            password=ext.password,
            ha1=(("MD5", ext.password_ha1),) if ext.password_ha1 else (),
            realm=ext.realm,
            display_name=ext.display_name,
            email=ext.email,
            enabled=ext.enabled,
            allow_guest_calls=ext.allow_guest_calls,
            id=ext.id,
        )


class ChainUserBackend:
    """Backends asked in order; the first that knows the user wins.

    A rejection is final (a disabled user must not be let in by a later
    backend). An error does not stop the chain, because a later backend may
    still know the user; it is raised only when nobody did, so an outage of
    the user service is a 503 rather than "wrong password".
    """

    def __init__(self, backends: Iterable[UserBackend]) -> None:
        self.backends: tuple[UserBackend, ...] = tuple(backends)

    async def get_user(self, username: str, realm: str) -> SipUser | None:
        error: UserBackendError | None = None
        for backend in self.backends:
            try:
                user = await backend.get_user(username, realm)
            except UserBackendError as exc:
                error = error or exc
                continue
            if user is not None:
                return user
        if error is not None:
            raise error
        return None


def user_backend_from_config(
    cfg: UserBackendConfig,
    *,
    extension_store: ExtensionStore | None = None,
    http_client: httpx.AsyncClient | None = None,
) -> UserBackend:
    """The backend one ``[[proxy.user_backends]]`` entry describes.

    ``type = "extension"`` needs the opened database's ``extension_store``;
    ``http_client`` is shared by HTTP backends (connection pooling) and stays
    owned by the caller.
    """
    if isinstance(cfg, MemoryUserBackendConfig):
        return MemoryUserBackend(
            SipUser(
                username=u.username,
                password=u.password,
                realm=u.realm,
                display_name=u.display_name,
                email=u.email,
                enabled=u.enabled,
                allow_guest_calls=u.allow_guest_calls,
            )
            for u in cfg.users
        )
    if isinstance(cfg, PlainUserBackendConfig):
        return PlainUserBackend(cfg.path, cfg.realm)
    if isinstance(cfg, ExtensionUserBackendConfig):
        if extension_store is None:
            raise ConfigError([("type", 'type = "extension" needs the database to be opened')])
        return ExtensionUserBackend(extension_store)
    if isinstance(cfg, HttpUserBackendConfig):
        from .webhooks.user_backend import HttpUserBackend

        return HttpUserBackend(
            cfg.url,
            method=cfg.method,
            username_field=cfg.username_field,
            realm_field=cfg.realm_field,
            headers=cfg.headers,
            timeout=cfg.timeout_ms / 1000,
            client=http_client,
        )
    raise TypeError(f"not a user backend config: {cfg!r}")


def _check_protocol(
    a: MemoryUserBackend, b: PlainUserBackend, c: ExtensionUserBackend, d: ChainUserBackend
) -> tuple[UserBackend, ...]:
    # mypy verifies here that every implementation satisfies the Protocol.
    return a, b, c, d
