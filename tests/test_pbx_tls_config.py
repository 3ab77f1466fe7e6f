"""A TLS listener whose certificate cannot be loaded is a config error naming the files.

ssl's own error is "[Errno 2] No such file or directory", without a path: an
application that builds a :class:`~sdpbx.pbx.Pbx` itself (not through the
``sdpbx`` command, which checks the files first) must still learn which file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sdpbx.config import config_from_dict
from sdpbx.errors import ConfigError
from sdpbx.pbx import Pbx

pytestmark = pytest.mark.anyio


async def test_a_missing_certificate_is_named(tmp_path: Path) -> None:
    cert, key = tmp_path / "missing-cert.pem", tmp_path / "missing-key.pem"
    config = config_from_dict(
        {
            "database_url": f"sqlite://{tmp_path / 'pbx.sqlite3'}",
            "proxy": {
                "addr": "127.0.0.1",
                "udp_port": 0,
                "tls_port": 0,
                "ssl_certificate": str(cert),
                "ssl_private_key": str(key),
            },
        }
    )
    pbx = Pbx(config, data_dir=tmp_path)
    with pytest.raises(ConfigError) as caught:
        await pbx.serve()
    [(path, message)] = caught.value.errors
    assert path == "proxy.ssl_certificate"
    assert str(cert) in message and str(key) in message
    assert "No such file" in message
