"""The provider registry (snapshot_tools/providers/registry.py): one table of storage forms, their
prefixes and static providers, row by row; prefix matching; the lookups configs and writers use;
and every static provider driven through the one protocol."""

from __future__ import annotations

import base64
import os
from typing import NamedTuple

import pytest

from snapshot_tools import config
from snapshot_tools.errors import InvalidCiphertext, MalformedValue
from snapshot_tools.providers import (
    ENCRYPTED_PREFIX,
    FORMATS,
    IDENTITY,
    KMS_API_VERSIONS,
    STATIC_NAMES,
    Format,
    by_name,
    format_of,
    kms_prefix,
    static_prefix,
    static_provider,
    storage_form,
)


class Row(NamedTuple):
    name: str
    prefix: bytes
    static: bool
    kms_version: str | None
    key_sizes: tuple[int, ...] | None  # static providers only
    authenticated: bool | None
    needs_aad: bool | None


# Spec 1.1 (prefix constants), 2 (aescbc: no MAC), 3.1 (aesgcm: AAD = etcd key), 4 (secretbox:
# authenticated, no AAD), 5-6 (KMS envelopes), 8.3 (key sizes).
TABLE = (
    Row("identity", b"", False, None, None, None, None),
    Row("aescbc", b"k8s:enc:aescbc:v1:", True, None, (16, 24, 32), False, False),
    Row("aesgcm", b"k8s:enc:aesgcm:v1:", True, None, (16, 24, 32), True, True),
    Row("secretbox", b"k8s:enc:secretbox:v1:", True, None, (32,), True, False),
    Row("kms-v1", b"k8s:enc:kms:v1:", False, "v1", None, None, None),
    Row("kms-v2", b"k8s:enc:kms:v2:", False, "v2", None, None, None),
)


def test_the_table_is_every_form_in_order() -> None:
    assert IDENTITY.name == "identity"
    assert [f.name for f in (IDENTITY, *FORMATS)] == [r.name for r in TABLE]
    assert STATIC_NAMES == ("aescbc", "aesgcm", "secretbox")
    assert KMS_API_VERSIONS == ("v1", "v2")
    assert config.PROVIDER_KINDS == ("identity", "aescbc", "aesgcm", "secretbox", "kms")


@pytest.mark.parametrize("row", TABLE, ids=[r.name for r in TABLE])
def test_format_row(row: Row) -> None:
    fmt = by_name(row.name)
    assert (fmt.name, fmt.prefix, fmt.kms_version) == (row.name, row.prefix, row.kms_version)
    assert (fmt.static is not None) == row.static
    if fmt is not IDENTITY:
        assert fmt.prefix.startswith(ENCRYPTED_PREFIX) and fmt.prefix.endswith(b":")
    if fmt.static is None:
        with pytest.raises(ValueError, match="provider must be one of aescbc, aesgcm, secretbox"):
            static_provider(row.name)
        return
    provider = fmt.static
    assert provider is static_provider(row.name)
    assert (provider.name, provider.prefix) == (fmt.name, fmt.prefix)
    assert provider.key_sizes == row.key_sizes
    assert provider.authenticated == row.authenticated
    assert provider.needs_aad == row.needs_aad


@pytest.mark.parametrize("row", TABLE[1:], ids=[r.name for r in TABLE[1:]])
def test_format_of_a_value(row: Row) -> None:
    fmt = by_name(row.name)
    assert format_of(row.prefix + b"key1:body") is fmt
    assert format_of(row.prefix) is fmt
    assert storage_form(row.prefix + b"key1:body") == (row.name, "key1")
    assert storage_form(row.prefix + b"a:b:c") == (row.name, "a")  # names may hold ':'
    assert storage_form(row.prefix + b"no-separator") == (row.name, None)
    assert storage_form(row.prefix + b":empty-name") == (row.name, None)


@pytest.mark.parametrize(
    "value", [b"", b"k8s\x00\x0a\x02v1", b'{"kind":"Secret"}', b"k8s:enc", b"k8s:ENC:aescbc:v1:k:"]
)
def test_plaintext_is_identity(value: bytes) -> None:
    assert format_of(value) is IDENTITY
    assert storage_form(value) == ("identity", None)


@pytest.mark.parametrize(
    "value", [b"k8s:enc:", b"k8s:enc:aescbc:v2:k:x", b"k8s:enc:kms:v3:p:x", b"k8s:enc:aesgcm"]
)
def test_unknown_encrypted_prefix(value: bytes) -> None:
    assert format_of(value) is None
    assert storage_form(value) == ("unknown", None)


def test_lookups_refuse_unknown_names() -> None:
    for name in ("kms", "AESCBC", "", "unknown"):
        with pytest.raises(ValueError, match="storage form must be one of identity, aescbc"):
            by_name(name)
    with pytest.raises(ValueError, match="provider must be one of"):
        static_provider("kms")
    with pytest.raises(ValueError, match="KMS apiVersion must be v1 or v2"):
        kms_prefix("v3", "p")
    with pytest.raises(ValueError, match="KMS provider name must not be empty"):
        kms_prefix("v2", "")


def test_prefix_builders_go_through_the_table() -> None:
    for name in STATIC_NAMES:
        assert static_prefix(name, "k") == by_name(name).prefix + b"k:"
    for version in KMS_API_VERSIONS:
        assert kms_prefix(version, "p") == by_name(f"kms-{version}").prefix + b"p:"


# -- every static provider through the protocol ----------------------------------------------------


STATIC = [f for f in FORMATS if f.static is not None]


@pytest.mark.parametrize("fmt", STATIC, ids=[f.name for f in STATIC])
def test_static_provider_protocol(fmt: Format) -> None:
    assert fmt.static is not None
    provider = fmt.static
    plaintext = b"k8s\x00\x0a\x02v1payload"
    here, there = b"/registry/secrets/a/x", b"/registry/secrets/a/y"
    for size in provider.key_sizes:
        key = os.urandom(size)
        body = provider.encrypt(key, plaintext, here)
        stored = static_prefix(provider.name, "k") + body
        assert format_of(stored) is fmt
        # bytes and a memoryview of the stored value (what the readers pass) read the same
        assert provider.decrypt(key, body, here) == plaintext
        assert provider.decrypt(key, memoryview(stored)[len(fmt.prefix) + 2 :], here) == plaintext
        assert provider.encrypt(key, plaintext, here) != body  # a fresh IV/nonce per call
        if provider.needs_aad:
            with pytest.raises(InvalidCiphertext):
                provider.decrypt(key, body, there)
        else:
            assert provider.decrypt(key, body, there) == plaintext
        if provider.authenticated:
            with pytest.raises(InvalidCiphertext):
                provider.decrypt(key, body[:-1] + bytes([body[-1] ^ 1]), here)
        with pytest.raises(MalformedValue, match=f"^{provider.name}: "):
            provider.decrypt(key, memoryview(body)[:8], here)
    for size in {0, 8, 33} - set(provider.key_sizes):
        with pytest.raises(ValueError, match=f"^{provider.name} key must be"):
            provider.encrypt(os.urandom(size), plaintext, here)


def test_config_key_sizes_come_from_the_providers() -> None:
    """A config key of a size the provider does not take is refused with the provider's sizes."""
    for name in STATIC_NAMES:
        sizes = static_provider(name).key_sizes
        secret = base64.b64encode(os.urandom(20)).decode()
        text = (
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
            f"- resources: [secrets]\n  providers:\n  - {name}:\n      keys:\n"
            f"      - name: k\n        secret: {secret}\n"
        )
        with pytest.raises(config.ConfigFileError) as err:
            config.parse_config_text(text, "c.yaml")
        assert f"expected one of [{' '.join(map(str, sizes))}]" in str(err.value)
