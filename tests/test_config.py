"""The config file: RustPBX's keys and defaults, and errors that name every bad key."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import attrs
import pytest

from sdpbx._serde import (
    KEY,
    OMIT_IF_DEFAULT,
    PayloadError,
    register_tagged_union,
    structure_json,
    unstructure_config,
    unstructure_json,
)
from sdpbx.config import (
    AmiConfig,
    Config,
    ConsoleConfig,
    ExtensionUserBackendConfig,
    HttpCallRecordConfig,
    HttpRouterConfig,
    HttpUserBackendConfig,
    LocalCallRecordConfig,
    LocatorWebhookConfig,
    MemoryUserBackendConfig,
    MemoryUserConfig,
    PlainUserBackendConfig,
    ProxyConfig,
    RecordingConfig,
    RejectConfig,
    RouteConfig,
    S3CallRecordConfig,
    SipflowConfig,
    TrunkConfig,
    config_from_dict,
    config_warnings,
    load_config,
    parse_acl_rule,
    parse_config,
)
from sdpbx.errors import ConfigError
from sdpbx.pbx import Pbx
from sdpbx.transport import TcpTransport, WsTransport

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pbx.toml"


def errors_of(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.errors


# -- defaults (rustpbx-compat.md, "Config (TOML)") ---------------------------------------------


def test_top_level_defaults() -> None:
    config = Config()
    assert config.http_addr == "0.0.0.0:8080"
    assert config.database_url == "sqlite://sdpbx.sqlite3"
    assert config.external_ip is None
    assert config.rtp_start_port == 12000
    assert config.rtp_end_port == 42000
    assert config.log_level is None
    assert config.callrecord is None
    assert parse_config("") == config
    assert config_from_dict({}) == config


def test_proxy_defaults() -> None:
    proxy = Config().proxy
    assert proxy.addr is None
    assert proxy.udp_port == 5060
    assert proxy.tcp_port is None
    assert proxy.tls_port is None
    assert proxy.ws_port is None
    assert proxy.ssl_certificate is None
    assert proxy.ssl_private_key is None
    assert proxy.realms == ()  # all local hosts
    assert proxy.useragent is None
    assert proxy.registrar_expires == 3600
    assert proxy.max_registrar_expires == 7200
    assert proxy.min_registrar_expires == 60
    assert proxy.media_proxy == "auto"
    assert proxy.nat_fix is True
    assert proxy.acl_rules == ("allow all",)
    assert proxy.max_ring_time == 60  # never unlimited (see docs/guide/config.rst)
    assert proxy.rtp_timeout == 60
    assert proxy.ensure_user is True  # sdpbx: false would leave calls unchallenged
    assert proxy.auth_failure_limit == 10
    assert proxy.auth_block_seconds == 300
    assert proxy.auth_source_failure_limit is None  # 5 x auth_failure_limit
    assert (proxy.auth_trust_seconds, proxy.auth_max_tracked) == (3600, 10_000)
    assert (proxy.auth_allow_qop_less, proxy.auth_strict_digest_uri) == (False, False)
    assert (proxy.max_connections, proxy.max_connections_per_source) == (10_000, 1_000)
    assert proxy.message_deadline_secs == 10.0
    assert proxy.http_router is None
    assert proxy.user_backends == ()
    assert proxy.locator_webhook is None
    assert proxy.trunks == {}
    assert proxy.routes == ()


def test_section_defaults() -> None:
    router = HttpRouterConfig(url="http://127.0.0.1/route")
    assert (router.fallback_to_static, router.timeout_ms, router.headers) == (False, 5000, {})

    http = HttpUserBackendConfig(url="http://127.0.0.1/users")
    assert http.method == "GET"
    assert http.username_field == "username"
    assert http.realm_field == "realm"
    assert http.headers == {}
    assert http.timeout_ms == 5000

    locator = LocatorWebhookConfig(url="http://127.0.0.1/loc")
    assert locator.events == ("registered", "unregistered", "offline")
    assert (locator.headers, locator.timeout_ms) == ({}, 5000)

    trunk = TrunkConfig(dest="sip:127.0.0.1:5080")
    assert trunk.inbound_hosts == ()
    assert (trunk.username, trunk.password, trunk.transport) == (None, None, None)
    assert (trunk.max_calls, trunk.max_cps) == (None, None)
    assert trunk.register_enabled is False
    assert trunk.register_expires == 3600

    route = RouteConfig(dest=("x",))
    assert route.name is None
    assert route.priority == 0
    assert route.disabled is False
    assert (route.match, route.rewrite) == ({}, {})
    assert route.select == "rr"
    assert route.action == "forward"
    assert route.reject is None

    recording = Config().recording
    assert recording == RecordingConfig()
    assert recording.enabled is False
    assert recording.path == "recordings"
    assert recording.auto_start is True
    assert recording.filename_pattern == "{session_id}"

    assert LocalCallRecordConfig().root == "cdr"
    assert HttpCallRecordConfig(url="http://127.0.0.1/cdr").with_media is False
    assert Config().ami.allows == ("127.0.0.1", "::1")
    assert Config().console == ConsoleConfig()
    assert Config().console.api_tokens == ()
    assert Config().sipflow.enabled is False


# -- the sample file ---------------------------------------------------------------------------


def test_example_loads_and_round_trips() -> None:
    config = load_config(EXAMPLE)
    assert config.database_url == "sqlite://sdpbx-data/sdpbx.sqlite3"
    assert config.proxy.addr == "127.0.0.1"
    backends = config.proxy.user_backends
    assert isinstance(backends[0], MemoryUserBackendConfig)
    assert [(u.username, u.password) for u in backends[0].users] == [
        ("1001", "secret"),
        ("1002", "secret"),
    ]
    assert isinstance(backends[1], ExtensionUserBackendConfig)
    assert set(config.proxy.trunks) == {"carrier"}
    assert len(config.proxy.routes) >= 2
    assert config.proxy.routes[0].dest == ("carrier",)
    assert config.proxy.routes[1].reject == RejectConfig(403, "Premium numbers are blocked")
    # Unstructuring gives data that builds the same config again.
    data = unstructure_config(config)
    assert isinstance(data, dict)
    assert data["proxy"]["user_backends"][0]["type"] == "memory"
    assert config_from_dict(data) == config


def test_example_binds_loopback_only() -> None:
    config = load_config(EXAMPLE)
    assert ipaddress.ip_address(config.proxy.addr or "").is_loopback


def test_example_needs_a_password_from_everyone_but_a_documentation_address() -> None:
    """Calls must authenticate; the only unauthenticated source is the sample
    trunk's, inside TEST-NET-1 (RFC 5737), which no real host has. A trunk from
    127.0.0.1 would let anyone on the host call any extension without a password."""
    config = load_config(EXAMPLE)
    assert config.proxy.ensure_user is True
    assert config.proxy.user_backends
    test_net = ipaddress.ip_network("192.0.2.0/24")
    for trunk in config.proxy.trunks.values():
        assert trunk.inbound_hosts
        for host in trunk.inbound_hosts:
            assert ipaddress.ip_network(host).subnet_of(test_net), host


def test_example_commented_out_sections_are_valid_keys() -> None:
    """The sections shown commented out (not implemented yet) still load when
    uncommented, and each is then named by a startup warning."""
    text = EXAMPLE.read_text()
    head, marker, tail = text.partition("# Not implemented yet:")
    assert marker
    lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in tail.splitlines()]
    config = parse_config(head + "\n".join(lines[2:]))
    names = [message.split(" is configured")[0] for message in config_warnings(config)]
    assert names == ["[recording]", "[callrecord]", "[console]", "[sipflow]"]


# -- errors: each kind names its exact path ----------------------------------------------------

ONE_ERROR = [
    ("[proxy]\nudpport = 5060", "proxy.udpport", "unknown key"),
    ("colour = 1", "colour", "unknown key"),
    ("[proxy]\nnat_fix = 'yes'", "proxy.nat_fix", "expected a boolean (true or false)"),
    ("rtp_start_port = '1'", "rtp_start_port", "expected an integer"),
    ("rtp_start_port = true", "rtp_start_port", "expected an integer"),
    ("[proxy]\nrealms = 'a.com'", "proxy.realms", "expected an array, got str"),
    ("proxy = 3", "proxy", "expected a table, got int"),
    ("[proxy]\ntcp_port = 70000", "proxy.tcp_port", "port must be between 0 and 65535"),
    ("rtp_start_port = 0", "rtp_start_port", "port must be between 1 and 65535"),
    ("rtp_start_port = 5000\nrtp_end_port = 4000", "rtp_end_port", "must be greater than"),
    ("http_addr = 'nowhere'", "http_addr", "expected host:port, got 'nowhere'"),
    ("external_ip = 'pbx'", "external_ip", "not an IP address: 'pbx'"),
    ("log_level = 'loud'", "log_level", "expected one of"),
    ("[proxy]\nmedia_proxy = 'sometimes'", "proxy.media_proxy", "expected one of 'auto'"),
    ("[proxy]\nacl_rules = ['allow all', 'permit 1.2.3.4']", "proxy.acl_rules[1]", "allow|deny"),
    ("[proxy]\nacl_rules = ['deny 10.0.0.0/33']", "proxy.acl_rules[0]", "not an IP address"),
    (
        "[proxy]\ntls_port = 5061\nssl_private_key = 'k.pem'",
        "proxy.ssl_certificate",
        "required when tls_port is set",
    ),
    (
        "[proxy]\nregistrar_expires = 10",
        "proxy.registrar_expires",
        "must be between min_registrar_expires and max_registrar_expires",
    ),
    (
        "[proxy.http_router]\nurl = 'localhost:9000/route'",
        "proxy.http_router.url",
        "not a valid URL",
    ),
    ("[proxy.http_router]\ntimeout_ms = 5", "proxy.http_router.url", "missing required key"),
    (
        "[proxy.http_router]\nurl = 'http://h/'\nheaders = {'Bad Name' = 'x'}",
        "proxy.http_router.headers.Bad Name",
        "not a valid header name",
    ),
    (
        "[proxy.locator_webhook]\nurl = 'http://h/'\nevents = ['registered', 'gone']",
        "proxy.locator_webhook.events[1]",
        "expected one of 'registered', 'unregistered', 'offline', got 'gone'",
    ),
    (
        "[[proxy.user_backends]]\ntype = 'http'\nurl = 'http://h/'\nmethod = 'PUT'",
        "proxy.user_backends[0].method",
        "expected one of 'GET', 'POST', got 'PUT'",
    ),
    (
        "[[proxy.user_backends]]\ntype = 'ldap'",
        "proxy.user_backends[0].type",
        "unknown type 'ldap' (expected one of: memory, plain, extension, http)",
    ),
    ("[[proxy.user_backends]]\npath = 'u.txt'", "proxy.user_backends[0].type", "missing"),
    (
        "[[proxy.user_backends]]\ntype = 'plain'\npath = 'u.txt'\nusers = []",
        "proxy.user_backends[0].users",
        "unknown key",
    ),
    (
        "[[proxy.user_backends]]\ntype = 'memory'\nusers = [{username = '1001'}]",
        "proxy.user_backends[0].users[0].password",
        "missing required key",
    ),
    ("[proxy.trunks.t1]\nusername = 'u'", "proxy.trunks.t1.dest", "missing required key"),
    (
        "[proxy.trunks.t1]\ndest = 'sip:h'\nmax_calls = 0",
        "proxy.trunks.t1.max_calls",
        "must be greater than 0",
    ),
    (
        "[proxy.trunks.t1]\ndest = 'sip:h'\ninbound_hosts = ['1.2.3.4', 'carrier']",
        "proxy.trunks.t1.inbound_hosts[1]",
        "not an IP address or CIDR: 'carrier'",
    ),
    (
        "[proxy.trunks.t1]\ndest = 'sip:h'\ntransport = 'sctp'",
        "proxy.trunks.t1.transport",
        "expected one of 'udp'",
    ),
    (
        "[proxy.trunks.t1]\ndest = 'sip:h'\nregister_enabled = true\npassword = 'p'",
        "proxy.trunks.t1.username",
        "required when register_enabled is true",
    ),
    ("[proxy.trunks.t1]\ndest = 'h:99999'", "proxy.trunks.t1.dest", "port must be"),
    ("[[proxy.routes]]\ndest = 'nope'", "proxy.routes[0].dest", "unknown trunk 'nope'"),
    ("[[proxy.routes]]\naction = 'forward'", "proxy.routes[0].dest", "required when action"),
    ("[[proxy.routes]]\naction = 'drop'", "proxy.routes[0].action", "expected one of"),
    ("[[proxy.routes]]\ndest = 't'\nselect = 'best'", "proxy.routes[0].select", "expected one"),
    (
        "[[proxy.routes]]\naction = 'reject'\nreject = {code = 200}",
        "proxy.routes[0].reject.code",
        "must be a SIP failure status (400-699)",
    ),
    (
        "[[proxy.routes]]\naction = 'busy'\nmatch = {'to.user' = '^(12'}",
        "proxy.routes[0].match.to.user",
        "invalid regex",
    ),
    (
        "[[proxy.routes]]\naction = 'busy'\nmatch = {'header.X Y' = 'a'}",
        "proxy.routes[0].match",
        "bad header name in 'header.X Y'",
    ),
    (
        "[[proxy.routes]]\naction = 'busy'\nrewrite = {'to.user' = '+{one}'}",
        "proxy.routes[0].rewrite.to.user",
        "placeholders must be {N}",
    ),
    (
        "[[proxy.routes]]\naction = 'busy'\nmatch = {'to.user' = 12}",
        "proxy.routes[0].match.to.user",
        "expected a string",
    ),
    (
        "[recording]\nenabled = 'true'",
        "recording.enabled",
        "expected a boolean (true or false)",
    ),
    ("[callrecord]\nroot = 'x'", "callrecord.type", "missing required key"),
    ("[callrecord]\ntype = 'ftp'", "callrecord.type", "unknown type 'ftp'"),
    ("[callrecord]\ntype = 'http'\nurl = 'mailto:x@y'", "callrecord.url", "not a valid URL"),
    (
        "[callrecord]\ntype = 's3'\nbucket = 'b'\nendpoint = 'minio:9000'",
        "callrecord.endpoint",
        "not a valid URL",
    ),
    ("[ami]\nallows = ['*', 'localhost']", "ami.allows[1]", "not an IP address or CIDR"),
    ("[[console.api_tokens]]\ntoken = ''", "console.api_tokens[0].token", "must be non-empty"),
    ("[[console.api_tokens]]\ntoken = 't'\nkey = 'k'", "console.api_tokens[0].key", "unknown key"),
    ("[console]\nadmin_username = 'admin'", "console.admin_password", "go together"),
    ("[sipflow]\nretention = 3", "sipflow.retention", "unknown key"),
    ("[proxy]\nmax_connections = 0", "proxy.max_connections", ""),
    ("[proxy]\nmessage_deadline_secs = -1", "proxy.message_deadline_secs", ""),
    ("[proxy]\nauth_allow_qop_less = 'yes'", "proxy.auth_allow_qop_less", "boolean"),
]


@pytest.mark.parametrize(("text", "path", "message"), ONE_ERROR)
def test_error_names_the_key_path(text: str, path: str, message: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    assert errors[0][0] == path
    assert message in errors[0][1]


def test_error_examples_from_the_brief_render_exactly() -> None:
    text = """
        [proxy]
        udpport = 5060
        [[proxy.user_backends]]
        type = "memory"
        [[proxy.user_backends]]
        type = "http"
        url = "not a url"
        [proxy.trunks.carrier1]
        dest = "sip:127.0.0.1"
        max_calls = "ten"
        [[proxy.routes]]
        dest = "carrier1"
        [[proxy.routes]]
        dest = "carrier1"
        [[proxy.routes]]
        dest = "carrier1"
        match = { "to.usr" = "1001" }
    """
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert sorted(info.value.errors) == sorted(
        [
            ("proxy.user_backends[1].url", "not a valid URL"),
            ("proxy.trunks.carrier1.max_calls", "expected an integer"),
            ("proxy.routes[2].match", "unknown key 'to.usr'"),
            ("proxy.udpport", "unknown key"),
        ]
    )
    message = str(info.value)
    assert "proxy.user_backends[1].url: not a valid URL" in message
    assert "proxy.routes[2].match: unknown key 'to.usr'" in message
    assert "proxy.trunks.carrier1.max_calls: expected an integer" in message
    assert "proxy.udpport: unknown key" in message


def test_every_error_is_reported_together() -> None:
    text = """
        rtp_start_port = 70000
        log_level = 7
        [proxy]
        acl_rules = ["allow all", "maybe"]
        bogus = 1
        [recording]
        enabled = 1
        [ami]
        allows = ["nowhere"]
        [sipflow]
        retention_days = -1
    """
    paths = {path for path, _ in errors_of(text)}
    assert paths == {
        "rtp_start_port",
        "log_level",
        "proxy.acl_rules[1]",
        "proxy.bogus",
        "recording.enabled",
        "ami.allows[0]",
        "sipflow.retention_days",
    }
    # Values of the right type but wrong are all reported in one go as well.
    text = """
        rtp_start_port = 70000
        external_ip = "x"
        [proxy]
        udp_port = 0
        tcp_port = 65536
        acl_rules = ["maybe", "deny all"]
    """
    assert errors_of(text) == [
        ("external_ip", "not an IP address: 'x'"),
        ("rtp_start_port", "port must be between 1 and 65535"),
        ("proxy.tcp_port", "port must be between 0 and 65535"),
        ("proxy.acl_rules[0]", "expected 'allow|deny <ip|cidr|all>', got 'maybe'"),
    ]
    # Rules that relate several keys of one table are reported with the value
    # errors of the same and of other tables.
    text = """
        [proxy]
        tls_port = 5061
        [[proxy.routes]]
        dest = ["a", "b"]
        [recording]
        path = ""
    """
    assert errors_of(text) == [
        ("proxy.ssl_certificate", "required when tls_port is set"),
        ("proxy.ssl_private_key", "required when tls_port is set"),
        ("proxy.routes[0].dest", "unknown trunk 'a', 'b'"),
        ("recording.path", "must not be empty"),
    ]


def test_route_rules_on_the_same_table_are_all_reported() -> None:
    errors = errors_of(
        """
        [[proxy.routes]]
        match = { "to.usr" = "1", "from.user" = "(" }
        rewrite = { "x" = "1" }
        """
    )
    assert [path for path, _ in errors] == [
        "proxy.routes[0].match",
        "proxy.routes[0].match.from.user",
        "proxy.routes[0].rewrite",
        "proxy.routes[0].dest",  # forward without dest: a cross-key rule, reported too
    ]


SELECTS = "'rr', 'random', 'hash', 'weighted'"
EXPIRES_BOUNDS = "min_registrar_expires and max_registrar_expires"


def test_cross_key_rules_are_reported_with_value_errors_of_the_same_table() -> None:
    """A bad port in [proxy] must not hide, until fixed, that a route names a
    missing trunk: one ConfigError lists both kinds."""
    text = """
        rtp_start_port = 5000
        rtp_end_port = 4000
        log_level = "loud"
        [proxy]
        udp_port = 70000
        tls_port = 5061
        registrar_expires = 10
        [proxy.trunks.carrier]
        dest = "sip:carrier.example"
        max_calls = "many"
        [[proxy.routes]]
        name = "out"
        dest = "nowhere"
        [[proxy.routes]]
        name = "bad"
        dest = "carrier"
        select = "best"
        [[proxy.routes]]
        name = "out"
        dest = ["carrier", "other"]
        [console]
        admin_username = "admin"
        bogus = 1
    """
    assert errors_of(text) == [
        ("log_level", "expected one of trace, debug, info, warn, warning, error, got 'loud'"),
        ("proxy.udp_port", "port must be between 0 and 65535"),
        ("proxy.trunks.carrier.max_calls", "expected an integer"),
        ("proxy.routes[1].select", f"expected one of {SELECTS}, got 'best'"),
        ("proxy.ssl_certificate", "required when tls_port is set"),
        ("proxy.ssl_private_key", "required when tls_port is set"),
        ("proxy.registrar_expires", f"must be between {EXPIRES_BOUNDS}"),
        # carrier is broken but exists: only the names nobody defined are unknown.
        ("proxy.routes[0].dest", "unknown trunk 'nowhere'"),
        ("proxy.routes[2].dest", "unknown trunk 'other'"),
        ("proxy.routes[2].name", "duplicate name 'out'"),
        ("console.admin_password", "admin_username and admin_password go together"),
        ("console.bogus", "unknown key"),
        ("rtp_end_port", "must be greater than rtp_start_port"),
    ]


def test_load_config_reports_both_kinds_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "pbx.toml"
    path.write_text('[proxy]\nudp_port = -1\n[[proxy.routes]]\ndest = "gone"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [
        ("proxy.udp_port", "port must be between 0 and 65535"),
        ("proxy.routes[0].dest", "unknown trunk 'gone'"),
    ]


def test_a_rule_that_needs_a_broken_key_is_skipped() -> None:
    """registrar_expires is broken: the expires rule cannot judge it, so only the
    value error is reported, never a second, misleading one."""
    errors = errors_of("[proxy]\nregistrar_expires = 'long'\nmax_registrar_expires = 10\n")
    assert errors == [("proxy.registrar_expires", "expected an integer")]


def test_unknown_key_and_cross_key_rule_of_one_table_together() -> None:
    errors = errors_of("[console]\nadmin_username = 'a'\nbogus = 1\n")
    assert errors == [
        ("console.admin_password", "admin_username and admin_password go together"),
        ("console.bogus", "unknown key"),
    ]


def test_duplicate_route_names() -> None:
    errors = errors_of(
        """
        [proxy.trunks.t]
        dest = "127.0.0.1:5080"
        [[proxy.routes]]
        name = "a"
        dest = "t"
        [[proxy.routes]]
        name = "a"
        dest = "t"
        """
    )
    assert errors == [("proxy.routes[1].name", "duplicate name 'a'")]


# -- syntax errors and files --------------------------------------------------------------------


def test_toml_syntax_error_has_line_info(tmp_path: Path) -> None:
    errors = errors_of('http_addr = "127.0.0.1:8080"\n[proxy\nudp_port = 5060\n')
    assert len(errors) == 1
    path, message = errors[0]
    assert path == "<string>"
    assert message.startswith("invalid TOML:")
    assert "line 2" in message

    bad = tmp_path / "pbx.toml"
    bad.write_text("[proxy]\nudp_port = = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.errors[0][0] == str(bad)
    assert "line 2" in info.value.errors[0][1]


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.errors[0][0] == str(missing)
    assert "cannot read" in info.value.errors[0][1]
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_load_config_accepts_str_and_pathlike(tmp_path: Path) -> None:
    file = tmp_path / "pbx.toml"
    file.write_text("[proxy]\nudp_port = 5070\n")
    assert load_config(file).proxy.udp_port == 5070
    assert load_config(str(file)).proxy.udp_port == 5070


# -- tagged unions and list normalisation -------------------------------------------------------


def test_user_backend_union() -> None:
    config = parse_config(
        """
        [[proxy.user_backends]]
        type = "memory"
        users = [{ username = "1001", password = "secret", realm = "pbx.test" }]
        [[proxy.user_backends]]
        type = "plain"
        path = "users.txt"
        [[proxy.user_backends]]
        type = "extension"
        [[proxy.user_backends]]
        type = "http"
        url = "https://127.0.0.1:9000/users"
        method = "POST"
        username_field = "user"
        realm_field = "domain"
        headers = { "X-Api-Key" = "k" }
        timeout_ms = 1500
        """
    )
    assert config.proxy.user_backends == (
        MemoryUserBackendConfig(users=(MemoryUserConfig("1001", "secret", realm="pbx.test"),)),
        PlainUserBackendConfig(path="users.txt"),
        ExtensionUserBackendConfig(),
        HttpUserBackendConfig(
            url="https://127.0.0.1:9000/users",
            method="POST",
            username_field="user",
            realm_field="domain",
            headers={"X-Api-Key": "k"},
            timeout_ms=1500,
        ),
    )


def test_callrecord_union() -> None:
    local = parse_config('[callrecord]\ntype = "local"').callrecord
    assert local == LocalCallRecordConfig(root="cdr")
    http = parse_config(
        '[callrecord]\ntype = "http"\nurl = "http://127.0.0.1:9000/cdr"\nwith_media = true\n'
        "headers = { Authorization = 'Bearer t' }"
    ).callrecord
    assert http == HttpCallRecordConfig(
        url="http://127.0.0.1:9000/cdr", headers={"Authorization": "Bearer t"}, with_media=True
    )
    s3 = parse_config(
        """
        [callrecord]
        type = "s3"
        vendor = "minio"
        bucket = "cdrs"
        region = "us-east-1"
        access_key = "ak"
        secret_key = "sk"
        endpoint = "http://127.0.0.1:9001"
        root = "pbx1"
        """
    ).callrecord
    assert s3 == S3CallRecordConfig(
        bucket="cdrs",
        vendor="minio",
        region="us-east-1",
        access_key="ak",
        secret_key="sk",
        endpoint="http://127.0.0.1:9001",
        root="pbx1",
    )


def test_route_dest_string_or_list_becomes_tuple() -> None:
    text = """
        [proxy.trunks.a]
        dest = "sip:127.0.0.1:5080"
        [proxy.trunks.b]
        dest = "127.0.0.1:5090"
        [[proxy.routes]]
        dest = "a"
        [[proxy.routes]]
        dest = ["a", "b"]
        select = "weighted"
        [[proxy.routes]]
        action = "busy"
    """
    routes = parse_config(text).proxy.routes
    assert [route.dest for route in routes] == [("a",), ("a", "b"), ()]
    errors = errors_of('[[proxy.routes]]\ndest = ["a", 3]')
    assert errors == [("proxy.routes[0].dest[1]", "expected a string")]


# -- construction from Python validates too -----------------------------------------------------


def test_python_construction_validates() -> None:
    with pytest.raises(ConfigError) as info:
        ProxyConfig(udp_port=70000, acl_rules=("allow everyone",))
    assert [path for path, _ in info.value.errors] == ["udp_port", "acl_rules[0]"]
    with pytest.raises(ConfigError, match="rtp_end_port"):
        attrs.evolve(Config(), rtp_end_port=100)
    # Port 0 on a listener asks the OS for a free port (used by tests).
    assert ProxyConfig(udp_port=0, tcp_port=0).tcp_port == 0
    assert Config(http_addr="[::1]:0").http_addr == "[::1]:0"


def test_acl_rules_parse_and_match() -> None:
    allow = parse_acl_rule("allow 10.0.0.0/8")
    assert allow.allow is True
    assert allow.matches(ipaddress.ip_address("10.1.2.3"))
    assert allow.matches(ipaddress.ip_address("::ffff:10.1.2.3"))
    assert not allow.matches(ipaddress.ip_address("11.0.0.1"))
    assert not allow.matches(ipaddress.ip_address("::1"))
    deny = parse_acl_rule("DENY all")
    assert deny.allow is False
    assert deny.network is None
    assert deny.matches(ipaddress.ip_address("::1"))
    rules = ProxyConfig(acl_rules=("allow ::1", "deny all")).acl
    assert [rule.allow for rule in rules] == [True, False]
    with pytest.raises(ValueError, match=r"allow\|deny"):
        parse_acl_rule("allow")


def test_ami_star_and_cidr() -> None:
    assert AmiConfig(allows=("*", "10.0.0.0/8", "fe80::/10")).allows[0] == "*"
    assert SipflowConfig(enabled=True, retention_days=0).retention_days == 0


# -- the JSON side of _serde (webhook and REST payloads) ----------------------------------------


@attrs.frozen
class _Hangup:
    reason: str | None = None


@attrs.frozen
class _Transfer:
    target: str


_Command = _Hangup | _Transfer
register_tagged_union(_Command, "action", {"hangup": _Hangup, "transfer": _Transfer})


@attrs.frozen
class _Leg:
    from_: str = attrs.field(metadata={KEY: "from"})
    started: dt.datetime = attrs.field(metadata={KEY: "startTime"})
    targets: tuple[str, ...] = ()
    note: str | None = attrs.field(default=None, metadata={OMIT_IF_DEFAULT: True})
    command: _Command | None = None


def test_json_round_trip_with_renames_unions_and_times() -> None:
    data = {
        "from": "sip:1001@pbx.test",
        "startTime": "2024-05-01T12:00:00Z",
        "targets": ["sip:1002@pbx.test"],
        "command": {"action": "transfer", "target": "sip:1003@pbx.test"},
    }
    leg = structure_json(data, _Leg)
    assert leg.from_ == "sip:1001@pbx.test"
    assert leg.started == dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
    assert leg.targets == ("sip:1002@pbx.test",)
    assert leg.command == _Transfer("sip:1003@pbx.test")
    assert unstructure_json(leg) == data


def test_json_errors_use_external_names() -> None:
    with pytest.raises(PayloadError) as info:
        structure_json(
            {"from": 1, "startTime": "yesterday", "targets": [2], "command": {"action": "x"}},
            _Leg,
        )
    assert info.value.errors == [
        ("from", "expected a string"),
        ("startTime", "expected an RFC 3339 date-time"),
        ("targets[0]", "expected a string"),
        ("command.action", "unknown action 'x' (expected one of: hangup, transfer)"),
    ]
    with pytest.raises(PayloadError) as info:
        structure_json({"startTime": "2024-05-01T12:00:00Z", "extra": 1}, _Leg)
    assert sorted(info.value.errors) == [("extra", "unknown key"), ("from", "missing required key")]
    with pytest.raises(PayloadError) as info:
        structure_json([1], _Leg)
    assert info.value.errors == [("<root>", "expected an object, got list")]


def test_lenient_json_ignores_unknown_keys() -> None:
    data = {"from": "a", "startTime": "2024-05-01T12:00:00+02:00", "vendor_extra": {"x": 1}}
    leg = structure_json(data, _Leg, strict=False)
    assert leg.from_ == "a"
    assert unstructure_json(leg) == {
        "from": "a",
        "startTime": "2024-05-01T12:00:00+02:00",
        "targets": [],
        "command": None,
    }


def test_auth_algorithms_default_and_validation() -> None:
    """MD5 alone by default (baresip 1.0 fails when SHA-256 is offered at all); bad names named."""
    from sdpbx.config import config_from_dict
    from sdpbx.errors import ConfigError

    assert config_from_dict({}).proxy.auth_algorithms == ("MD5",)
    both = {"proxy": {"auth_algorithms": ["SHA-256", "MD5"]}}
    assert config_from_dict(both).proxy.auth_algorithms == ("SHA-256", "MD5")
    with pytest.raises(ConfigError, match=r"proxy\.auth_algorithms\[1\]"):
        config_from_dict({"proxy": {"auth_algorithms": ["MD5", "SHA-1"]}})


def test_the_server_shares_one_connection_table_across_stream_transports(tmp_path: Path) -> None:
    """``max_connections`` spans TCP and WS: both transports hold the same table."""
    config = config_from_dict(
        {
            "database_url": f"sqlite://{tmp_path / 'pbx.sqlite3'}",
            "proxy": {
                "addr": "127.0.0.1",
                "udp_port": 0,
                "tcp_port": 0,
                "ws_port": 0,
                "max_connections": 50,
                "max_connections_per_source": 5,
                "message_deadline_secs": 2.5,
            },
        }
    )
    transports = Pbx(config)._transports()
    tcp = next(t for t in transports if isinstance(t, TcpTransport))
    ws = next(t for t in transports if isinstance(t, WsTransport))
    assert tcp.connections is ws.connections
    limits = tcp.connections.limits
    assert (limits.max_connections, limits.max_per_source) == (50, 5)
    assert limits.message_deadline == 2.5
    assert tcp.message_deadline == 2.5
