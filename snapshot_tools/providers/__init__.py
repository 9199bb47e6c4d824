"""Stored-value formats of kube-apiserver encryption at rest, one module per provider.

:mod:`~snapshot_tools.providers.registry` is the one place that lists the forms and matches
their prefixes: :func:`format_of` gives a value's :class:`Format`, whose ``static`` is the
:class:`StaticProvider` that reads it (:mod:`aescbc`, :mod:`aesgcm`, :mod:`secretbox`, working
on the *body*, the bytes after ``k8s:enc:<provider>:v1:<keyname>:``); the KMS envelopes
(:mod:`kmsv1`, :mod:`kmsv2`) work on the bytes after ``k8s:enc:kms:v1|v2:<provider name>:``.
:func:`static_prefix` and :func:`kms_prefix` build those prefixes. Every module raises
``errors.InvalidCiphertext`` (opaque) when authentication or padding fails and
``errors.MalformedValue`` (exact reason) for broken framing; bad key or nonce sizes given by a
caller are ``ValueError``.

References: ``staging/src/k8s.io/apiserver/pkg/server/options/encryptionconfig/config.go``
(prefix constants), spec sections 1-6.
"""

from __future__ import annotations

from snapshot_tools.providers import aescbc, aesgcm, identity, kmsv1, kmsv2, registry, secretbox
from snapshot_tools.providers.registry import *  # noqa: F403 - the registry's names are the package's

__all__ = [*registry.__all__, "aescbc", "aesgcm", "identity", "kmsv1", "kmsv2", "secretbox"]
