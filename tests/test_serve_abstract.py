"""``kms-plugin serve`` on an abstract socket needs ``--allow-abstract-socket`` (issue 9 item 7).

An abstract socket has no file mode: any process in the network namespace could call
Encrypt/Decrypt. The client side (``KMSv2Client``, used by snapshot_tools) may still connect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from kms_plugin.client import KMSv2Client
from kms_plugin.endpoint import parse_unix_endpoint
from kms_plugin.errors import ConfigError, PluginUnavailable
from kms_plugin.server import check_serving_endpoint
from tests.support.cli import KMS_PLUGIN, plugin_cli
from tests.support.kms import short_dir, start_serve


def _name() -> str:
    return f"kms-plugin-abstract-{os.getpid()}-{time.monotonic_ns()}"


def test_check_serving_endpoint() -> None:
    check_serving_endpoint(parse_unix_endpoint("unix:///run/kms.sock"), allow_abstract=False)
    check_serving_endpoint(parse_unix_endpoint("unix:///@kms"), allow_abstract=True)
    with pytest.raises(ConfigError, match="--allow-abstract-socket"):
        check_serving_endpoint(parse_unix_endpoint("unix:///@kms"), allow_abstract=False)


def test_abstract_socket_refused_without_the_flag() -> None:
    name = _name()
    with short_dir() as d:
        plugin_cli("keyring", "init", str(d / "k.json"))
        res = subprocess.run(
            [*KMS_PLUGIN, "serve", "--listen", f"unix:///@{name}", "--keyring", str(d / "k.json"),
             "--health-addr", "off"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        err = res.stderr.decode()
        assert res.returncode == 2, err
        assert err.count("\n") == 1 and err.startswith("kms-plugin: error: --listen unix:///@")
        assert "abstract socket" in err and "no file mode" in err
        assert "--allow-abstract-socket" in err
        with pytest.raises(PluginUnavailable):  # nothing was bound
            KMSv2Client(f"unix:///@{name}", timeout=1).status()


def test_abstract_socket_served_with_the_flag_and_a_warning() -> None:
    name = _name()
    with short_dir() as d:
        plugin_cli("keyring", "init", str(d / "k.json"))
        proc = start_serve("--listen", f"unix:///@{name}", "--keyring", str(d / "k.json"),
                           "--health-addr", "off", "--allow-abstract-socket")
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.communicate()[1].decode()
                try:
                    with KMSv2Client(f"unix:///@{name}", timeout=1) as c:
                        st = c.status()
                    break
                except PluginUnavailable:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            assert (st.version, st.healthz) == ("v2", "ok")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err_bytes = proc.communicate(timeout=30)
        err = err_bytes.decode()
        assert proc.returncode == 0, err
        warnings = [line for line in err.splitlines() if "WARNING" in line]
        assert any("abstract socket" in line and "no file mode" in line for line in warnings), err
