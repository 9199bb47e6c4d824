"""Key-encryption-key backends: the protocol and the local keyring."""

from __future__ import annotations

from kms_plugin.keks.base import BackendStatus, KEKBackend, Wrapped
from kms_plugin.keks.local import Kek, Keyring, LocalKeyringBackend

__all__ = ["BackendStatus", "KEKBackend", "Kek", "Keyring", "LocalKeyringBackend", "Wrapped"]
