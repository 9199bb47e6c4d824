"""The local-KEK hierarchy over AWS KMS (moto): remote calls counted at the proxy, faults.

The proxy counts every HTTP call the plugin makes to AWS, so the figures below are what AWS
would bill and throttle, not what the plugin believes it did.
"""

from __future__ import annotations

import os

import pytest

from kms_plugin.client import KMSv2Client
from kms_plugin.errors import PluginError, PluginUnavailable
from tests.support.aws import served_aws, wait_for
from tests.support.kms import health_get, short_dir

REMOTE = ("Encrypt", "Decrypt")
QUIET = {"probe_interval": 3600.0}  # only the start-up probe: the counts below are all requests'


def _client(d, timeout: float = 5) -> KMSv2Client:
    return KMSv2Client(f"unix://{d / 'p.sock'}", timeout=timeout)


def test_ten_thousand_calls_make_at_most_two_remote_calls_and_a_restart_two_more(moto_kms, proxy) -> None:
    arn = moto_kms.create_key()
    values = []
    with short_dir() as d:
        with served_aws(d, proxy.url, arn, **QUIET), _client(d) as c:
            key_id = c.status().key_id
            before = proxy.count(*REMOTE)
            for _ in range(5000):
                seed = os.urandom(32)
                enc = c.encrypt(seed)
                assert enc.key_id == key_id
                values.append((seed, enc))
            for seed, enc in values:
                assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed
            warm = proxy.count(*REMOTE) - before
        assert 1 <= warm <= 2  # the Encrypt that wrapped the local KEK (and nothing per call)

        # Restart: the cache is cold; the first Decrypt unwraps the local KEK once.
        with served_aws(d, proxy.url, arn, **QUIET), _client(d) as c:
            before = proxy.count(*REMOTE)
            for seed, enc in values[::10]:
                assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed
            for _ in range(100):
                assert c.encrypt(b"x" * 32).key_id == key_id
            cold = proxy.count(*REMOTE) - before
        assert cold == 2  # one Decrypt of the old local KEK, one Encrypt of a new one


def test_faults_serve_from_cache_report_health_and_meet_deadlines(moto_kms, proxy) -> None:
    arn = moto_kms.create_key()
    with short_dir() as d:
        # A value whose local KEK this plugin instance has never seen (another replica wrote it).
        with served_aws(d, proxy.url, arn, **QUIET), _client(d) as c:
            foreign_seed = os.urandom(32)
            foreign = c.encrypt(foreign_seed)
        with served_aws(d, proxy.url, arn, probe_interval=0.2, call_timeout=2.5) as server, _client(d) as c:
            seed = os.urandom(32)
            enc = c.encrypt(seed)
            assert c.status().healthz == "ok"

            # AWS hangs: cached work goes on; calls that need AWS fail before the caller's deadline.
            proxy.set("delay", delay=4.0)
            for _ in range(50):
                assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed
                assert c.encrypt(seed).key_id == enc.key_id
            with _client(d, timeout=1.5) as short, pytest.raises(PluginUnavailable) as info:
                short.decrypt(foreign.ciphertext, foreign.key_id, foreign.annotations)
            # The plugin answered (UNAVAILABLE with its reason), not the client's deadline.
            assert "UNAVAILABLE" in str(info.value) and "no answer within" in str(info.value)
            _code, body = wait_for(lambda: (r := health_get(server, "/healthz"))[0] == 503 and r, timeout=15)
            assert "no answer" in body or "cannot reach" in body
            assert health_get(server, "/livez")[0] == 503  # transient: a restart may help
            assert c.status().healthz != "ok"

            # Throttled: healthz reports it, livez stays up, cached calls still work.
            proxy.set("error", code="ThrottlingException")
            wait_for(lambda: "throttled" in c.status().healthz, timeout=15)
            assert health_get(server, "/livez") == (200, "ok\n")
            assert health_get(server, "/readyz")[0] == 503
            assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed
            with pytest.raises(PluginError, match="RESOURCE_EXHAUSTED"):
                c.decrypt(foreign.ciphertext, foreign.key_id, foreign.annotations)

            # Dropped connections: transient again.
            proxy.set("drop")
            wait_for(lambda: health_get(server, "/livez")[0] == 503, timeout=15)

            # Recovery.
            proxy.clear()
            wait_for(lambda: c.status().healthz == "ok", timeout=15)
            assert health_get(server, "/livez") == (200, "ok\n")
            assert c.decrypt(foreign.ciphertext, foreign.key_id, foreign.annotations) == foreign_seed


def test_local_kek_rotates_after_max_uses_and_refuses_mismatches(moto_kms, proxy) -> None:
    arn = moto_kms.create_key()
    with short_dir() as d, served_aws(d, proxy.url, arn, local_kek_max_uses=3, **QUIET), _client(d) as c:
        encs = [c.encrypt(bytes([i]) * 32) for i in range(7)]
        annotation = "encrypted-local-kek.kms-plugin.local"
        keks = [e.annotations[annotation] for e in encs]
        assert keks[0] == keks[1] == keks[2] != keks[3]
        assert keks[3] == keks[5] != keks[6]
        assert {e.key_id for e in encs} == {c.status().key_id}  # never a local KEK's id
        for i, e in enumerate(encs):
            assert c.decrypt(e.ciphertext, e.key_id, e.annotations) == bytes([i]) * 32
        # A ciphertext paired with another local KEK, a foreign annotation, a missing one.
        with pytest.raises(Exception, match="INVALID_ARGUMENT"):
            c.decrypt(encs[0].ciphertext, encs[0].key_id, {annotation: keks[3]})
        with pytest.raises(Exception, match="INVALID_ARGUMENT"):
            c.decrypt(encs[0].ciphertext, encs[0].key_id, {**encs[0].annotations, "x.kms-plugin.local": b"1"})
        with pytest.raises(Exception, match="INVALID_ARGUMENT"):
            c.decrypt(encs[0].ciphertext, encs[0].key_id, {})
        with pytest.raises(Exception, match="INVALID_ARGUMENT"):
            c.decrypt(encs[0].ciphertext, "sha256:" + "1" * 64, encs[0].annotations)
