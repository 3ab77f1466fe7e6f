"""config_warnings: every key that is valid but does nothing yet is named once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdpbx.config import config_from_dict, config_warnings, load_config
from sdpbx.pbx import default_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pbx.toml"


def test_defaults_warn_about_nothing() -> None:
    assert config_warnings(config_from_dict({})) == []
    assert config_warnings(default_config("data")) == []


@pytest.mark.parametrize(
    ("data", "name"),
    [
        ({"http_addr": "127.0.0.1:8081"}, "http_addr"),
        ({"rtp_start_port": 20000}, "rtp_start_port/rtp_end_port"),
        ({"rtp_end_port": 20000}, "rtp_start_port/rtp_end_port"),
        ({"recording": {"enabled": True}}, "[recording]"),
        ({"recording": {"path": "rec"}}, "[recording]"),
        ({"callrecord": {"type": "local"}}, "[callrecord]"),
        ({"callrecord": {"type": "http", "url": "http://127.0.0.1:9/cdr"}}, "[callrecord]"),
        ({"ami": {"allows": ["*"]}}, "[ami]"),
        ({"console": {"session_secret": "x"}}, "[console]"),
        ({"console": {"api_tokens": [{"token": "t"}]}}, "[console]"),
        ({"sipflow": {"enabled": True}}, "[sipflow]"),
        ({"proxy": {"media_proxy": "always"}}, "proxy.media_proxy = 'always'"),
        ({"proxy": {"media_proxy": "nat"}}, "proxy.media_proxy = 'nat'"),
        ({"proxy": {"rtp_timeout": 30}}, "proxy.rtp_timeout"),
        (
            {"proxy": {"user_backends": [{"type": "extension", "database_url": "sqlite://x"}]}},
            "proxy.user_backends[0].database_url",
        ),
        (
            {
                "proxy": {
                    "user_backends": [
                        {"type": "memory", "users": [{"username": "1", "password": "p"}]},
                        {
                            "type": "memory",
                            "users": [
                                {"username": "2", "password": "p", "allow_guest_calls": True}
                            ],
                        },
                    ]
                }
            },
            "proxy.user_backends[1] allow_guest_calls",
        ),
    ],
)
def test_each_unimplemented_key_warns_once_naming_it(data: dict[str, Any], name: str) -> None:
    [message] = config_warnings(config_from_dict(data))
    assert message.startswith(f"{name} is configured but not implemented yet")
    assert message.endswith("; ignored")


def test_both_rtp_ports_are_one_warning() -> None:
    config = config_from_dict({"rtp_start_port": 20000, "rtp_end_port": 30000})
    assert len(config_warnings(config)) == 1


@pytest.mark.parametrize("mode", ["auto", "none"])
def test_media_proxy_modes_that_describe_today_do_not_warn(mode: str) -> None:
    assert config_warnings(config_from_dict({"proxy": {"media_proxy": mode}})) == []


def test_open_calls_are_said_once() -> None:
    backends = [{"type": "memory", "users": [{"username": "1", "password": "p"}]}]
    config = config_from_dict({"proxy": {"user_backends": backends, "ensure_user": False}})
    [message] = config_warnings(config)
    assert message.startswith("proxy.ensure_user is false: calls are accepted without a password")
    # Without users nobody can authenticate anyway: nothing to say about ensure_user.
    assert config_warnings(config_from_dict({"proxy": {"ensure_user": False}})) == []


def test_every_section_together_is_one_line_each() -> None:
    config = config_from_dict(
        {
            "http_addr": "127.0.0.1:8081",
            "recording": {"enabled": True},
            "callrecord": {"type": "local"},
            "ami": {"allows": ["*"]},
            "console": {"session_secret": "x"},
            "sipflow": {"enabled": True},
        }
    )
    names = [m.split(" is configured")[0] for m in config_warnings(config)]
    assert names == ["http_addr", "[recording]", "[callrecord]", "[ami]", "[console]", "[sipflow]"]


def test_the_sample_config_sets_only_what_works() -> None:
    """examples/pbx.toml, read by the real loader, draws no warning: every key it
    sets does something (unimplemented sections are shown commented out)."""
    assert config_warnings(load_config(EXAMPLE)) == []
