"""The ``aescbc`` provider: ``IV(16) || AES-CBC(key, IV, PKCS#7(plaintext))``, no MAC, no AAD.

:data:`PROVIDER` (:func:`decrypt`, :func:`encrypt`) works on the *body*, the bytes after
``k8s:enc:aescbc:v1:<keyname>:``.
There is no authentication: a wrong key passes the padding check about once in 256 tries, so
callers must also check that the plaintext is a Kubernetes object
(``objects.is_kubernetes_object``); ``authenticated`` is False to say so.

Speed matters here (a snapshot check reads every value), so one CBC decryption context per key
(and thread) serves every value: feeding it ``IV || ciphertext`` makes the IV the chaining block
for the first real block, and the first 16 output bytes (the IV "decrypted" against whatever came
before) are dropped. That saves building a cipher context per value, the dominant cost for small
values. Encryption reuses a context per key the same way (see :func:`_encrypt_from_parts`).

References: ``staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/aes/aes.go`` (type ``cbc``).
"""

from __future__ import annotations

import os
import threading

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from snapshot_tools.errors import InvalidCiphertext, MalformedValue
from snapshot_tools.providers._common import (
    AES_KEY_SIZES,
    BLOCK_SIZE,
    DECRYPTION_FAILED,
    StaticProvider,
    check_aes_key,
    check_size,
    remember,
)

# _PADS[c] = c repeated c times; the padding check compares the tail against it.
_PADS = tuple(bytes([c]) * c for c in range(256))
_local = threading.local()


class _KeyState:
    """Cached cipher pieces for one key: long-lived CBC decryption and encryption contexts, and
    the last block the encryption context wrote (what it chains the next value from)."""

    __slots__ = ("cbc", "enc", "last")

    def __init__(self, key: bytes) -> None:
        # The IV here never matters: every value is fed with its own IV in front (see above).
        cipher = Cipher(algorithms.AES(key), modes.CBC(bytes(BLOCK_SIZE)))
        self.cbc = cipher.decryptor()
        self.enc = cipher.encryptor()
        self.last = bytes(BLOCK_SIZE)

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
        state = remember(cache, key, _KeyState(key))
    return state


def decrypt(key: bytes, body: bytes | memoryview, aad: bytes = b"") -> bytes:
    """Decrypt an aescbc body (``IV || ciphertext``) and strip the PKCS#7 padding as Go does.

    Args:
        key: 16, 24 or 32 bytes.
        body: the stored value after ``k8s:enc:aescbc:v1:<keyname>:``.
        aad: ignored.

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


def encrypt(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Encrypt with a fresh random IV; returns the body ``IV || ciphertext``.

    Raises:
        ValueError: the key has an invalid length.
    """
    return _encrypt_from_parts(key, plaintext, os.urandom(BLOCK_SIZE))


def _encrypt_from_parts(key: bytes, plaintext: bytes, iv: bytes) -> bytes:
    """``iv || AES-CBC(key, iv, PKCS#7(plaintext))``: the deterministic core of
    :func:`encrypt`, which only draws the IV (the golden vectors pin this).

    One long-lived CBC encryption context per key (and thread) serves every value: a context per
    value cost more than encrypting a few KB. That context chains on from the last block ``L``
    it wrote, so it is fed ``X = AES-1(iv) xor L`` first: its output for ``X`` is
    ``AES(X xor L) = iv``, and the rest chains from ``iv`` exactly as a fresh ``CBC(iv)`` would.
    ``X`` is the second output block of the key's long-lived CBC *decryption* context fed
    ``L || iv`` (CBC decryption gives ``AES-1(C_i) xor C_i-1``); :func:`decrypt`
    does not care what that context chained on before, since every body brings its own IV.

    Raises:
        ValueError: the key has an invalid length, or ``iv`` is not 16 bytes.
    """
    state = _state(key)
    if len(iv) != BLOCK_SIZE:
        check_size(iv, BLOCK_SIZE, "aescbc IV")  # raises
    first = state.cbc.update(state.last + iv)[BLOCK_SIZE:]
    pad = BLOCK_SIZE - len(plaintext) % BLOCK_SIZE  # 1..16, a full block when aligned
    out = state.enc.update(first + plaintext + _PADS[pad])
    state.last = out[-BLOCK_SIZE:]
    return out


# ``aad`` is accepted and ignored: aescbc binds nothing to the etcd key.
PROVIDER = StaticProvider(
    "aescbc", AES_KEY_SIZES, authenticated=False, needs_aad=False, decrypt=decrypt, encrypt=encrypt
)
