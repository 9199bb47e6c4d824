"""Verdict records, the key table, JSON output and the exit policy of ``check``.

Nothing here ever holds key material or plaintext: keys appear by provider, name, a short
fingerprint and the config file they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snapshot_tools.errors import UsageError
from snapshot_tools.resolve import VERDICTS

if TYPE_CHECKING:
    from snapshot_tools.keysets import KeySet
    from snapshot_tools.resolve import Resolution, Resolver
    from snapshot_tools.resources import ResourceRef
    from snapshot_tools.snapshot import Record

FAIL_ON_CHOICES = ("unreadable", "retired", "stale", "plaintext")
DEFAULT_FAIL_ON = "unreadable,retired"
EXIT_OK, EXIT_FINDINGS, EXIT_KMS = 0, 1, 4


def parse_fail_on(text: str) -> frozenset[str]:
    """``"unreadable,retired"`` -> a set; unknown words are a usage error."""
    items = {p.strip() for p in text.split(",") if p.strip()}
    unknown = items - set(FAIL_ON_CHOICES)
    if unknown:
        raise UsageError(
            f"--fail-on: unknown {', '.join(sorted(unknown))}; choose from {', '.join(FAIL_ON_CHOICES)}"
        )
    return frozenset(items)


@dataclass(slots=True)
class ObjectResult:
    """One judged value; the JSON ``objects[]`` entry."""

    key: str
    resource: str | None
    group: str | None
    namespace: str | None
    name: str | None
    revision: int
    provider: str
    key_name: str | None
    key_fingerprint: str | None
    config: str | None
    verdict: str
    reason: str | None
    plaintext: bool
    latest: bool | None = None

    @classmethod
    def make(
        cls, rec: Record, ref: ResourceRef | None, res: Resolution, latest: bool | None
    ) -> ObjectResult:
        key = res.key
        return cls(
            key=rec.key.decode("utf-8", "backslashreplace"),
            resource=ref.resource if ref is not None else None,
            group=ref.group if ref is not None else None,
            namespace=ref.namespace if ref is not None else None,
            name=ref.name if ref is not None else None,
            revision=rec.mod_revision,
            provider=res.provider,
            key_name=res.key_name,
            key_fingerprint=getattr(key, "fingerprint", None),
            config=getattr(key, "config", None),
            verdict=res.verdict,
            reason=res.reason,
            plaintext=res.plaintext_flag,
            latest=latest,
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            "key": self.key,
            "resource": self.resource,
            "group": self.group,
            "namespace": self.namespace,
            "name": self.name,
            "revision": self.revision,
            "provider": self.provider,
            "key_name": self.key_name,
            "key_fingerprint": self.key_fingerprint,
            "config": self.config,
            "verdict": self.verdict,
            "reason": self.reason,
            "plaintext": self.plaintext,
        }
        if self.latest is not None:
            out["latest"] = self.latest
        return out


@dataclass
class CheckReport:
    """The whole answer of ``check``; :meth:`exit_code` applies ``--fail-on``."""

    snapshot: dict[str, Any] = field(default_factory=dict)
    configs: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)
    objects: list[ObjectResult] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    reasons: dict[str, int] = field(default_factory=dict)
    plaintext: int = 0
    uncovered_plaintext: int = 0
    _keyset: KeySet | None = None

    @classmethod
    def begin(cls, keyset: KeySet) -> CheckReport:
        return cls(configs=[{"path": c.path} for c in keyset.configs], _keyset=keyset)

    def add(self, obj: ObjectResult) -> None:
        self.objects.append(obj)
        self.counts[obj.verdict] += 1
        if obj.reason:
            self.reasons[obj.reason] = self.reasons.get(obj.reason, 0) + 1
        if obj.plaintext:
            self.plaintext += 1

    def finish(self, resolver: Resolver) -> None:
        """Build the key table once every object is judged."""
        assert self._keyset is not None
        self.keys = key_table(self._keyset, resolver.key_use)

    @property
    def kms_unavailable(self) -> bool:
        return self.reasons.get("kms-unavailable", 0) > 0

    def summary(self) -> dict[str, Any]:
        return {
            "objects": len(self.objects),
            **self.counts,
            "plaintext": self.plaintext,
            "reasons": dict(sorted(self.reasons.items())),
            "uncovered_plaintext": self.uncovered_plaintext,
        }

    def exit_code(self, fail_on: frozenset[str]) -> int:
        """4 when a KMS needed for the verdicts was unreachable (they are incomplete), else 1/0."""
        if self.kms_unavailable:
            return EXIT_KMS
        for verdict in ("unreadable", "retired", "stale"):
            if verdict in fail_on and self.counts[verdict]:
                return EXIT_FINDINGS
        if "plaintext" in fail_on and self.plaintext:
            return EXIT_FINDINGS
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "configs": self.configs,
            "keys": self.keys,
            "summary": self.summary(),
            "objects": [o.to_json() for o in self.objects],
        }


def key_table(keyset: KeySet, use: dict[tuple[str, str, str], int]) -> list[dict[str, Any]]:
    """One row per distinct key or KMS provider, in config order, with the objects under it."""
    rows = []
    active = keyset.active_identities()
    for key in keyset.all_keys():
        provider = key.provider if hasattr(key, "secret") else f"kms-{key.api_version}"
        ident = (provider, key.name, key.fingerprint)
        rows.append(
            {
                "provider": provider,
                "name": key.name,
                "fingerprint": key.fingerprint,
                "config": key.config,
                "active": ident in active,
                "objects": use.get(ident, 0),
            }
        )
    return rows
