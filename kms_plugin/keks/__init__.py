"""Key-encryption-key backends: the protocol (:mod:`.base`), the local keyring (:mod:`.local`),
AWS KMS (:mod:`.aws`), a PKCS#11 token (:mod:`.pkcs11`) and the local-KEK hierarchy
(:mod:`.hierarchy`).

Import the backend modules themselves: this package imports none of them, so reaching the
protocol does not load cryptography or boto3.
"""

from __future__ import annotations

from kms_plugin.keks.base import BackendStatus, KEKBackend, Wrapped

__all__ = ["BackendStatus", "KEKBackend", "Wrapped"]
