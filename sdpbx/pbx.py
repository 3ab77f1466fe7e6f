"""Pbx: a complete PBX assembled from a RustPBX-compatible :class:`~sdpbx.config.Config`.

This is the wiring ``examples/full_pbx.py`` runs, kept in the library so that
an application can start the reference server and then reach into its parts
(``pbx.proxy``, ``pbx.locator``, ``pbx.extensions``) from Python::

    config = load_config("pbx.toml")
    pbx = Pbx(config)
    async with anyio.create_task_group() as tg:
        await tg.start(pbx.serve)

Everything with a lifetime (the database, the webhooks' HTTP client, the
stack, trunk registrations) is opened in :meth:`Pbx.serve` and closed when it
returns, in reverse order.
"""

from __future__ import annotations

import logging
import secrets
import ssl
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx
from anyio.abc import TaskStatus

from ._memory import pin_mmap_threshold
from ._version import __version__
from .authn import Authenticator
from .config import Config, config_warnings
from .errors import ConfigError
from .locator import SqliteLocator
from .proxy import Proxy
from .registrar import Registrar
from .routing import Router, StaticRouter, trunks_from_config
from .sip.nonce import NonceManager
from .stack import SipStack
from .store import Database, ExtensionStore
from .transport import (
    ConnectionLimits,
    ConnectionTable,
    TcpTransport,
    TlsTransport,
    Transport,
    UdpTransport,
    WsTransport,
    raise_open_file_limit,
)
from .trunk_registration import TrunkRegistration, trunk_registration_from_config
from .users import ChainUserBackend, UserBackend, user_backend_from_config
from .webhooks import LocatorWebhook, http_router_from_config, locator_webhook_from_config

__all__ = ["Pbx", "default_config"]

#: Descriptors besides SIP connections: UDP sockets, HTTP clients, the database.
_SPARE_FILES = 1_000

log = logging.getLogger("sdpbx.pbx")


def default_config(data_dir: str | Path = "sdpbx-data") -> Config:
    """The embedded defaults of ``full_pbx.py``: SIP UDP+TCP on 127.0.0.1:5060,
    users from the database's extensions, the SQLite file under ``data_dir``.

    Only keys that are implemented are set, so it starts without warnings."""
    from .config import config_from_dict

    data = Path(data_dir)
    return config_from_dict(
        {
            "database_url": f"sqlite://{data / 'sdpbx.sqlite3'}",
            "proxy": {
                "addr": "127.0.0.1",
                "udp_port": 5060,
                "tcp_port": 5060,
                "user_backends": [{"type": "extension"}],
            },
        }
    )


class Pbx:
    """The reference server's object graph, built from one config."""

    def __init__(self, config: Config, *, data_dir: str | Path | None = None) -> None:
        self.config = config
        # Said once, at build time: keys that are valid but do nothing yet.
        for message in config_warnings(config):
            log.warning("%s", message)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.db = Database.from_url(config.database_url)
        self.extensions = ExtensionStore(self.db)
        self.locator = SqliteLocator(self.db)
        self.proxy: Proxy | None = None
        self.stack: SipStack | None = None
        self.trunk_registrations: list[TrunkRegistration] = []
        self.locator_webhook: LocatorWebhook | None = None

    # -- assembly ------------------------------------------------------------------
    def _transports(self) -> list[Transport]:
        proxy = self.config.proxy
        host = proxy.addr or "0.0.0.0"
        out: list[Transport] = []
        # One table for every stream transport, so the caps span TCP, TLS and WS.
        connections = ConnectionTable(
            ConnectionLimits(
                max_connections=proxy.max_connections,
                max_per_source=proxy.max_connections_per_source,
                message_deadline=proxy.message_deadline_secs,
            )
        )
        if proxy.udp_port is not None:
            out.append(UdpTransport(host, proxy.udp_port))
        if proxy.tcp_port is not None:
            out.append(TcpTransport(host, proxy.tcp_port, connections=connections))
        context: ssl.SSLContext | None = None
        if proxy.ssl_certificate and proxy.ssl_private_key:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(proxy.ssl_certificate, proxy.ssl_private_key)
            except (OSError, ssl.SSLError) as exc:
                # ssl says "[Errno 2] No such file or directory" without a path.
                reason = exc.strerror or str(exc)
                raise ConfigError(
                    [
                        (
                            "proxy.ssl_certificate",
                            f"cannot load certificate {proxy.ssl_certificate!r} with key "
                            f"{proxy.ssl_private_key!r}: {reason}",
                        )
                    ]
                ) from None
        if proxy.tls_port is not None and context is not None:
            out.append(TlsTransport(host, proxy.tls_port, context, connections=connections))
        if proxy.ws_port is not None:
            out.append(WsTransport(host, proxy.ws_port, connections=connections))
        return out

    def _nonce_secret(self) -> bytes:
        """A digest nonce secret kept beside the database, so nonces issued
        before a restart stay valid after it (stale=true only when old)."""
        path = self.db.path
        if str(path) == ":memory:":
            return secrets.token_bytes(32)
        secret_file = Path(path).with_suffix(".nonce-secret")
        if secret_file.exists():
            return secret_file.read_bytes()
        secret = secrets.token_bytes(32)
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret_file.write_bytes(secret)
        secret_file.chmod(0o600)
        return secret

    def _users(self, client: httpx.AsyncClient) -> UserBackend | None:
        backends = [
            user_backend_from_config(cfg, extension_store=self.extensions, http_client=client)
            for cfg in self.config.proxy.user_backends
        ]
        if not backends:
            return None
        return backends[0] if len(backends) == 1 else ChainUserBackend(backends)

    def _router(self, client: httpx.AsyncClient) -> Router:
        proxy = self.config.proxy
        static = StaticRouter(
            proxy.routes, proxy.trunks, locator=self.locator, local_realms=proxy.realms
        )
        if proxy.http_router is not None:
            return http_router_from_config(proxy.http_router, static, client=client)
        return static

    # -- running ---------------------------------------------------------------------
    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open everything, serve until cancelled, then close it all."""
        config = self.config
        proxy_cfg = config.proxy
        async with AsyncExitStack() as exits:
            db_path = self.db.path
            if str(db_path) != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            await self.db.open()
            exits.push_async_callback(self.db.close)
            restored = await self.locator.load(time.time())
            log.info("database %s open, %d bindings restored", db_path, restored)

            client = httpx.AsyncClient()
            exits.push_async_callback(client.aclose)
            users = self._users(client)
            pin_mmap_threshold()  # large read buffers are mmap()ed and given back
            # Every connection is a descriptor: lift the soft limit (often 1024).
            files = raise_open_file_limit()
            if 0 <= files < proxy_cfg.max_connections + _SPARE_FILES:
                log.warning(
                    "open-file limit %d is below max_connections %d + %d spare; raise it "
                    "(LimitNOFILE= in the systemd unit, ulimit -n) or lower max_connections",
                    files,
                    proxy_cfg.max_connections,
                    _SPARE_FILES,
                )
            authenticator = None
            if users is not None:
                authenticator = Authenticator.from_config(
                    proxy_cfg, users, nonces=NonceManager(self._nonce_secret())
                )
            registrar = Registrar.from_config(proxy_cfg, self.locator, authenticator)
            stack = SipStack(
                self._transports(),
                user_agent=proxy_cfg.useragent or f"sdpbx/{__version__}",
                advertised_host=config.external_ip,
            )
            self.stack = stack
            self.proxy = Proxy(
                stack,
                self._router(client),
                registrar=registrar,
                authenticator=authenticator,
                locator=self.locator,
                trunks=trunks_from_config(proxy_cfg.trunks),
                acl=proxy_cfg.acl,
                ring_timeout=float(proxy_cfg.max_ring_time),
                # Registrations are authenticated whenever there are users; calls
                # only when ensure_user asks (trunks' inbound_hosts never are).
                authenticate_invites=authenticator is not None and proxy_cfg.ensure_user,
                local_realms=proxy_cfg.realms,
                user_agent=proxy_cfg.useragent or f"sdpbx/{__version__}",
            )
            async with anyio.create_task_group() as tg:
                if proxy_cfg.locator_webhook is not None:
                    # Its own keep-alive pool (sized by max_in_flight): a registration
                    # storm must not take the connections the HTTP router needs.
                    webhook = locator_webhook_from_config(proxy_cfg.locator_webhook)
                    self.locator.subscribe(webhook.notify)
                    self.locator_webhook = webhook
                    await tg.start(webhook.serve)
                await tg.start(self.proxy.serve)
                for name, trunk in proxy_cfg.trunks.items():
                    if trunk.register_enabled:
                        registration = trunk_registration_from_config(stack, name, trunk)
                        self.trunk_registrations.append(registration)
                        await tg.start(registration.run)
                addresses = ", ".join(
                    f"{t.name} {t.local_host}:{t.local_port}" for t in stack.transports
                )
                log.info("sdpbx %s serving SIP on %s", __version__, addresses)
                task_status.started()
                try:
                    await anyio.sleep_forever()
                finally:
                    with anyio.CancelScope(shield=True):
                        for registration in self.trunk_registrations:
                            await registration.stop()
                    tg.cancel_scope.cancel()

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop taking calls (503), give live calls ``grace`` seconds to end, and
        the locator webhook what is left of it to deliver its queue (what it
        cannot is counted in its stats as dropped at shutdown)."""
        deadline = anyio.current_time() + grace
        if self.proxy is not None:
            await self.proxy.drain(grace)
        webhook = self.locator_webhook
        if webhook is not None:
            webhook.close()
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                await webhook.drain()
