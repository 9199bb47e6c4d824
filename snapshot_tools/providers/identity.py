"""The ``identity`` provider: the stored value is the plaintext, with no prefix.

References: ``staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/identity/identity.go``.
"""

from __future__ import annotations

from snapshot_tools.errors import MalformedValue
from snapshot_tools.providers.registry import ENCRYPTED_PREFIX


def decrypt(value: bytes) -> bytes:
    """Return the stored value itself.

    Raises:
        MalformedValue: the value carries the reserved ``k8s:enc:`` prefix (as upstream refuses).
    """
    if value.startswith(ENCRYPTED_PREFIX):
        raise MalformedValue("identity transformer tried to read encrypted data")
    return value


def encrypt(plaintext: bytes) -> bytes:
    """Return the plaintext as the stored value.

    Raises:
        ValueError: the plaintext starts with ``k8s:enc:``; stored like this it would read as
            encrypted data (upstream writes it anyway; Kubernetes objects never start so).
    """
    if plaintext.startswith(ENCRYPTED_PREFIX):
        raise ValueError("identity plaintext must not start with 'k8s:enc:'")
    return plaintext
