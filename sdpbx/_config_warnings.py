"""Start-up warnings for a valid config that would not do what it says.

Every key of RustPBX's file is accepted (a RustPBX config must load), but some
sections have no code behind them yet. A key that silently does nothing is how
an operator ends up believing calls are recorded or the console is protected,
so each one set away from its default gets exactly one warning naming it. The
server logs them at WARNING when it is built (:class:`sdpbx.pbx.Pbx`) and
``sdpbx check-config`` prints them; :func:`sdpbx.config.config_warnings` is the
public entry point.
"""

from __future__ import annotations

from sdpbx.config import (
    AmiConfig,
    Config,
    ConsoleConfig,
    ExtensionUserBackendConfig,
    MemoryUserBackendConfig,
    ProxyConfig,
    RecordingConfig,
    SipflowConfig,
)


def _ignored(name: str, why: str = "") -> str:
    return f"{name} is configured but not implemented yet{f' ({why})' if why else ''}; ignored"


#: ``media_proxy`` values whose behaviour is what happens today: media always
#: flows between the endpoints (``auto`` is the default and documented so).
_MEDIA_PROXY_AS_TODAY = ("auto", "none")
_NO_RELAY = "no RTP relay: media flows between the endpoints"


def config_warnings(config: Config) -> list[str]:
    """One message per key or section that is set but has no effect yet, and per
    setting that leaves calls open; empty for a config that does what it says."""
    defaults = Config()
    out: list[str] = []
    if config.http_addr != defaults.http_addr:
        out.append(_ignored("http_addr", "no console or AMI is served"))
    if (config.rtp_start_port, config.rtp_end_port) != (
        defaults.rtp_start_port,
        defaults.rtp_end_port,
    ):
        out.append(_ignored("rtp_start_port/rtp_end_port", _NO_RELAY))
    sections = (
        ("recording", config.recording != RecordingConfig()),
        ("callrecord", config.callrecord is not None),
        ("ami", config.ami != AmiConfig()),
        ("console", config.console != ConsoleConfig()),
        ("sipflow", config.sipflow != SipflowConfig()),
    )
    out.extend(_ignored(f"[{name}]") for name, configured in sections if configured)
    out.extend(_proxy_warnings(config.proxy, config.database_url))
    return out


def _proxy_warnings(proxy: ProxyConfig, database_url: str) -> list[str]:
    out: list[str] = []
    if proxy.media_proxy not in _MEDIA_PROXY_AS_TODAY:
        out.append(_ignored(f"proxy.media_proxy = {proxy.media_proxy!r}", _NO_RELAY))
    if proxy.rtp_timeout != ProxyConfig().rtp_timeout:
        out.append(_ignored("proxy.rtp_timeout", "RTP is not watched"))
    for index, backend in enumerate(proxy.user_backends):
        path = f"proxy.user_backends[{index}]"
        if isinstance(backend, ExtensionUserBackendConfig) and backend.database_url not in (
            None,
            database_url,
        ):
            out.append(_ignored(f"{path}.database_url", "extensions come from database_url"))
        if isinstance(backend, MemoryUserBackendConfig):
            guests = [u.username for u in backend.users if u.allow_guest_calls]
            if guests:
                out.append(_ignored(f"{path} allow_guest_calls", f"users {', '.join(guests)}"))
    if not proxy.ensure_user and proxy.user_backends:
        out.append(
            "proxy.ensure_user is false: calls are accepted without a password from any "
            "address the ACL allows, to any route (trunks included)"
        )
    return out
