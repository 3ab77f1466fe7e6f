"""The ``sdpbx`` command as a user runs it: the console script, in its own process.

``sdpbx check-config`` must list every problem of a file at once; ``sdpbx serve``
must say in one line why it cannot start (transport, address and port, or the
file's path) and exit 1.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskStatus
from helpers.pbx_process import pbx_env, pbx_toml, status_of, udp_exchange
from helpers.sipp import free_port

from sdpbx.cli import root_causes, run_pbx
from sdpbx.config import config_from_dict
from sdpbx.pbx import Pbx

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pbx.toml"
#: Installed by ``pip install -e .`` (``[project.scripts]``), beside the interpreter.
SDPBX = Path(sys.executable).parent / "sdpbx"


def sdpbx(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert SDPBX.is_file(), f"{SDPBX} is missing: pip install -e . installs the sdpbx command"
    return subprocess.run(
        [str(SDPBX), *args],
        cwd=cwd,
        env=pbx_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if " ERROR " in line]


# -- check-config ------------------------------------------------------------------------------

BROKEN = """\
log_level = "loud"
database_url = "pbx.db"

[proxy]
udpport = 5060
tcp_port = 70000
acl_rules = ["permit everyone"]
min_registrar_expires = 600
registrar_expires = 60

[[proxy.routes]]
name = "out"
match = { "to.user" = "^9" }
dest = "nowhere"
"""


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    result = sdpbx(tmp_path, "check-config", str(path))
    assert result.returncode == 1, result
    lines = result.stdout.splitlines()
    keys = [line.split(": ", 1)[0] for line in lines]
    assert sorted(keys) == sorted(
        [
            "log_level",
            "database_url",
            "proxy.udpport",
            "proxy.tcp_port",
            "proxy.acl_rules[0]",
            "proxy.registrar_expires",
            "proxy.routes[0].dest",
        ]
    ), result.stdout
    assert "proxy.udpport: unknown key" in lines
    assert "proxy.routes[0].dest: unknown trunk 'nowhere'" in lines
    assert "Traceback" not in result.stdout + result.stderr


def test_check_config_accepts_the_sample(tmp_path: Path) -> None:
    result = sdpbx(tmp_path, "check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"{EXAMPLE}: OK"


def test_check_config_prints_startup_warnings_and_passes(tmp_path: Path) -> None:
    """Keys that are valid but not implemented yet: warned about, not errors."""
    path = tmp_path / "warn.toml"
    path.write_text('[callrecord]\ntype = "local"\nroot = "cdr"\n')
    result = sdpbx(tmp_path, "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: [callrecord] is configured but not implemented yet; ignored" in (
        result.stdout.splitlines()
    )


def test_check_config_missing_file_and_tls_files(tmp_path: Path) -> None:
    result = sdpbx(tmp_path, "check-config", str(tmp_path / "nope.toml"))
    assert result.returncode == 1
    assert result.stdout == f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory\n"

    path = tmp_path / "tls.toml"
    cert = tmp_path / "missing-cert.pem"
    path.write_text(
        f'[proxy]\ntls_port = 5061\nssl_certificate = "{cert}"\n'
        f'ssl_private_key = "{tmp_path / "missing-key.pem"}"\n'
    )
    result = sdpbx(tmp_path, "check-config", str(path))
    assert result.returncode == 1
    assert f"proxy.ssl_certificate: cannot read {cert}: No such file or directory" in (
        result.stdout.splitlines()
    )


# -- serve: start-up failures in one line ------------------------------------------------------


def test_serve_on_a_taken_udp_port_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        port = int(squatter.getsockname()[1])
        config = tmp_path / "pbx.toml"
        config.write_text(pbx_toml(port))
        result = sdpbx(tmp_path, "serve", "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert [line.split(" ERROR ", 1)[1] for line in _errors(result.stderr)] == [
        f"sdpbx: cannot start: cannot listen on UDP 127.0.0.1:{port}: Address already in use"
    ], result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_a_taken_tcp_port_names_tcp(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = int(squatter.getsockname()[1])
        config = tmp_path / "pbx.toml"
        config.write_text(pbx_toml(port).replace(f"udp_port = {port}", "udp_port = 0"))
        result = sdpbx(tmp_path, "serve", "--config", str(config))
    assert result.returncode == 1, result.stderr
    errors = _errors(result.stderr)
    assert len(errors) == 1, result.stderr
    assert errors[0].endswith(f"cannot listen on TCP 127.0.0.1:{port}: Address already in use")


def test_serve_with_a_missing_certificate_names_the_path(tmp_path: Path) -> None:
    port = free_port()
    cert = tmp_path / "certs" / "sip.pem"
    config = tmp_path / "pbx.toml"
    config.write_text(
        pbx_toml(
            port,
            proxy=f'tls_port = 0\nssl_certificate = "{cert}"\nssl_private_key = "{cert}"',
        )
    )
    result = sdpbx(tmp_path, "serve", "--config", str(config))
    assert result.returncode == 1, result.stderr
    errors = _errors(result.stderr)
    assert errors, result.stderr
    assert errors[0].endswith(
        f"cannot start: proxy.ssl_certificate: cannot read {cert}: No such file or directory"
    )
    assert "Traceback" not in result.stderr


def test_serve_with_an_invalid_config_exits_2_listing_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    result = sdpbx(tmp_path, "serve", "--config", str(path))
    assert result.returncode == 2
    assert "  proxy.udpport: unknown key" in result.stderr.splitlines()
    assert "  proxy.routes[0].dest: unknown trunk 'nowhere'" in result.stderr.splitlines()


# -- serve: running ----------------------------------------------------------------------------


def test_serve_runs_warns_without_users_and_stops_on_sigterm(tmp_path: Path) -> None:
    """Users only from an empty extensions table (as in the embedded defaults):
    a WARNING says how to add some; SIGTERM ends it with 0."""
    port = free_port()
    config = tmp_path / "pbx.toml"
    config.write_text(pbx_toml(port, backends='[[proxy.user_backends]]\ntype = "extension"\n'))
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(SDPBX), "serve", "--config", str(config)],
            cwd=tmp_path,
            env=pbx_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            for _ in range(200):  # until it answers OPTIONS, or 200 x 0.3 s
                assert proc.poll() is None, log_path.read_text()
                if status_of(udp_exchange(port, timeout=0.3)) == 200:
                    break
            else:
                pytest.fail(f"sdpbx serve never answered:\n{log_path.read_text()}")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log_path.read_text()
    assert "WARNING sdpbx: no users: the extensions table of data/pbx.sqlite3 is empty" in text
    assert "--config examples/pbx.toml" in text
    assert "docs/guide/users.rst" in text


def test_the_command_is_declared_for_pip() -> None:
    """``pip install sdpbx`` installs ``sdpbx``: the entry point names sdpbx.cli:main."""
    import importlib.metadata

    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="sdpbx")
    assert entry.value == "sdpbx.cli:main"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"sdpbx": "sdpbx.cli:main"}


# -- unwrapping -------------------------------------------------------------------------------


def test_root_causes_unwrap_nested_groups() -> None:
    listen = OSError(98, "cannot listen")
    other = ValueError("bad")
    group = ExceptionGroup("outer", [ExceptionGroup("inner", [listen]), other])
    assert root_causes(group) == [listen, other]
    assert root_causes(other) == [other]


def test_full_pbx_takes_the_same_options(tmp_path: Path) -> None:
    """examples/full_pbx.py is the same server: --log-level is known to it too."""
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "full_pbx.py"), "--help"],
        cwd=tmp_path,
        env=pbx_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    for option in ("--config", "--log-level", "--data-dir", "--grace", "--uvloop"):
        assert option in result.stdout


class _FailingPbx(Pbx):
    """A Pbx whose start fails deep inside nested task groups, as a bug would."""

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async def broken() -> None:
            raise RuntimeError("boom")

        async with anyio.create_task_group() as outer:
            async with anyio.create_task_group() as inner:
                inner.start_soon(broken)
            outer.start_soon(anyio.sleep_forever)


def test_run_pbx_reduces_a_nested_failure_to_one_line(caplog: pytest.LogCaptureFixture) -> None:
    pbx = _FailingPbx(config_from_dict({"database_url": "sqlite://:memory:"}))
    threshold = gc.get_threshold()
    try:
        with caplog.at_level(logging.INFO, logger="sdpbx"):
            assert run_pbx(pbx) == 1
    finally:
        gc.unfreeze()  # run_pbx tunes the collector for a server process
        gc.set_threshold(*threshold)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["cannot start: RuntimeError: boom"]
