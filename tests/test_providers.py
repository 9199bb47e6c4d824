"""Provider round trips, binding to the etcd key, fail-closed tampering and exact framing errors.

The wrong-key test runs 100,000 random aescbc keys against the real stored values of the
b-aescbc fixture (kube-apiserver v1.36.2, shared/fixtures/apiserver-v1.36/b-aescbc) and requires
that none of them counts as readable (padding passes AND the plaintext is a Kubernetes object).
"""

from __future__ import annotations

import base64
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot_tools import objects
from snapshot_tools.errors import InvalidCiphertext, MalformedValue
from snapshot_tools.providers import (
    aescbc,
    identity,
    kms_prefix,
    kmsv1,
    kmsv2,
    static_prefix,
    static_provider,
)
from tests.support.fixtures import FIXTURES

AESCBC, AESGCM, SECRETBOX = (static_provider(n) for n in ("aescbc", "aesgcm", "secretbox"))

AES_KEYS = st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n))
KEY32 = st.binary(min_size=32, max_size=32)
# Up to 3 KiB: crosses aescbc's switch from ECB+XOR to a CBC context at 1 KiB.
PLAINTEXTS = st.binary(max_size=3000)
ETCD_KEYS = st.binary(min_size=1, max_size=120)
SEEDS = st.integers(min_value=32, max_value=64).flatmap(lambda n: st.binary(min_size=n, max_size=n))
ANNOTATIONS = st.dictionaries(
    st.from_regex(r"[a-z0-9]{1,10}\.[a-z]{2,8}", fullmatch=True), st.binary(max_size=40), max_size=3
)

ROUND_TRIP = settings(max_examples=150, deadline=None)


# -- round trips -----------------------------------------------------------------------------------


@ROUND_TRIP
@given(key=AES_KEYS, plaintext=PLAINTEXTS)
def test_aescbc_round_trip(key: bytes, plaintext: bytes) -> None:
    body = AESCBC.encrypt(key, plaintext)
    assert len(body) == 16 + 16 * (len(plaintext) // 16 + 1)
    assert AESCBC.decrypt(key, body) == plaintext


@ROUND_TRIP
@given(key=AES_KEYS, plaintext=PLAINTEXTS, etcd_key=ETCD_KEYS)
def test_aesgcm_round_trip(key: bytes, plaintext: bytes, etcd_key: bytes) -> None:
    body = AESGCM.encrypt(key, plaintext, etcd_key)
    assert len(body) == len(plaintext) + 28
    assert AESGCM.decrypt(key, body, etcd_key) == plaintext


@ROUND_TRIP
@given(key=KEY32, plaintext=PLAINTEXTS)
def test_secretbox_round_trip(key: bytes, plaintext: bytes) -> None:
    body = SECRETBOX.encrypt(key, plaintext)
    assert len(body) == len(plaintext) + 40
    assert SECRETBOX.decrypt(key, body) == plaintext


@ROUND_TRIP
@given(
    dek=KEY32,
    encrypted_dek=st.binary(min_size=1, max_size=600),
    plaintext=PLAINTEXTS,
    etcd_key=ETCD_KEYS,
)
def test_kmsv1_round_trip(
    dek: bytes, encrypted_dek: bytes, plaintext: bytes, etcd_key: bytes
) -> None:
    payload = kmsv1.encrypt(dek, encrypted_dek, plaintext, etcd_key)
    got_dek, data = kmsv1.split(payload)
    assert got_dek == encrypted_dek
    assert kmsv1.decrypt_payload(dek, data, etcd_key) == (plaintext, "gcm")


@ROUND_TRIP
@given(
    seed=SEEDS,
    source=st.binary(min_size=1, max_size=1024),
    key_id=st.text(min_size=1, max_size=40),
    annotations=ANNOTATIONS,
    plaintext=PLAINTEXTS,
    etcd_key=ETCD_KEYS,
)
def test_kmsv2_round_trip(
    seed: bytes,
    source: bytes,
    key_id: str,
    annotations: dict[str, bytes],
    plaintext: bytes,
    etcd_key: bytes,
) -> None:
    payload = kmsv2.encrypt(
        seed,
        plaintext,
        etcd_key,
        encrypted_dek_source=source,
        key_id=key_id,
        annotations=annotations,
    )
    obj = kmsv2.parse(payload)
    assert (obj.encrypted_dek_source, obj.key_id, obj.annotations) == (source, key_id, annotations)
    assert obj.dek_source_type == kmsv2.HKDF_SHA256_XNONCE_AES_GCM_SEED
    assert kmsv2.serialize(obj) == payload
    assert kmsv2.decrypt(obj, seed, etcd_key) == plaintext


def test_identity() -> None:
    assert identity.decrypt(b"k8s\x00abc") == b"k8s\x00abc"
    assert identity.encrypt(b'{"a":1}') == b'{"a":1}'
    with pytest.raises(MalformedValue, match="identity transformer tried to read encrypted data"):
        identity.decrypt(b"k8s:enc:aescbc:v1:key1:xxxx")
    with pytest.raises(ValueError, match="must not start with 'k8s:enc:'"):
        identity.encrypt(b"k8s:enc:x")


def test_prefixes() -> None:
    assert static_prefix("secretbox", "a:b") == b"k8s:enc:secretbox:v1:a:b:"
    assert kms_prefix("v1", "x:y") == b"k8s:enc:kms:v1:x:y:"
    with pytest.raises(ValueError, match="must not contain ':'"):
        kms_prefix("v2", "x:y")
    with pytest.raises(ValueError, match="provider must be one of"):
        static_prefix("identity", "k")
    with pytest.raises(ValueError, match="key name must not be empty"):
        static_prefix("aescbc", "")


# -- binding to the etcd key -----------------------------------------------------------------------


def test_moved_to_another_etcd_key() -> None:
    """aesgcm and KMS bind the value to its etcd key (AAD); aescbc and secretbox do not."""
    plaintext, here, there = b"k8s\x00payload", b"/registry/secrets/a/x", b"/registry/secrets/a/y"
    key = os.urandom(32)
    assert AESCBC.decrypt(key, AESCBC.encrypt(key, plaintext)) == plaintext
    assert SECRETBOX.decrypt(key, SECRETBOX.encrypt(key, plaintext)) == plaintext
    with pytest.raises(InvalidCiphertext):
        AESGCM.decrypt(key, AESGCM.encrypt(key, plaintext, here), there)
    payload = kmsv2.encrypt(key, plaintext, here, encrypted_dek_source=b"w", key_id="k")
    obj = kmsv2.parse(payload)
    assert kmsv2.decrypt(obj, key, here) == plaintext
    with pytest.raises(InvalidCiphertext):
        kmsv2.decrypt(obj, key, there)
    _, data = kmsv1.split(kmsv1.encrypt(key, b"w", plaintext, here))
    with pytest.raises(InvalidCiphertext):
        kmsv1.decrypt_payload(key, data, there)


# -- tampering fails closed for the AEADs ----------------------------------------------------------


def _flips(data: bytes) -> list[bytes]:
    out = []
    for i in range(len(data)):
        b = bytearray(data)
        b[i] ^= 0x01 << (i % 8)
        out.append(bytes(b))
    return out


def test_tampered_aesgcm_and_secretbox_fail_closed() -> None:
    key, aad, plaintext = os.urandom(32), b"/registry/secrets/ns/n", os.urandom(50)
    for bad in _flips(AESGCM.encrypt(key, plaintext, aad)):
        with pytest.raises(InvalidCiphertext, match=r"^decryption failed$"):
            AESGCM.decrypt(key, bad, aad)
    for bad in _flips(SECRETBOX.encrypt(key, plaintext)):
        with pytest.raises(InvalidCiphertext, match=r"^decryption failed$"):
            SECRETBOX.decrypt(key, bad)
    with pytest.raises(InvalidCiphertext):
        AESGCM.decrypt(os.urandom(32), AESGCM.encrypt(key, plaintext, aad), aad)
    with pytest.raises(InvalidCiphertext):
        SECRETBOX.decrypt(os.urandom(32), SECRETBOX.encrypt(key, plaintext))


def test_tampered_kms_envelopes_fail_closed() -> None:
    seed, aad, plaintext = os.urandom(32), b"/registry/secrets/ns/n", os.urandom(50)
    obj = kmsv2.parse(kmsv2.encrypt(seed, plaintext, aad, encrypted_dek_source=b"w", key_id="k"))
    for bad in _flips(obj.encrypted_data):
        tampered = kmsv2.EncryptedObject(bad, obj.key_id, obj.encrypted_dek_source, {}, 1)
        with pytest.raises(InvalidCiphertext):
            kmsv2.decrypt(tampered, seed, aad)
    # A type-0 reading of seed-mode data fails too (the DEK is not the seed).
    as_key = kmsv2.EncryptedObject(obj.encrypted_data, "k", b"w", {}, kmsv2.AES_GCM_KEY)
    with pytest.raises(InvalidCiphertext):
        kmsv2.decrypt(as_key, seed, aad)
    dek = os.urandom(32)
    _, data = kmsv1.split(kmsv1.encrypt(dek, b"w", plaintext, aad))
    for bad in _flips(data)[::7]:
        with pytest.raises(InvalidCiphertext):
            kmsv1.decrypt_payload(dek, bad, aad)


def test_kmsv1_cbc_fallback_is_reported() -> None:
    dek, plaintext = os.urandom(32), b"k8s\x00legacy"
    payload = kmsv1._encrypt_cbc_from_parts(dek, b"w", plaintext, os.urandom(16))
    _, data = kmsv1.split(payload)
    assert kmsv1.decrypt_payload(dek, data, b"/any/key") == (plaintext, "cbc")


# -- framing errors are exact ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body_len", "message"),
    [
        (0, "aescbc: the stored data was shorter than the required size"),
        (15, "aescbc: the stored data was shorter than the required size"),
        (16, "aescbc: the stored data has no ciphertext after the IV"),
        (17, "aescbc: the stored data is not a multiple of the block size"),
        (40, "aescbc: the stored data is not a multiple of the block size"),
    ],
)
def test_aescbc_framing(body_len: int, message: str) -> None:
    with pytest.raises(MalformedValue) as err:
        AESCBC.decrypt(os.urandom(32), os.urandom(body_len))
    assert str(err.value) == message


def test_aescbc_one_context_serves_interleaved_values() -> None:
    """The per-key CBC context is reused across values (IV fed in front): values of any length,
    failed ones in between, always decrypt independently of what came before."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = os.urandom(32)
    plaintexts = [os.urandom(n) for n in (0, 1, 15, 16, 17, 100, 1500, 5000, 3, 64)]
    bodies = [AESCBC.encrypt(key, p) for p in plaintexts]
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    bad = iv + enc.update(os.urandom(31) + b"\x00") + enc.finalize()  # last byte 0: rejected
    for _ in range(3):
        for plaintext, body in zip(plaintexts, bodies, strict=True):
            with pytest.raises(InvalidCiphertext):
                AESCBC.decrypt(key, bad)
            assert AESCBC.decrypt(key, body) == plaintext


def test_aescbc_encrypt_with_a_shared_context_is_standard_cbc_with_fresh_ivs() -> None:
    """encrypt() reuses one CBC context per key (steered onto each fresh IV): every body must
    still be plain ``IV || AES-CBC(key, IV, PKCS#7(p))`` with its own IV."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = os.urandom(32)
    plaintexts = [os.urandom(n) for n in (0, 1, 15, 16, 17, 100, 5000)] * 3
    bodies = [AESCBC.encrypt(key, p) for p in plaintexts]
    assert len({b[:16] for b in bodies}) == len(bodies)
    for plaintext, body in zip(plaintexts, bodies, strict=True):
        assert len(body) == 16 + (len(plaintext) // 16 + 1) * 16
        dec = Cipher(algorithms.AES(key), modes.CBC(body[:16])).decryptor()
        unpad = padding.PKCS7(128).unpadder()
        assert unpad.update(dec.update(body[16:]) + dec.finalize()) + unpad.finalize() == plaintext


@ROUND_TRIP
@given(
    key=AES_KEYS,
    steps=st.lists(
        st.tuples(PLAINTEXTS, st.binary(min_size=16, max_size=16), st.sampled_from(["enc", "dec", ""])),
        min_size=1,
        max_size=6,
    ),
)
def test_aescbc_core_equals_a_fresh_cbc_context(
    key: bytes, steps: list[tuple[bytes, bytes, str]]
) -> None:
    """The deterministic core (what encrypt() and the golden vectors both use) steers the key's
    shared contexts onto the given IV: whatever they did before (other encryptions, decryptions
    of good and bad bodies), the body is what a fresh ``CBC(iv)`` context gives."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    for plaintext, iv, before in steps:
        if before == "enc":
            AESCBC.encrypt(key, os.urandom(len(plaintext) % 40))
        elif before == "dec":
            with pytest.raises(InvalidCiphertext):
                AESCBC.decrypt(key, os.urandom(16) + _cbc_tail_zero(key))
        padder = padding.PKCS7(128).padder()
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        want = iv + enc.update(padder.update(plaintext) + padder.finalize()) + enc.finalize()
        assert aescbc._encrypt_from_parts(key, plaintext, iv) == want
        assert AESCBC.decrypt(key, want, b"") == plaintext


def _cbc_tail_zero(key: bytes) -> bytes:
    """Two ciphertext blocks whose plaintext ends in 0x00 under any IV (rejected padding)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    c1 = os.urandom(16)
    enc = Cipher(algorithms.AES(key), modes.CBC(c1)).encryptor()
    return c1 + enc.update(os.urandom(15) + b"\x00") + enc.finalize()


def test_aescbc_padding_rules_follow_go() -> None:
    """Go checks the last byte c (reject 0 or > len) and that the last c bytes equal c, with no
    cap at 16; we build plaintexts with chosen tails and encrypt them without our padding."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, iv = os.urandom(16), os.urandom(16)

    def raw(plain: bytes) -> bytes:
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        return iv + enc.update(plain) + enc.finalize()

    body = b"A" * 12 + b"\x14" * 20  # pad 20 > 16: Go accepts, strips 20 bytes
    assert AESCBC.decrypt(key, raw(body)) == b"A" * 12
    assert AESCBC.decrypt(key, raw(b"\x20" * 32)) == b""  # c == len: everything is padding
    for bad in (b"A" * 31 + b"\x00", b"A" * 30 + b"\x03\x02", b"A" * 15 + b"\x21" * 17):
        with pytest.raises(InvalidCiphertext, match=r"^decryption failed$"):
            AESCBC.decrypt(key, raw(bad))
    with pytest.raises(InvalidCiphertext):
        AESCBC.decrypt(key, raw(b"\x21" * 32))  # c = 33 > len 32


@pytest.mark.parametrize("n", [0, 11, 12, 27])
def test_aesgcm_framing(n: int) -> None:
    with pytest.raises(MalformedValue, match=r"^aesgcm: the stored data was shorter"):
        AESGCM.decrypt(os.urandom(16), os.urandom(n), b"k")


@pytest.mark.parametrize("n", [0, 24, 39])
def test_secretbox_framing(n: int) -> None:
    with pytest.raises(MalformedValue, match=r"^secretbox: the stored data was shorter"):
        SECRETBOX.decrypt(os.urandom(32), os.urandom(n))


def test_key_sizes() -> None:
    for size in (0, 8, 15, 31, 33, 64):
        key = os.urandom(size)
        aes_sizes = f"key must be 16, 24 or 32 bytes, got {size}$"
        with pytest.raises(ValueError, match=f"^aescbc {aes_sizes}"):
            AESCBC.decrypt(key, os.urandom(32))
        with pytest.raises(ValueError, match=f"^aesgcm {aes_sizes}"):
            AESGCM.encrypt(key, b"x", b"k")
        with pytest.raises(ValueError, match=f"^secretbox key must be 32 bytes, got {size}$"):
            SECRETBOX.decrypt(key, os.urandom(48))
    with pytest.raises(ValueError, match=r"^secretbox key must be 32 bytes, got 16$"):
        SECRETBOX.encrypt(os.urandom(16), b"x")
    with pytest.raises(ValueError, match=r"^aescbc IV must be 16 bytes, got 12$"):
        aescbc._encrypt_from_parts(os.urandom(16), b"x", os.urandom(12))
    with pytest.raises(ValueError, match=r"^KMS v1 DEK must be 32 bytes, got 16$"):
        kmsv1.encrypt(os.urandom(16), b"w", b"x", b"k")
    with pytest.raises(ValueError, match=r"^KMS v2 seed must be at least 32 bytes, got 31$"):
        kmsv2.encrypt(os.urandom(31), b"x", b"k", encrypted_dek_source=b"w", key_id="k")


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00", b"\x00\x05abc", b"\xff\xff" + b"x" * 100, b"\x00\x00rest"],
)
def test_kmsv1_bad_frames(payload: bytes) -> None:
    with pytest.raises(MalformedValue, match=r"^kms v1: "):
        kmsv1.split(payload)


def test_kmsv1_payload_errors() -> None:
    dek = os.urandom(32)
    with pytest.raises(MalformedValue, match="shorter than the required size"):
        kmsv1.decrypt_payload(dek, os.urandom(20), b"k")  # neither GCM (28) nor CBC blocks
    with pytest.raises(InvalidCiphertext, match="data key has an invalid length"):
        kmsv1.decrypt_payload(os.urandom(31), os.urandom(64), b"k")
    with pytest.raises(InvalidCiphertext, match=r"^decryption failed$"):
        kmsv1.decrypt_payload(dek, os.urandom(29), b"k")  # GCM-sized only, fails auth


def _obj(**changes: object) -> kmsv2.EncryptedObject:
    base: dict[str, object] = {
        "encrypted_data": b"d" * 80,
        "key_id": "kek-1",
        "encrypted_dek_source": b"s" * 40,
        "annotations": {"a.example.com": b"v"},
        "dek_source_type": 1,
    }
    base.update(changes)
    return kmsv2.EncryptedObject(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dek_source_type": 2}, "unknown encryptedDEKSourceType: 2"),
        ({"encrypted_data": b""}, "encrypted data is empty"),
        (
            {"encrypted_dek_source": b""},
            "failed to validate encrypted DEK source: encrypted DEK source is empty",
        ),
        (
            {"encrypted_dek_source": b"s" * 1025},
            (
                "failed to validate encrypted DEK source: encrypted DEK source is 1025 bytes, "
                "which exceeds the max size of 1024"
            ),
        ),
        ({"key_id": ""}, "failed to validate key id: keyID is empty"),
        (
            {"key_id": "é" * 513},
            "failed to validate key id: keyID is 1026 bytes, which exceeds the max size of 1024",
        ),
        (
            {"annotations": {"single": b"v"}},
            (
                "failed to validate annotations: annotation key 'single' is not a fully qualified "
                "domain name"
            ),
        ),
        (
            {"annotations": {"Upper.example.com": b"v"}},
            (
                "failed to validate annotations: annotation key 'Upper.example.com' is not a fully "
                "qualified domain name"
            ),
        ),
        (
            {"annotations": {"a..b": b"v"}},
            (
                "failed to validate annotations: annotation key 'a..b' is not a fully qualified "
                "domain name"
            ),
        ),
        (
            {"annotations": {"x." + "a" * 64 + ".com": b"v"}},
            "failed to validate annotations: annotation key 'x."
            + "a" * 64
            + ".com' is not a fully qualified domain name",
        ),
        (
            {"annotations": {"a.example.com": b"v" * (32768 - 12)}},
            (
                "failed to validate annotations: total size of annotations is 32769, which exceeds "
                "the max size of 32768"
            ),
        ),
    ],
)
def test_kmsv2_validation(changes: dict[str, object], message: str) -> None:
    obj = _obj(**changes)
    assert kmsv2.validation_error(obj) == message
    with pytest.raises(ValueError, match=r".") as err:  # the exact text is checked below
        kmsv2.serialize(obj)
    assert str(err.value) == message
    # The same failure when reading: build the wire bytes by hand, bypassing validation.
    from snapshot_tools.proto import kmsv2_encrypted_object_pb2 as pb

    wire = pb.EncryptedObject(
        encryptedData=obj.encrypted_data,
        keyID=obj.key_id,
        encryptedDEKSource=obj.encrypted_dek_source,
        annotations=obj.annotations,
        encryptedDEKSourceType=obj.dek_source_type,  # type: ignore[arg-type]
    ).SerializeToString()
    with pytest.raises(MalformedValue) as err2:
        kmsv2.parse(wire)
    assert str(err2.value) == f"kms v2: {message}"


def test_kmsv2_validation_edges_that_pass() -> None:
    for key in ("dev.k8s.io.", "10.0.0.1", "a-b.c-d", "x" * 63 + ".io"):
        assert kmsv2.validation_error(_obj(annotations={key: b""})) is None, key
    exactly = {"a.example.com": b"v" * (32768 - 13)}  # 13 + 32755 = 32768: allowed (check is >)
    assert kmsv2.validation_error(_obj(annotations=exactly)) is None
    assert kmsv2.validation_error(_obj(encrypted_dek_source=b"s" * 1024, key_id="k" * 1024)) is None


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x12\x02\xff\xfe"])
def test_kmsv2_unparsable(payload: bytes) -> None:
    message = "^kms v2: the stored data is not a valid EncryptedObject$"
    with pytest.raises(MalformedValue, match=message):
        kmsv2.parse(payload)


def test_kmsv2_decrypt_size_errors() -> None:
    aad = b"/registry/secrets/a/b"
    seed_obj = _obj(encrypted_data=b"d" * 59)
    with pytest.raises(MalformedValue, match="shorter than the required size"):
        kmsv2.decrypt(seed_obj, os.urandom(32), aad)
    with pytest.raises(InvalidCiphertext, match="seed has an invalid length"):
        kmsv2.decrypt(_obj(), os.urandom(31), aad)
    key_obj = _obj(dek_source_type=0, encrypted_data=b"d" * 27)
    with pytest.raises(MalformedValue, match="shorter than the required size"):
        kmsv2.decrypt(key_obj, os.urandom(32), aad)
    with pytest.raises(InvalidCiphertext, match="data key has an invalid length"):
        kmsv2.decrypt(_obj(dek_source_type=0), os.urandom(20), aad)


def test_kmsv2_cache_key_annotation_order_and_absence() -> None:
    one = kmsv2.cache_key(1, b"src", "id", {"b.io": b"2", "a.io": b"1"})
    two = kmsv2.cache_key(1, b"src", "id", {"a.io": b"1", "b.io": b"2"})
    assert one == two
    assert one.endswith(b"\x00\x04a.io\x00\x011\x00\x04b.io\x00\x012")
    bare = kmsv2.cache_key(1, b"src", "id", {})
    assert bare == b"\x00\x00\x00\x01\x00\x03src\x00\x02id"
    assert kmsv2.cache_key(0, b"src", "id") != bare


# -- wrong aescbc keys never count as readable -----------------------------------------------------


def test_100k_wrong_aescbc_keys_never_readable() -> None:
    raw = json.loads((FIXTURES / "b-aescbc" / "etcd-raw-values.json").read_text())
    prefix = b"k8s:enc:aescbc:v1:key1:"
    bodies = []
    for entry in raw["values"]:
        value = base64.b64decode(entry["value_b64"])
        if value.startswith(prefix):
            bodies.append(value[len(prefix) :])
    assert len(bodies) == 14
    right = base64.b64decode("Q/6UFRHDGhUKxtX2dDTCg9tmczF4fSjQe9hfAMKnfYg=")
    assert all(objects.is_kubernetes_object(AESCBC.decrypt(right, b)) for b in bodies)

    decrypt, sniff = AESCBC.decrypt, objects.is_kubernetes_object
    small = [b for b in bodies if len(b) <= 2048]  # the 100 KiB Secret gets fewer tries below
    large = [b for b in bodies if len(b) > 2048]
    keys = os.urandom(32 * 100_000)
    padding_passed = readable = tried = 0
    for i in range(100_000):
        key = keys[32 * i : 32 * i + 32]
        body = large[i % len(large)] if i % 500 == 0 else small[i % len(small)]
        tried += 1
        try:
            plaintext = decrypt(key, body)
        except InvalidCiphertext:
            continue
        padding_passed += 1
        if sniff(plaintext):
            readable += 1
    assert tried == 100_000
    assert readable == 0
    # About 1 in 256 wrong keys pass the padding check; proves the sniff is what rejects them.
    assert 200 < padding_passed < 800
