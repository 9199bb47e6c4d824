"""How a new config writes a value, and how that write is read back for verification.

``reencrypt``/``decrypt`` (and ``quarantine --restore-from --to``) write each plaintext the way a
kube-apiserver started with the new config would: its first provider for the resource, that
provider's first key, the etcd key as AAD where the format has one; KMS v2 with one fresh seed
per run, wrapped once (as an apiserver process does). Each writer also reads its own output
back with exactly its key: the verification of a rewritten snapshot.

References: ``transformer.go`` (the first provider/key writes), ``kmsv2/envelope.go``
(``TransformToStorage``: one seed per state, ``EncryptedObject`` template), spec sections 1.4, 6.5.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

from snapshot_tools.errors import Error, InvalidCiphertext, MalformedValue, UsageError
from snapshot_tools.providers import ENCRYPTED_PREFIX, kms_prefix, kmsv2, static_prefix, static_provider

if TYPE_CHECKING:
    from snapshot_tools.config import EncryptionConfig, ProviderEntry, StaticKey
    from snapshot_tools.providers import StaticProvider
    from snapshot_tools.unwrap import Unwrapper

__all__ = ["IDENTITY", "KMSv2TargetWriter", "KeyRef", "StaticTargetWriter", "TargetWriter", "WriteTarget"]

GroupResource = tuple[str, str]

IDENTITY = "identity"


class KeyRef(NamedTuple):
    """A source or target key of the summary: provider, name, short fingerprint; never material.

    ``identity`` has neither name nor fingerprint; a KMS provider's fingerprint is that of its
    API version and name (:attr:`~snapshot_tools.config_model.KMSProvider.fingerprint`).
    """

    provider: str
    name: str | None = None
    fingerprint: str | None = None

    def label(self) -> str:
        """``aescbc/key1 (facf8db3)``, ``kms-v2/vault (0a1b2c3d)``, ``identity``."""
        if self.name is None:
            return self.provider
        return f"{self.provider}/{self.name}" + (f" ({self.fingerprint})" if self.fingerprint else "")


class TargetWriter:
    """Writes plaintext the way the target config's write provider does, and reads it back.

    ``read`` is the verification: the plaintext of a value this writer wrote, decrypted with
    exactly the target's key (or ``None``). Knowing the key, it needs no candidate search and
    no Kubernetes-object sniff (that only tells a wrong aescbc key from the right one); the
    caller compares a checksum of the result with the plaintext that was written.
    """

    label = KeyRef(IDENTITY)

    def __init__(self, strict: bool = True) -> None:
        # strict: a restored apiserver with the target config would try to decrypt a value
        # that looks encrypted (decrypt has no such reader: the output is just plaintext).
        self.strict = strict

    def write(self, plaintext: bytes, etcd_key: bytes) -> bytes:
        return plaintext

    def read(self, value: bytes, etcd_key: bytes) -> bytes | None:
        if self.strict and value.startswith(ENCRYPTED_PREFIX):
            return None
        return value


class StaticTargetWriter(TargetWriter):
    """Writes with one key of a static provider (the target's first), reads back with it alone."""

    def __init__(self, provider: StaticProvider, key: StaticKey) -> None:
        self.secret = key.secret
        self.prefix = static_prefix(provider.name, key.name)
        self.label = KeyRef(provider.name, key.name, key.fingerprint)
        self._encrypt, self._decrypt = provider.encrypt, provider.decrypt

    def write(self, plaintext: bytes, etcd_key: bytes) -> bytes:
        return self.prefix + self._encrypt(self.secret, plaintext, etcd_key)

    def read(self, value: bytes, etcd_key: bytes) -> bytes | None:
        prefix = self.prefix
        if not value.startswith(prefix):
            return None
        body = memoryview(value)[len(prefix) :]  # no copy of the body
        try:
            return self._decrypt(self.secret, body, etcd_key)
        except (InvalidCiphertext, MalformedValue):
            return None


class KMSv2TargetWriter(TargetWriter):
    """One fresh seed per run, wrapped once, shared by every object (as an apiserver does).

    Every object of the run shares the EncryptedObject's other fields (keyID, the wrapped
    seed, annotations, type): one :class:`kmsv2.ObjectTemplate` marshals them once.
    """

    def __init__(self, name: str, unwrapper: Unwrapper, fingerprint: str | None = None) -> None:
        self.seed = os.urandom(32)
        wrap = getattr(unwrapper, "wrap_v2", None)
        if wrap is None:
            raise UsageError(f"KMS provider {name!r} cannot wrap a new data key here")
        self.wrapped = w = wrap(self.seed)
        self.prefix = kms_prefix("v2", name)
        self.label = KeyRef("kms-v2", name, fingerprint)
        self.unwrapper = unwrapper
        self._unwraps: bool | None = None
        self.template = kmsv2.ObjectTemplate(w.key_id, w.ciphertext, w.annotations)  # validates

    def write(self, plaintext: bytes, etcd_key: bytes) -> bytes:
        return self.template.encode(kmsv2.encrypt_data(self.seed, plaintext, etcd_key), self.prefix)

    def read(self, value: bytes, etcd_key: bytes) -> bytes | None:
        """The plaintext if ``value`` is byte for byte an object of this run (this prefix, the
        shared fields) and its data decrypts with the seed; the KMS must also unwrap the stored
        DEK source to that seed (asked once)."""
        if self._unwraps is None:
            w = self.wrapped
            try:
                self._unwraps = self.unwrapper.unwrap_v2(w.ciphertext, w.key_id, w.annotations or {}) == self.seed
            except Error:
                self._unwraps = False
        if not self._unwraps or not value.startswith(self.prefix):
            return None
        data = self.template.encrypted_data(value, len(self.prefix))
        if data is None:
            return None
        try:
            return kmsv2.decrypt_data(kmsv2.HKDF_SHA256_XNONCE_AES_GCM_SEED, self.seed, data, etcd_key)
        except (InvalidCiphertext, MalformedValue):
            return None


class WriteTarget:
    """Which writer the new config uses per group-resource (``None``: not covered)."""

    def __init__(self, config: EncryptionConfig | None, unwrappers: dict[str, Unwrapper]) -> None:
        self.config = config
        self.unwrappers = unwrappers
        self.identity = TargetWriter(strict=config is not None)
        self._by_gr: dict[tuple[str, str] | None, TargetWriter | None] = {}
        self._kms: dict[str, TargetWriter] = {}

    def writer(self, gr: GroupResource | None) -> TargetWriter | None:
        """The writer for ``(group, resource)``; ``None`` when the new config does not cover it."""
        if self.config is None:  # decrypt: everything becomes plaintext
            return self.identity
        if gr not in self._by_gr:
            entry = self.config.write_provider(*gr) if gr is not None else None
            self._by_gr[gr] = self._make(entry)
        return self._by_gr[gr]

    def _make(self, entry: ProviderEntry | None) -> TargetWriter | None:
        if entry is None:
            return None
        if entry.kind == IDENTITY:
            return self.identity
        if entry.kind != "kms":
            return StaticTargetWriter(static_provider(entry.kind), entry.keys[0])
        kms = entry.kms
        assert kms is not None
        if kms.api_version != "v2":
            raise UsageError(
                f"KMS provider {kms.name!r} is apiVersion v1 (deprecated, off by default since 1.29); "
                "write with a KMS v2 provider instead"
            )
        if kms.name not in self._kms:
            unwrapper = self.unwrappers.get(kms.name)
            if unwrapper is None:
                raise UsageError(f"no way to reach KMS provider {kms.name!r}: pass --kms or --keyring")
            self._kms[kms.name] = KMSv2TargetWriter(kms.name, unwrapper, kms.fingerprint)
        return self._kms[kms.name]
