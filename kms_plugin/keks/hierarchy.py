"""A local KEK on top of a remote backend: one remote call per local KEK instead of one per seed.

A random 32-byte local KEK seals the apiserver's seeds with AES-256-GCM. The local KEK itself is
wrapped once by the remote backend and travels with every ciphertext in the annotation
``encrypted-local-kek.<annotation domain>``; Decrypt unwraps it once through the remote and keeps
it in a bounded LRU. The local KEK rotates after ``max_uses`` seals or ``max_age`` seconds (soft:
if the remote fails then, the current one is kept) and at once when the remote key_id changes
(hard: Encrypt must return the Status key_id). The key_id is always the remote one.

Ciphertext (AAD = the 11-byte header)::

    "kh" | 0x01 | local KEK id (8) | nonce (12) | AES-256-GCM ciphertext | tag (16)

local KEK id = SHA-256(annotation value)[:8], so a ciphertext cannot be paired with another
wrapped KEK. A Decrypt without the annotation goes to the remote unchanged (its own formats:
values written with ``--no-local-kek`` or by aws-encryption-provider).

References: ``staging/src/k8s.io/kms/pkg/hierarchy/hierarchy.go`` (the reference local-KEK
layer, annotation ``encrypted-kek.reference.encryption.k8s.io``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_plugin.errors import Error, InvalidCiphertext, UnknownKeyId
from kms_plugin.keks.base import BackendStatus, Wrapped

if TYPE_CHECKING:
    from collections.abc import Mapping

    from kms_plugin.keks.base import KEKBackend

log = logging.getLogger("kms_plugin.hierarchy")

ANNOTATION_PREFIX = "encrypted-local-kek."
MAGIC = b"kh"
FORMAT_VERSION = 1
ID_SIZE = 8
HEADER_SIZE = len(MAGIC) + 1 + ID_SIZE
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32
MAX_CIPHERTEXT = 1024
DEFAULT_MAX_USES = 1 << 20  # far below the 2**32 random-nonce bound of AES-GCM
DEFAULT_MAX_AGE = 7 * 24 * 3600.0
DEFAULT_CACHE_SIZE = 128


@dataclass
class LocalKek:
    """One local KEK; the key never shows in ``repr``."""

    wrapped: bytes = field(repr=False)
    key_id: str  # the remote key_id it was wrapped under
    aead: AESGCM = field(repr=False)
    header: bytes
    born: float = field(default_factory=time.monotonic)
    uses: int = 0


def local_kek_id(wrapped: bytes) -> bytes:
    return hashlib.sha256(wrapped).digest()[:ID_SIZE]


def open_sealed(kek: LocalKek, ciphertext: bytes) -> bytes:
    """Authenticate and decrypt a ``kh`` ciphertext under ``kek``; failures are opaque."""
    nonce = ciphertext[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE]
    try:
        return kek.aead.decrypt(nonce, ciphertext[HEADER_SIZE + NONCE_SIZE :], kek.header)
    except InvalidTag:
        raise InvalidCiphertext("ciphertext failed authentication under its local KEK") from None


def split_annotations(
    annotations: Mapping[str, bytes], annotation: str | None
) -> bytes | None:
    """The wrapped local KEK, if any; ``annotation`` None (offline) takes any domain."""
    names = list(annotations)
    ours = [n for n in names if (n == annotation if annotation else n.startswith(ANNOTATION_PREFIX))]
    if len(ours) != len(names) or len(ours) > 1:
        raise InvalidCiphertext(f"unexpected annotations {sorted(names)!r}")
    return annotations[ours[0]] if ours else None


class LocalKekHierarchy:
    """A :class:`~kms_plugin.keks.base.KEKBackend` that seals seeds under cached local KEKs.

    Args:
        remote: the backend that wraps local KEKs (AWS KMS, or a keyring).
        domain: the plugin's annotation domain; None reads any ``encrypted-local-kek.*`` (offline).
        max_uses, max_age: soft rotation limits of the local KEK.
        cache_size: unwrapped local KEKs kept (LRU).
    """

    def __init__(
        self,
        remote: KEKBackend,
        domain: str | None,
        *,
        max_uses: int = DEFAULT_MAX_USES,
        max_age: float = DEFAULT_MAX_AGE,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if max_uses < 1 or max_age <= 0 or cache_size < 1:
            raise ValueError("local KEK limits and cache size must be positive")
        self.remote = remote
        self.name = f"{remote.name}+local-kek"
        self.annotation = ANNOTATION_PREFIX + domain.rstrip(".") if domain else None
        self.max_uses, self.max_age, self.cache_size = max_uses, max_age, cache_size
        self._current: LocalKek | None = None
        self._cache: OrderedDict[bytes, LocalKek] = OrderedDict()
        self._lock = threading.Lock()  # cache and current
        self._rotate_lock = threading.Lock()  # one remote wrap at a time
        self._pending: dict[bytes, threading.Lock] = {}  # one remote unwrap per wrapped KEK
        self.rotations = 0

    # -- health (delegated: Status never reaches the remote) --------------------------------

    def status(self) -> BackendStatus:
        return self.remote.status()

    def probe(self) -> BackendStatus:
        probe = getattr(self.remote, "probe", None)
        return probe() if callable(probe) else self.remote.status()

    def start(self) -> None:
        start = getattr(self.remote, "start", None)
        if callable(start):
            start()

    def close(self) -> None:
        close = getattr(self.remote, "close", None)
        if callable(close):
            close()

    def max_plaintext(self) -> int:
        return MAX_CIPHERTEXT - HEADER_SIZE - NONCE_SIZE - TAG_SIZE

    # -- wrap --------------------------------------------------------------------------------

    def wrap(self, plaintext: bytes) -> Wrapped:
        if not plaintext or len(plaintext) > self.max_plaintext():
            raise ValueError(f"plaintext must be 1..{self.max_plaintext()} bytes")
        kek = self._for_write()
        nonce = os.urandom(NONCE_SIZE)
        sealed = kek.header + nonce + kek.aead.encrypt(nonce, plaintext, kek.header)
        assert self.annotation is not None, "an offline hierarchy does not wrap"
        return Wrapped(sealed, kek.key_id, {self.annotation: kek.wrapped})

    def _for_write(self) -> LocalKek:
        kek = self._take()
        if kek is not None:
            return kek
        with self._rotate_lock:
            kek = self._take()  # another thread may have rotated meanwhile
            if kek is not None:
                return kek
            old = self._current
            try:
                fresh = self._new_kek()
            except Error:
                if old is None or old.key_id != self.remote.status().key_id:
                    raise
                # Only a soft limit was hit: the old local KEK is still valid for this key_id.
                log.warning("local KEK rotation failed; keeping the current one for now")
                with self._lock:
                    old.uses += 1
                return old
            with self._lock:
                self._current = fresh
                fresh.uses += 1
            return fresh

    def _take(self) -> LocalKek | None:
        """The current local KEK with one use counted, or None when it must rotate."""
        key_id = self.remote.status().key_id
        with self._lock:
            kek = self._current
            if (
                kek is None
                or kek.key_id != key_id
                or kek.uses >= self.max_uses
                or time.monotonic() - kek.born >= self.max_age
            ):
                return None
            kek.uses += 1
            return kek

    def _new_kek(self) -> LocalKek:
        key = AESGCM.generate_key(bit_length=256)
        wrapped = self.remote.wrap(key)
        if wrapped.annotations:
            raise InvalidCiphertext("the remote backend wrote annotations; it cannot carry a local KEK")
        kek = self._remember(wrapped.ciphertext, wrapped.key_id, key)
        self.rotations += 1
        log.info("new local KEK (remote key_id %s)", wrapped.key_id)
        return kek

    def _remember(self, wrapped: bytes, key_id: str, key: bytes) -> LocalKek:
        header = MAGIC + bytes((FORMAT_VERSION,)) + local_kek_id(wrapped)
        kek = LocalKek(wrapped, key_id, AESGCM(key), header)
        digest = hashlib.sha256(wrapped).digest()
        with self._lock:
            self._cache[digest] = kek
            self._cache.move_to_end(digest)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return kek

    # -- unwrap ------------------------------------------------------------------------------

    def unwrap(
        self, ciphertext: bytes, key_id: str | None, annotations: Mapping[str, bytes]
    ) -> bytes:
        wrapped = split_annotations(annotations, self.annotation)
        if wrapped is None:
            if ciphertext[:2] == MAGIC:
                raise InvalidCiphertext("local-KEK ciphertext without its encrypted local KEK")
            return self.remote.unwrap(ciphertext, key_id, annotations)
        data = bytes(ciphertext)
        if len(data) < HEADER_SIZE + NONCE_SIZE + TAG_SIZE or data[:3] != MAGIC + bytes((FORMAT_VERSION,)):
            raise InvalidCiphertext("ciphertext is not in the kms-plugin local-KEK format")
        if data[3:HEADER_SIZE] != local_kek_id(wrapped):
            raise InvalidCiphertext("ciphertext does not belong to the local KEK it came with")
        kek = self._cached(wrapped, key_id)
        return open_sealed(kek, data)

    def _cached(self, wrapped: bytes, key_id: str | None) -> LocalKek:
        digest = hashlib.sha256(wrapped).digest()
        kek = self._lookup(digest, key_id)
        if kek is not None:
            return kek
        with self._lock:
            pending = self._pending.setdefault(digest, threading.Lock())
        with pending:  # concurrent cold reads of one local KEK make one remote call
            kek = self._lookup(digest, key_id)
            if kek is not None:
                return kek
            try:
                key = self.remote.unwrap(wrapped, key_id, {})
            finally:
                with self._lock:
                    self._pending.pop(digest, None)
            if len(key) != KEY_SIZE:
                raise InvalidCiphertext("the encrypted local KEK is not a 32-byte key")
            return self._remember(wrapped, key_id or "", key)

    def _lookup(self, digest: bytes, key_id: str | None) -> LocalKek | None:
        offers = getattr(self.remote, "offers", None)
        with self._lock:
            kek = self._cache.get(digest)
            if kek is None:
                return None
            if callable(offers) and kek.key_id and not offers(kek.key_id):
                # Its remote key was retired: forget it, so the remote answers why.
                del self._cache[digest]
                return None
            self._cache.move_to_end(digest)
        if key_id is not None and kek.key_id and kek.key_id != key_id:
            raise UnknownKeyId(f"key_id {key_id} is not the one this local KEK was wrapped under")
        return kek
