"""The AWS KMS backend against a real moto server over HTTP, through the plugin's gRPC socket.

Keys, aliases and rotations are made with boto3 straight at moto; the plugin reaches moto
through :class:`tests.support.aws.FaultProxy`, which counts calls and injects faults.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from kms_plugin.client import KMSv1Client, KMSv2Client
from kms_plugin.errors import InvalidCiphertext, PluginError, PluginUnavailable
from kms_plugin.keks import awsformat
from tests.support.aws import REGION, served_aws, wait_for
from tests.support.cli import KMS_PLUGIN
from tests.support.kms import health_get, short_dir

FAST = {"probe_interval": 0.2}


def _client(d) -> KMSv2Client:
    return KMSv2Client(f"unix://{d / 'p.sock'}", timeout=5)


@pytest.mark.parametrize("local_kek", [False, True])
def test_round_trip_via_alias_and_key_id(moto_kms, proxy, local_kek: bool) -> None:
    name = f"rt-{local_kek}-{os.getpid()}"
    arn = moto_kms.create_key(alias=name)
    context = {"cluster": "c1"}
    with (
        short_dir() as d,
        served_aws(d, proxy.url, f"alias/{name}", context=context, local_kek=local_kek, enable_v1=True),
        _client(d) as c,
    ):
        status = c.status()
        assert status.healthz == "ok"
        # A hash of the ARN (and rotation state), never the ARN or the alias itself.
        assert status.key_id == awsformat.key_id_for(arn, "")
        assert arn not in status.key_id and name not in status.key_id
        seed = os.urandom(32)
        enc = c.encrypt(seed)
        assert enc.key_id == status.key_id
        assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed
        if local_kek:
            assert enc.ciphertext[:3] == b"kh\x01"
            assert set(enc.annotations) == {"encrypted-local-kek.kms-plugin.local"}
            wrapped_kek = enc.annotations["encrypted-local-kek.kms-plugin.local"]
            assert wrapped_kek[:3] == b"ka\x01"
        else:
            assert enc.annotations == {}
            # Our header around a plain CiphertextBlob: AWS itself opens it under the context.
            blob = enc.ciphertext[3:]
            assert enc.ciphertext[:3] == b"ka\x01"
            assert moto_kms.client().decrypt(CiphertextBlob=blob, EncryptionContext=context)["Plaintext"] == seed
        # Tampering is refused as INVALID_ARGUMENT.
        bad = bytearray(enc.ciphertext)
        bad[-1] ^= 1
        with pytest.raises(InvalidCiphertext):
            c.decrypt(bytes(bad), enc.key_id, enc.annotations)
        with pytest.raises(InvalidCiphertext):
            c.decrypt(enc.ciphertext, "sha256:" + "0" * 64, enc.annotations)
        # KMS v1 has no annotations to carry a local KEK: it is served by AWS directly.
        with KMSv1Client(f"unix://{d / 'p.sock'}", timeout=5) as v1:
            cipher = v1.encrypt(seed)
            assert cipher[:3] == b"ka\x01"
            assert v1.decrypt(cipher) == seed
    assert proxy.count("DescribeKey") >= 1


def test_disabled_then_enabled_and_pending_deletion_health(moto_kms, proxy) -> None:
    arn = moto_kms.create_key()
    key = arn.rsplit("/", 1)[1]  # moto's disable/enable take a bare key id
    kms = moto_kms.client()
    with short_dir() as d, served_aws(d, proxy.url, arn, **FAST) as server, _client(d) as c:
        assert c.status().healthz == "ok"
        assert health_get(server, "/healthz")[0] == 200
        kms.disable_key(KeyId=key)
        _code, body = wait_for(lambda: (r := health_get(server, "/healthz"))[0] == 503 and r)
        assert "Disabled" in body
        assert health_get(server, "/readyz")[0] == 503
        assert health_get(server, "/livez") == (200, "ok\n")  # user-caused: no restart
        st = c.status()
        assert st.healthz != "ok" and "Disabled" in st.healthz and len(st.healthz) < 100
        assert st.key_id == awsformat.key_id_for(arn, "")
        kms.enable_key(KeyId=key)
        wait_for(lambda: c.status().healthz == "ok")
        assert health_get(server, "/healthz") == (200, "ok\n")
        kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
        wait_for(lambda: "PendingDeletion" in c.status().healthz)
        assert health_get(server, "/livez")[0] == 200
        assert health_get(server, "/readyz")[0] == 503
        kms.cancel_key_deletion(KeyId=key)
        kms.enable_key(KeyId=key)
        wait_for(lambda: c.status().healthz == "ok")


def test_wrong_encryption_context_is_invalid_ciphertext(moto_kms, proxy) -> None:
    arn = moto_kms.create_key()
    with short_dir() as d:
        with served_aws(d, proxy.url, arn, context={"env": "prod"}, local_kek=False), _client(d) as c:
            seed = os.urandom(32)
            enc = c.encrypt(seed)
            assert c.decrypt(enc.ciphertext, enc.key_id) == seed
        with served_aws(d, proxy.url, arn, context={"env": "dev"}, local_kek=False), _client(d) as c:
            assert c.status().healthz == "ok"  # its own round trips are fine
            with pytest.raises(InvalidCiphertext, match="INVALID_ARGUMENT"):
                c.decrypt(enc.ciphertext, enc.key_id)


def test_rotation_and_alias_move_change_key_id_and_old_values_decrypt(moto_kms, proxy) -> None:
    name = f"rot-{os.getpid()}"
    arn = moto_kms.create_key(alias=name)
    other = moto_kms.create_key()
    kms = moto_kms.client()
    values: list[tuple[bytes, object]] = []
    with short_dir() as d:
        with served_aws(d, proxy.url, f"alias/{name}", **FAST) as server, _client(d) as c:
            first = c.status().key_id
            seed = os.urandom(32)
            values.append((seed, c.encrypt(seed)))
            kms.rotate_key_on_demand(KeyId=arn)
            second = wait_for(lambda: (k := c.status().key_id) != first and k)
            assert second.startswith("sha256:")
            seed2 = os.urandom(32)
            enc2 = c.encrypt(seed2)
            values.append((seed2, enc2))
            assert enc2.key_id == second
            # The local KEK rotated at once with the remote key_id: another wrapped KEK.
            assert enc2.annotations != values[0][1].annotations  # type: ignore[attr-defined]
            # The alias now names another key: a new key_id again.
            kms.update_alias(AliasName=f"alias/{name}", TargetKeyId=other)
            third = wait_for(lambda: (k := c.status().key_id) not in (first, second) and k)
            assert third == awsformat.key_id_for(other, "")
            seed3 = os.urandom(32)
            values.append((seed3, c.encrypt(seed3)))
            for seed, enc in values:
                assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed  # type: ignore[attr-defined]
            assert server.backend.status().healthy
        # Restart with a cold cache: every old key_id is recomputed from the rotation lists.
        with served_aws(d, proxy.url, f"alias/{name}"), _client(d) as c:
            assert c.status().key_id == third
            for seed, enc in values:
                assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed  # type: ignore[attr-defined]


@pytest.mark.parametrize("context", [{}, {"purpose": "k8s-secrets"}])
def test_aws_encryption_provider_values_decrypt(moto_kms, proxy, context: dict) -> None:
    name = f"legacy-{len(context)}-{os.getpid()}"
    arn = moto_kms.create_key(alias=name)
    other = moto_kms.create_key(alias=name + "-other")
    kms = moto_kms.client()
    seed = os.urandom(32)
    # What aws-encryption-provider stores: '1' + CiphertextBlob, under its static context.
    legacy = b"1" + kms.encrypt(KeyId=arn, Plaintext=seed, EncryptionContext=context)["CiphertextBlob"]
    foreign = b"1" + kms.encrypt(KeyId=other, Plaintext=seed, EncryptionContext=context)["CiphertextBlob"]
    alias_arn = arn.replace(f"key/{arn.rsplit('/', 1)[1]}", f"alias/{name}")
    with short_dir() as d, served_aws(d, proxy.url, f"alias/{name}", context=context), _client(d) as c:
        for key_id in (arn, arn.rsplit("/", 1)[1], f"alias/{name}", alias_arn):
            assert c.decrypt(legacy, key_id) == seed, key_id
        # Names of other keys, and values wrapped by another key, are refused.
        for key_id in (other, f"alias/{name}-other", "alias/nope"):
            with pytest.raises(InvalidCiphertext):
                c.decrypt(legacy, key_id)
        with pytest.raises(InvalidCiphertext):
            c.decrypt(foreign, other)
        # Such values are stale to our Status key_id.
        assert c.status().key_id not in (arn, f"alias/{name}")
    if context:
        with short_dir() as d, served_aws(d, proxy.url, arn), _client(d) as c, pytest.raises(InvalidCiphertext):
            c.decrypt(legacy, arn)  # no context configured: AWS refuses


# AWS error on Decrypt -> how the plugin answers (gRPC code in the client's message) and which
# client error class it becomes.
ERROR_ROWS = [
    ("InvalidCiphertextException", 400, InvalidCiphertext, "INVALID_ARGUMENT"),
    ("IncorrectKeyException", 400, InvalidCiphertext, "INVALID_ARGUMENT"),
    ("DisabledException", 400, PluginError, "FAILED_PRECONDITION"),
    ("KMSInvalidStateException", 400, PluginError, "FAILED_PRECONDITION"),
    ("AccessDeniedException", 400, PluginError, "FAILED_PRECONDITION"),
    ("NotFoundException", 400, PluginError, "FAILED_PRECONDITION"),
    ("ThrottlingException", 400, PluginError, "RESOURCE_EXHAUSTED"),
    ("LimitExceededException", 400, PluginError, "RESOURCE_EXHAUSTED"),
    ("KMSInternalException", 500, PluginUnavailable, "UNAVAILABLE"),
    ("SomethingNew", 503, PluginUnavailable, "UNAVAILABLE"),
]


def test_aws_errors_are_classified(moto_kms, proxy) -> None:
    arn = moto_kms.create_key()
    with short_dir() as d, served_aws(d, proxy.url, arn, local_kek=False, max_attempts=1) as server, _client(d) as c:
        seed = os.urandom(32)
        enc = c.encrypt(seed)
        for code, status, cls, grpc_code in ERROR_ROWS:
            proxy.set("error", "Decrypt", code=code, status=status)
            with pytest.raises(cls) as info:
                c.decrypt(enc.ciphertext, enc.key_id)
            assert grpc_code in str(info.value), code
            assert arn not in str(info.value)
        # A dropped connection is transient; botocore's retries get past a single drop.
        proxy.set("drop", "Decrypt")
        with pytest.raises(PluginUnavailable):
            c.decrypt(enc.ciphertext, enc.key_id)
        proxy.clear()
        assert c.decrypt(enc.ciphertext, enc.key_id) == seed
        assert server.metrics.remote_calls.labels("Decrypt", "KeyUnavailable")._value.get() == 4


def test_retries_hide_a_single_failure(moto_kms, proxy) -> None:
    arn = moto_kms.create_key()
    with short_dir() as d, served_aws(d, proxy.url, arn, local_kek=False), _client(d) as c:
        enc = c.encrypt(b"s" * 32)
        faults = (
            ("drop", {}),
            ("error", {"code": "ThrottlingException"}),
            ("error", {"code": "KMSInternalException", "status": 500}),
        )
        for kind, kw in faults:
            before = proxy.count("Decrypt")
            proxy.set(kind, "Decrypt", times=1, **kw)
            assert c.decrypt(enc.ciphertext, enc.key_id) == b"s" * 32, kind
            assert proxy.count("Decrypt") - before == 2  # the failure, then the retry


def test_serve_cli_refuses_a_missing_alias(moto_kms) -> None:
    with short_dir() as d:
        proc = subprocess.run(
            [*KMS_PLUGIN, "serve", "--listen", f"unix://{d}/p.sock", "--health-addr", "off",
             "--aws-key-id", "alias/does-not-exist", "--aws-region", REGION,
             "--aws-endpoint-url", moto_kms.url],
            capture_output=True, timeout=60,
        )
        err = proc.stderr.decode().strip()
        assert proc.returncode == 2, err
        assert len(err.splitlines()) == 1 and "not found" in err and "Traceback" not in err
        assert not (d / "p.sock").exists()
        both = subprocess.run(
            [*KMS_PLUGIN, "serve", "--listen", f"unix://{d}/p.sock", "--keyring", str(d / "k"),
             "--aws-key-id", "alias/x"], capture_output=True, timeout=60,
        )
        assert both.returncode == 2 and b"may not be used together" in both.stderr
