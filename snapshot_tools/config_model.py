"""The data model of a validated encryption config: keys, KMS providers, rules, lookups.

Kept apart from the parser (:mod:`snapshot_tools.config`) so readers of configs (keysets,
resolve, reencrypt) depend on plain frozen dataclasses only. Key objects redact their material
in ``repr``.

References: ``staging/src/k8s.io/apiserver/pkg/apis/apiserver/v1/types_encryption.go``,
``.../server/options/encryptionconfig/config.go`` (``transformerFromOverrides``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from snapshot_tools.resources import parse_group_resource


@dataclass(frozen=True)
class StaticKey:
    """One aescbc/aesgcm/secretbox key as a config lists it. ``secret`` never shows in repr."""

    provider: str
    name: str
    secret: bytes = field(repr=False)
    config: str
    config_index: int
    position: str

    @property
    def fingerprint(self) -> str:
        """8 hex chars of sha256(provider ":" secret): same material -> same fingerprint."""
        return hashlib.sha256(self.provider.encode() + b":" + self.secret).hexdigest()[:8]

    def __repr__(self) -> str:
        return (
            f"StaticKey(provider={self.provider!r}, name={self.name!r}, "
            f"fingerprint={self.fingerprint!r}, config={self.config!r}, "
            f"config_index={self.config_index}, position={self.position!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class KMSProvider:
    """A ``kms`` provider entry (no key material: the KEK lives in the KMS)."""

    name: str
    api_version: str  # "v1" | "v2"
    endpoint: str
    timeout_s: float
    cachesize: int | None  # v1 only (default 1000, <0 disables); None for v2
    config: str
    config_index: int
    position: str

    @property
    def provider(self) -> str:
        """The storage form this provider writes: ``kms-v1`` or ``kms-v2``."""
        return f"kms-{self.api_version}"

    @property
    def fingerprint(self) -> str:
        """Identity of the provider as stored data sees it: API version and name only."""
        return hashlib.sha256(f"kms:{self.api_version}:{self.name}".encode()).hexdigest()[:8]


@dataclass(frozen=True)
class ProviderEntry:
    """One ``providers[]`` element. ``keys`` for static providers, ``kms`` for KMS."""

    kind: str  # identity | aescbc | aesgcm | secretbox | kms
    keys: tuple[StaticKey, ...] = ()
    kms: KMSProvider | None = None
    position: str = ""


@dataclass(frozen=True)
class Rule:
    """One ``resources[]`` entry: the selectors as written and their providers in order."""

    resources: tuple[str, ...]
    providers: tuple[ProviderEntry, ...]
    position: str

    @property
    def group_resources(self) -> tuple[tuple[str, str], ...]:
        return tuple(parse_group_resource(r) for r in self.resources)


@dataclass(frozen=True)
class EncryptionConfig:
    """A validated config. ``path`` labels it in reports: the file as given, plus
    ``#currentState``/``#desiredState`` for configs taken from an RKE state file."""

    path: str
    index: int
    rules: tuple[Rule, ...]
    file: str = ""
    _lookup: dict[tuple[str, str], tuple[ProviderEntry, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        lookup: dict[tuple[str, str], list[ProviderEntry]] = {}
        for rule in self.rules:
            for gr in rule.group_resources:
                # Same exact resource in two entries: upstream appends the providers.
                lookup.setdefault(gr, []).extend(rule.providers)
        frozen = {gr: tuple(providers) for gr, providers in lookup.items()}
        object.__setattr__(self, "_lookup", frozen)
        if not self.file:
            object.__setattr__(self, "file", self.path)

    def providers_for(self, group: str, resource: str) -> tuple[ProviderEntry, ...] | None:
        """The providers kube-apiserver uses for ``group``/``resource``: exact entry, else
        ``<group>.*``, else ``*.*``; ``None`` when no rule covers it (bare identity)."""
        for gr in ((group, resource), (group, "*"), ("*", "*")):
            found = self._lookup.get(gr)
            if found is not None:
                return found
        return None

    def covers(self, group: str, resource: str) -> bool:
        return self.providers_for(group, resource) is not None

    def write_provider(self, group: str, resource: str) -> ProviderEntry | None:
        """The provider new writes use: the first listed (may be ``identity``). ``None`` when
        the resource is not covered - the apiserver then writes plaintext too, but through
        the bare identity transformer, which no provider entry represents."""
        providers = self.providers_for(group, resource)
        return providers[0] if providers else None

    def identity_listed(self, group: str, resource: str) -> bool:
        """Whether an ``identity`` provider is listed for the resource. False when uncovered,
        although plaintext of an uncovered resource still reads (see :meth:`covers`)."""
        return any(p.kind == "identity" for p in self.providers_for(group, resource) or ())
