"""Stored-value formats of kube-apiserver encryption at rest, one module per provider.

Static providers (:mod:`aescbc`, :mod:`aesgcm`, :mod:`secretbox`) work on the *body*, the bytes
after ``k8s:enc:<provider>:v1:<keyname>:``; the KMS envelopes (:mod:`kmsv1`, :mod:`kmsv2`) on the
bytes after ``k8s:enc:kms:v1|v2:<provider name>:``. :func:`static_prefix` and :func:`kms_prefix`
build those prefixes. Every module raises ``errors.InvalidCiphertext`` (opaque) when
authentication or padding fails and ``errors.MalformedValue`` (exact reason) for broken framing;
bad key or nonce sizes given by a caller are ``ValueError``.

References: ``staging/src/k8s.io/apiserver/pkg/server/options/encryptionconfig/config.go``
(prefix constants), spec sections 1-6.
"""

from __future__ import annotations

from snapshot_tools.providers import aescbc, aesgcm, identity, kmsv1, kmsv2, secretbox

STATIC_PROVIDERS = ("aescbc", "aesgcm", "secretbox")
KMS_API_VERSIONS = ("v1", "v2")

__all__ = [
    "KMS_API_VERSIONS",
    "STATIC_PROVIDERS",
    "aescbc",
    "aesgcm",
    "identity",
    "kms_prefix",
    "kmsv1",
    "kmsv2",
    "secretbox",
    "static_prefix",
]


def static_prefix(provider: str, keyname: str) -> bytes:
    """``k8s:enc:<provider>:v1:<keyname>:`` for aescbc, aesgcm or secretbox.

    Raises:
        ValueError: unknown provider or empty key name.
    """
    if provider not in STATIC_PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(STATIC_PROVIDERS)}, got {provider!r}")
    if not keyname:
        raise ValueError("key name must not be empty")
    return f"k8s:enc:{provider}:v1:{keyname}:".encode()


def kms_prefix(api_version: str, name: str) -> bytes:
    """``k8s:enc:kms:<v1|v2>:<name>:``.

    Raises:
        ValueError: unknown API version, empty name, or a v2 name containing ``:``.
    """
    if api_version not in KMS_API_VERSIONS:
        raise ValueError(f"KMS apiVersion must be v1 or v2, got {api_version!r}")
    if not name:
        raise ValueError("KMS provider name must not be empty")
    if api_version == "v2" and ":" in name:
        raise ValueError("KMS v2 provider name must not contain ':'")
    return f"k8s:enc:kms:{api_version}:{name}:".encode()
