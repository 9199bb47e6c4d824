"""The ``aescbc`` provider: ``IV(16) || AES-CBC(key, IV, PKCS#7(plaintext))``, no MAC, no AAD.

``decrypt``/``encrypt`` work on the *body*, the bytes after ``k8s:enc:aescbc:v1:<keyname>:``.
There is no authentication: a wrong key passes the padding check about once in 256 tries, so
callers must also check that the plaintext is a Kubernetes object
(``objects.is_kubernetes_object``).

Speed matters here (a snapshot check reads every value), so one CBC decryption context per key
(and thread) serves every value: feeding it ``IV || ciphertext`` makes the IV the chaining block
for the first real block, and the first 16 output bytes (the IV "decrypted" against whatever came
before) are dropped. That saves building a cipher context per value, the dominant cost for small
values. Encryption reuses a context per key the same way (see :func:`encrypt`).

References: ``staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/aes/aes.go`` (type ``cbc``).
"""

from __future__ import annotations

import os
import threading

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from snapshot_tools.errors import InvalidCiphertext, MalformedValue
from snapshot_tools.providers._common import (
    BLOCK_SIZE,
    DECRYPTION_FAILED,
    KEY_CACHE_LIMIT,
    check_aes_key,
    check_size,
)

# _PADS[c] = c repeated c times; the padding check compares the tail against it.
_PADS = tuple(bytes([c]) * c for c in range(256))
_local = threading.local()


class _KeyState:
    """Cached cipher pieces for one key: long-lived CBC decryption and encryption contexts."""

    __slots__ = ("cbc", "enc")

    def __init__(self, key: bytes) -> None:
        # The IV here never matters: every value is fed with its own IV in front (see above).
        cipher = Cipher(algorithms.AES(key), modes.CBC(bytes(BLOCK_SIZE)))
        self.cbc = cipher.decryptor()
        self.enc = cipher.encryptor()

    def __repr__(self) -> str:
        return "<aescbc key state (redacted)>"


def _state(key: bytes) -> _KeyState:
    # Per thread: a cipher context must not be used by two threads at once.
    cache: dict[bytes, _KeyState] | None = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    state = cache.get(key)
    if state is None:
        check_aes_key(key, "aescbc")
        if len(cache) >= KEY_CACHE_LIMIT:
            cache.clear()
        state = cache[key] = _KeyState(key)
    return state


def decrypt(key: bytes, body: bytes) -> bytes:
    """Decrypt an aescbc body (``IV || ciphertext``) and strip the PKCS#7 padding as Go does.

    Args:
        key: 16, 24 or 32 bytes.
        body: the stored value after ``k8s:enc:aescbc:v1:<keyname>:``.

    Raises:
        ValueError: the key has an invalid length.
        MalformedValue: shorter than the IV, no ciphertext after the IV, or not whole blocks.
        InvalidCiphertext: the padding is wrong (a wrong key or corrupted data).
    """
    n = len(body)
    if n < BLOCK_SIZE:
        raise MalformedValue("aescbc: the stored data was shorter than the required size")
    if n == BLOCK_SIZE:
        # Go would index an empty plaintext here; an IV alone is never a valid value.
        raise MalformedValue("aescbc: the stored data has no ciphertext after the IV")
    if n % BLOCK_SIZE:
        raise MalformedValue("aescbc: the stored data is not a multiple of the block size")
    # out[:16] is junk (the IV decrypted against the previous value); out[16:] is the plaintext.
    out = _state(key).cbc.update(body)
    # Go's check: last byte c; reject c == 0 or c > len; the last c bytes must all equal c.
    # Like Go, c is not capped at the block size.
    c = out[-1]
    if c == 0 or c > n - BLOCK_SIZE or not out.endswith(_PADS[c]):
        raise InvalidCiphertext(DECRYPTION_FAILED)
    return out[BLOCK_SIZE:-c]


def encrypt(key: bytes, plaintext: bytes) -> bytes:
    """Encrypt with a fresh random IV; returns the body ``IV || ciphertext``.

    One long-lived CBC encryption context per key serves every value (a context per value
    cost more than encrypting a few KB): a fresh random block ``R`` goes in first, and its
    output ``AES(key, R xor previous block)`` is the IV the rest chains from. That IV is
    uniform and unpredictable, the forward cipher of a nonce (NIST SP 800-38A, Appendix C).

    Raises:
        ValueError: the key has an invalid length.
    """
    pad = BLOCK_SIZE - len(plaintext) % BLOCK_SIZE  # 1..16, a full block when aligned
    return _state(key).enc.update(os.urandom(BLOCK_SIZE) + plaintext + _PADS[pad])


def _encrypt_from_parts(key: bytes, plaintext: bytes, iv: bytes) -> bytes:
    """Deterministic core of :func:`encrypt` (vector tests pass a fixed IV)."""
    check_aes_key(key, "aescbc")
    check_size(iv, BLOCK_SIZE, "aescbc IV")
    pad = BLOCK_SIZE - len(plaintext) % BLOCK_SIZE  # 1..16, a full block when aligned
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + enc.update(plaintext + _PADS[pad]) + enc.finalize()
