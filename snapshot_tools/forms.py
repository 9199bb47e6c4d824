"""Which storage form a stored etcd value carries, read from its prefix alone (no keys needed).

The provider prefixes are fixed by kube-apiserver (spec section 1.1). Key and KMS provider names
are not escaped and may contain ':', so the name returned here is only the text up to the next
':' - good for counting and display; ``resolve`` matches real names against the configs.
"""

from __future__ import annotations

ENCRYPTED_PREFIX = b"k8s:enc:"

# prefix -> provider form name used in reports and JSON
PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"k8s:enc:aescbc:v1:", "aescbc"),
    (b"k8s:enc:aesgcm:v1:", "aesgcm"),
    (b"k8s:enc:secretbox:v1:", "secretbox"),
    (b"k8s:enc:kms:v1:", "kms-v1"),
    (b"k8s:enc:kms:v2:", "kms-v2"),
)

FORMS = ("identity", "aescbc", "aesgcm", "secretbox", "kms-v1", "kms-v2")


def storage_form(value: bytes) -> tuple[str, str | None]:
    """Return ``(form, name)`` for a stored value.

    ``form`` is one of :data:`FORMS`, or ``"unknown"`` for a ``k8s:enc:`` prefix no provider
    writes. ``name`` is the key (static providers) or KMS provider name, ``None`` for identity or
    when the value ends before a name separator.
    """
    if not value.startswith(ENCRYPTED_PREFIX):
        return "identity", None
    for prefix, form in PREFIXES:
        if value.startswith(prefix):
            end = value.find(b":", len(prefix))
            if end <= len(prefix):
                return form, None
            return form, value[len(prefix) : end].decode("utf-8", "replace")
    return "unknown", None
