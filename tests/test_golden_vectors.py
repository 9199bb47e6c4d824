"""Golden vectors of spec section 11 (tests/vectors/k8s_encryption_formats.json).

Provenance (also in the JSON, per vector): 11.A/11.B are upstream ``aes_test.go`` recordings;
11.C/11.D upstream ``kmsv2_transformation_test.go`` legacy data written by kube-apiserver v1.27.0
and v1.28.0 with the base64 mock plugin (plain DEK/seed = base64-decode(encryptedDEKSource));
11.E the upstream ``transformation_test.go`` plaintext Secret; 11.G deterministic vectors from
the spec's author (pyca/cryptography + PyNaCl, not upstream). Each is checked both ways where a
deterministic core exists: decrypting gives the plaintext, and ``_encrypt_from_parts`` with the
recorded nonce/IV gives the exact bytes. For the static providers the production ``encrypt`` (the
one ``reencrypt`` writes with) is pinned too: with the random source patched to hand out the
recorded IV/nonce it gives the vector, so it goes through the same core.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from snapshot_tools import objects
from snapshot_tools.errors import InvalidCiphertext
from snapshot_tools.providers import (
    aescbc,
    aesgcm,
    kms_prefix,
    kmsv1,
    kmsv2,
    secretbox,
    static_prefix,
    static_provider,
)
from snapshot_tools.unwrap import CachingUnwrapper
from tests.support.fixtures import OLD_SECRET, VECTORS

if TYPE_CHECKING:
    from collections.abc import Mapping

G_AAD = VECTORS["G"]["aad_ascii"].encode()


def _hex(entry: dict[str, Any]) -> bytes:
    """The vector's bytes, after checking the length and sha256 the spec gives for them."""
    data = bytes.fromhex(entry["hex"])
    assert len(data) == entry["len"]
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    return data


class Base64Unwrapper:
    """The upstream base64 mock plugin's unwrap (kms_plugin_mock.go): plaintext = b64decode."""

    def __init__(self) -> None:
        self.v2_calls = 0

    def unwrap_v2(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        self.v2_calls += 1
        if key_id != "1":
            raise InvalidCiphertext("unknown key id")
        return base64.b64decode(ciphertext, validate=True)

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        return base64.b64decode(ciphertext, validate=True)

    def current_key_id(self) -> str | None:
        return "1"


# -- 11.A / 11.B ----------------------------------------------------------------------------------


def test_11a_aesgcm_legacy_ciphertext() -> None:
    v = VECTORS["A"]
    body = _hex(v["ciphertext"])
    key, aad = v["key_ascii"].encode(), v["aad_ascii"].encode()
    assert static_provider("aesgcm").decrypt(key, body, aad) == v["plaintext_ascii"].encode()
    assert body[:12].hex() == v["nonce"] and body[-16:].hex() == v["tag"]
    again = aesgcm._encrypt_from_parts(key, v["plaintext_ascii"].encode(), aad, body[:12])
    assert again == body
    with pytest.raises(InvalidCiphertext):
        static_provider("aesgcm").decrypt(key, body, b"bamboO")


def test_11b_hkdf_extended_nonce_legacy_ciphertext() -> None:
    v = VECTORS["B"]
    seed, data = _hex(v["seed"]), _hex(v["ciphertext"])
    aad, plaintext = v["aad_ascii"].encode(), v["plaintext_ascii"].encode()
    assert data[:32].hex() == v["info"] and data[32:44].hex() == v["nonce"]
    dek = kmsv2.derive_dek(seed, data[:32])
    assert dek.hex() == v["derived_dek"]
    # Cross-check the HMAC shortcut against a real HKDF-Expand implementation.
    assert HKDFExpand(hashes.SHA256(), 32, data[:32]).derive(seed) == dek
    assert kmsv2.decrypt_data(kmsv2.HKDF_SHA256_XNONCE_AES_GCM_SEED, seed, data, aad) == plaintext
    with pytest.raises(InvalidCiphertext):
        kmsv2.decrypt_data(kmsv2.HKDF_SHA256_XNONCE_AES_GCM_SEED, seed[::-1], data, aad)


# -- 11.C / 11.D: KMS v2 stored values -------------------------------------------------------------


def _check_kmsv2_secret(plaintext: bytes, want: dict[str, Any]) -> dict[str, Any]:
    assert objects.is_kubernetes_object(plaintext)
    obj = objects.decode_object(plaintext)
    assert (obj["apiVersion"], obj["kind"]) == ("v1", "Secret")
    meta = obj["metadata"]
    assert meta["namespace"] == want["namespace"]
    assert meta["name"] == want["name"]
    assert meta["uid"] == want["uid"]
    assert meta["creationTimestamp"] == want["creationTimestamp"]
    assert obj["data"] == {"api_key": want["api_key_ascii"].encode()}
    assert obj["type"] == want["type"]
    return obj


@pytest.mark.parametrize("case", ["C", "D"])
def test_kmsv2_legacy_stored_values(case: str) -> None:
    v = VECTORS[case]
    stored = _hex(v["stored_value"])
    prefix = kms_prefix("v2", "kms-provider")
    assert prefix == v["prefix_ascii"].encode() and stored.startswith(prefix)
    payload = stored[len(prefix) :]
    obj = kmsv2.parse(payload)
    assert obj.key_id == v["key_id"]
    assert obj.encrypted_dek_source == v["encrypted_dek_source_ascii"].encode()
    assert obj.annotations == {k: x.encode() for k, x in v["annotations_ascii"].items()}
    assert len(obj.encrypted_data) == v["encrypted_data_len"]
    want_type = kmsv2.AES_GCM_KEY if case == "C" else kmsv2.HKDF_SHA256_XNONCE_AES_GCM_SEED
    assert obj.dek_source_type == want_type
    # The marshalling is byte-identical to Go's (field order, absent type 0, map entry).
    assert kmsv2.serialize(obj) == payload

    unwrapper = Base64Unwrapper()
    caching = CachingUnwrapper(unwrapper)
    source = caching.unwrap_v2(obj.encrypted_dek_source, obj.key_id, obj.annotations)
    assert source.hex() == (v["dek"] if case == "C" else v["seed"])
    aad = v["etcd_key"].encode()
    plaintext = kmsv2.decrypt(obj, source, aad)
    assert len(plaintext) == v["plaintext_len"]
    decoded = _check_kmsv2_secret(plaintext, v["secret"])
    if case == "C":
        assert decoded["metadata"]["managedFields"][0]["manager"] == v["secret"]["manager"]
        assert obj.encrypted_data[:12].hex() == v["nonce"]
        # counter nonce: 4 random bytes then u64le(1 000 000 001)
        assert int.from_bytes(obj.encrypted_data[4:12], "little") == 1_000_000_001
        info = None
    else:
        info = obj.encrypted_data[:32]
        assert info.hex() == v["info"]
        assert kmsv2.derive_dek(source, info).hex() == v["derived_dek"]
        assert obj.encrypted_data[32:44].hex() == v["nonce"]
    assert obj.encrypted_data[-16:].hex() == v["tag"]

    # The AAD is the full etcd key, prefix included: without the custom prefix it fails.
    short_key = aad[aad.index(b"/registry/") :]
    with pytest.raises(InvalidCiphertext):
        kmsv2.decrypt(obj, source, short_key)

    # Encrypt from parts reproduces the recorded stored value exactly.
    nonce = obj.encrypted_data[:12] if info is None else obj.encrypted_data[32:44]
    again = kmsv2._encrypt_from_parts(
        source,
        plaintext,
        aad,
        nonce=nonce,
        info=info,
        encrypted_dek_source=obj.encrypted_dek_source,
        key_id=obj.key_id,
        annotations=obj.annotations,
        dek_source_type=obj.dek_source_type,
    )
    assert prefix + again == stored

    # A second read of the same DEK source is served from the cache.
    caching.unwrap_v2(obj.encrypted_dek_source, obj.key_id, dict(obj.annotations))
    assert unwrapper.v2_calls == 1


def test_11c_decrypt_cache_key() -> None:
    v = VECTORS["C"]
    obj = kmsv2.parse(_hex(v["stored_value"])[len(v["prefix_ascii"]) :])
    assert obj.cache_key.hex() == v["cache_key"]
    # Type is the first field of the key: the seed-mode object of 11.D differs in it.
    d = kmsv2.parse(_hex(VECTORS["D"]["stored_value"])[len(VECTORS["D"]["prefix_ascii"]) :])
    assert d.cache_key[:4] == b"\x00\x00\x00\x01"


# -- 11.E / 11.G -----------------------------------------------------------------------------------


def test_11e_plaintext_secret() -> None:
    v = VECTORS["E"]
    assert len(OLD_SECRET) == v["old_secret_len"]
    assert base64.b64decode(v["old_aescbc_key_b64"]).hex() == v["old_aescbc_key"]
    assert objects.sniff(OLD_SECRET) == "protobuf"
    obj = objects.decode_object(OLD_SECRET)
    want = v["secret"]
    assert obj["metadata"] == {
        "name": want["name"],
        "namespace": want["namespace"],
        "uid": want["uid"],
        "creationTimestamp": want["creationTimestamp"],
    }
    assert obj["data"] == {"api_key": bytes.fromhex(want["api_key"])}
    assert obj["type"] == want["type"]


@pytest.mark.parametrize("provider", ["aescbc", "aesgcm", "secretbox"])
def test_11g_static_providers(provider: str) -> None:
    v = VECTORS["G"][provider]
    stored = _hex(v["stored_value"])
    key = v["key_ascii"].encode()
    prefix = static_prefix(provider, v["key_name"])
    assert stored.startswith(prefix)
    body = stored[len(prefix) :]
    assert static_provider(provider).decrypt(key, body, G_AAD) == OLD_SECRET
    if provider == "aescbc":
        again = aescbc._encrypt_from_parts(key, OLD_SECRET, bytes.fromhex(v["iv"]))
    elif provider == "aesgcm":
        again = aesgcm._encrypt_from_parts(key, OLD_SECRET, G_AAD, bytes.fromhex(v["nonce"]))
    else:
        again = secretbox._encrypt_from_parts(key, OLD_SECRET, bytes.fromhex(v["nonce"]))
    assert prefix + again == stored


@pytest.mark.parametrize("provider", ["aescbc", "aesgcm", "secretbox"])
def test_11g_production_encrypt_is_the_pinned_core(
    provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``encrypt`` draws only its IV/nonce and hands it to the core the vectors pin: with
    ``os.urandom`` answering the recorded one, it writes the vector byte for byte (aescbc also
    after other values have gone through the key's shared CBC contexts)."""
    v = VECTORS["G"][provider]
    stored = _hex(v["stored_value"])
    key = v["key_ascii"].encode()
    static = static_provider(provider)
    body = stored[len(static_prefix(provider, v["key_name"])) :]
    for other in (b"", b"x" * 33, OLD_SECRET):  # leaves the shared contexts mid-chain
        static.decrypt(key, static.encrypt(key, other, G_AAD), G_AAD)
    recorded = bytes.fromhex(v["iv"] if provider == "aescbc" else v["nonce"])
    drawn: list[int] = []

    def urandom(n: int) -> bytes:
        drawn.append(n)
        return recorded

    monkeypatch.setattr(os, "urandom", urandom)
    assert static.encrypt(key, OLD_SECRET, G_AAD) == body
    assert drawn == [len(recorded)]


@pytest.mark.parametrize("mode", ["gcm", "cbc"])
def test_11g_kms_v1(mode: str) -> None:
    v = VECTORS["G"][f"kmsv1_{mode}"]
    stored = _hex(v["stored_value"])
    prefix = kms_prefix("v1", v["provider"])
    assert stored.startswith(prefix)
    encrypted_dek, data = kmsv1.split(stored[len(prefix) :])
    assert encrypted_dek == v["encrypted_dek_ascii"].encode()
    dek = CachingUnwrapper(Base64Unwrapper()).unwrap_v1(encrypted_dek)
    assert dek.hex() == VECTORS["E"]["old_aescbc_key"]
    plaintext, got_mode = kmsv1.decrypt_payload(dek, data, G_AAD)
    assert (plaintext, got_mode) == (OLD_SECRET, mode)
    if mode == "gcm":
        again = kmsv1._encrypt_from_parts(
            dek, encrypted_dek, OLD_SECRET, G_AAD, bytes.fromhex(v["nonce"])
        )
    else:
        iv = bytes.fromhex(v["iv"])
        again = kmsv1._encrypt_cbc_from_parts(dek, encrypted_dek, OLD_SECRET, iv)
    assert prefix + again == stored
