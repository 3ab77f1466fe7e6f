"""Users looked up from the operator's own web service (``type = "http"``).

The contract is RustPBX's: ``GET url?username=1001&realm=pbx.com`` (or the
same fields as a POST form); ``200`` with the user as JSON; ``403``/``404``
with ``{"reason", "message"}`` to say no. Every outcome maps onto the three
answers of :class:`~sdpbx.users.UserBackend`, and a service that is slow,
down or talking nonsense is a :class:`~sdpbx.users.UserBackendError` (the
registrar answers 503) within ``timeout`` seconds, never a hang.

Beyond RustPBX, the service may return an HA1 digest instead of the
plaintext password, so it need not keep passwords in clear: either a
``password_ha1`` field, or ``"ha1": true`` with ``password`` holding the digest.
32 hex digits is an MD5 HA1, 64 a SHA-256 one. The length alone never decides:
a 32-hex-digit plaintext password is legal, so without one of the two markers
``password`` is always plaintext.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

import anyio
import httpx
from attrs import frozen

from .._serde import structure_json
from ..errors import PayloadError
from ..users import SipUser, UserBackendError, UserRejected
from ._client import WebhookClient

__all__ = ["HttpUserBackend"]

logger = logging.getLogger("sdpbx.webhooks.user_backend")

_HEX = re.compile(r"[0-9a-fA-F]+")
_HA1_ALGORITHM = {32: "MD5", 64: "SHA-256"}


@frozen
class _UserReply:
    """The 200 body. Every field is optional and ``null`` means "not given",
    because the services behind this contract are written in every language
    and not all of them leave unset fields out."""

    id: Any = None
    username: str | None = None
    password: str | None = None
    password_ha1: str | None = None
    ha1: bool | None = None
    display_name: str | None = None
    email: str | None = None
    allow_guest_calls: bool | None = None
    enabled: bool | None = None


@frozen
class _Refusal:
    """The 403/404 body."""

    reason: str | None = None
    message: str | None = None


def _ha1_pair(value: str, where: str) -> tuple[str, str]:
    algorithm = _HA1_ALGORITHM.get(len(value))
    if algorithm is None or not _HEX.fullmatch(value):
        raise UserBackendError(f"{where} is not an HA1 (32 or 64 hex digits)")
    return (algorithm, value.lower())


class HttpUserBackend(WebhookClient):
    """One request per lookup to the user service.

    ``client`` is an :class:`httpx.AsyncClient` to share (connection pooling
    across webhooks) and stays the caller's to close; without it the backend
    opens its own on first use, closed by :meth:`aclose` or ``async with``.
    The deadline is enforced twice: httpx's own timeouts, and an overall
    :func:`anyio.fail_after`, because httpx's read timeout restarts with every
    chunk and a server that trickles bytes would otherwise hold a REGISTER
    forever.
    """

    def __init__(
        self,
        url: str,
        *,
        method: Literal["GET", "POST"] = "GET",
        username_field: str = "username",
        realm_field: str = "realm",
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if method not in ("GET", "POST"):
            raise ValueError(f"method must be GET or POST, not {method!r}")
        self.url = url
        self.method = method
        self.username_field = username_field
        self.realm_field = realm_field
        self.headers = {"Accept": "application/json", **(headers or {})}
        self.timeout = timeout
        super().__init__(client)

    async def get_user(self, username: str, realm: str) -> SipUser | None:
        fields = {self.username_field: username, self.realm_field: realm}
        try:
            with anyio.fail_after(self.timeout):
                response = await self._get_client().request(
                    self.method,
                    self.url,
                    params=fields if self.method == "GET" else None,
                    data=fields if self.method == "POST" else None,
                    headers=self.headers,
                    timeout=httpx.Timeout(self.timeout),
                )
        except (TimeoutError, httpx.TimeoutException):
            raise self._error(username, f"no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise self._error(username, f"{type(exc).__name__}: {exc}") from exc
        return self._interpret(response, username, realm)

    def _error(self, username: str, problem: str) -> UserBackendError:
        message = f"user backend {self.url}: lookup of {username!r} failed: {problem}"
        logger.warning("%s", message)
        return UserBackendError(message)

    def _interpret(self, response: httpx.Response, username: str, realm: str) -> SipUser | None:
        status = response.status_code
        if status in (403, 404):
            refusal = self._refusal(response)
            reason = refusal.reason or ("not_found" if status == 404 else "invalid")
            if reason == "not_found":
                return None
            raise UserRejected(reason, refusal.message or "")
        if not 200 <= status < 300:
            raise self._error(username, f"HTTP {status}")
        try:
            reply = structure_json(response.json(), _UserReply, strict=False)
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError
            raise self._error(username, f"reply is not JSON ({exc})") from None
        except PayloadError as exc:
            raise self._error(username, f"bad reply: {exc}") from None
        try:
            return self._user(reply, username, realm)
        except UserBackendError as exc:
            raise self._error(username, str(exc)) from None

    @staticmethod
    def _refusal(response: httpx.Response) -> _Refusal:
        try:
            return structure_json(response.json(), _Refusal, strict=False)
        except (ValueError, PayloadError):
            # A bare 403/404 (an nginx error page) still says no; only the reason is lost.
            return _Refusal()

    @staticmethod
    def _user(reply: _UserReply, username: str, realm: str) -> SipUser:
        if reply.enabled is False:
            raise UserRejected("disabled")
        password = reply.password
        ha1: list[tuple[str, str]] = []
        if reply.password_ha1:
            ha1.append(_ha1_pair(reply.password_ha1, "password_ha1"))
        if reply.ha1 and password is not None:
            pair = _ha1_pair(password, 'password (with "ha1": true)')
            if pair[0] not in dict(ha1):
                ha1.append(pair)
            password = None
        if password is None and not ha1:
            raise UserBackendError("reply has no password")
        user_id = reply.id
        if isinstance(user_id, bool) or not isinstance(user_id, (int, str)):
            user_id = None
        return SipUser(
            username=reply.username or username,
            password=password,
            ha1=tuple(ha1),
            realm=realm,
            display_name=reply.display_name,
            email=reply.email,
            enabled=True,
            allow_guest_calls=bool(reply.allow_guest_calls),
            id=user_id,
        )
