"""The KEK protocol every backend implements (local keyring now, AWS KMS later).

The gRPC service only talks to this: the current key_id and health, wrap, unwrap. Backends raise
:mod:`kms_plugin.errors` classes; the service maps them to gRPC codes in one place.

References: aws-encryption-provider ``pkg/plugin/plugin_v2.go``; STYLE.md item 10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Mapping


class Wrapped(NamedTuple):
    """A wrap result; unpacks as ``(ciphertext, key_id, annotations)``."""

    ciphertext: bytes
    key_id: str
    annotations: dict[str, bytes]


@dataclass(frozen=True)
class BackendStatus:
    """What Status reports: the write key_id and whether the backend is healthy (and why not)."""

    key_id: str
    healthy: bool
    reason: str = "ok"
    # User-caused problems (bad keyring file, disabled key) must not fail /livez: a restart
    # fixes nothing and, for a bad keyring file, would not even start.
    user_caused: bool = False


@runtime_checkable
class KEKBackend(Protocol):
    """A source of key-encryption keys."""

    name: str

    def status(self) -> BackendStatus:
        """Cheap: called on every Status; may re-read configuration."""
        ...

    def wrap(self, plaintext: bytes) -> Wrapped:
        """Encrypt under the current KEK; the key_id is exactly Status's key_id."""
        ...

    def unwrap(
        self, ciphertext: bytes, key_id: str | None, annotations: Mapping[str, bytes]
    ) -> bytes:
        """Decrypt; refuse unknown key_ids, mismatches and annotations the backend did not write.

        ``key_id`` None (KMS v1, which has none) means: route by the ciphertext alone.
        """
        ...

    def max_plaintext(self) -> int:
        """Largest plaintext a wrap accepts (the ciphertext must stay within 1 KiB)."""
        ...
