"""Verdict records, the key table, JSON output and the exit policy of ``check``.

Nothing here ever holds key material or plaintext: keys appear by provider, name, a short
fingerprint and the config file they came from.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from snapshot_tools.errors import EXIT_FINDINGS, EXIT_INPUT, EXIT_KMS, EXIT_OK, UsageError
from snapshot_tools.readers import KeyUse
from snapshot_tools.resources import resource_suggestion
from snapshot_tools.verdict import VERDICTS, plaintext_writes

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator

    from snapshot_tools.keysets import KeySet
    from snapshot_tools.readers import Reader, Resolution
    from snapshot_tools.resources import ObjectBase
    from snapshot_tools.unwrap import KmsProblem

FAIL_ON_CHOICES = ("unreadable", "retired", "stale", "plaintext", "unencrypted")
DEFAULT_FAIL_ON = "unreadable,retired"


def parse_fail_on(text: str) -> frozenset[str]:
    """``"unreadable,retired"`` -> a set; unknown words and an empty list are usage errors;
    ``none``: the empty set (report only, nothing fails)."""
    items = {p.strip() for p in text.split(",") if p.strip()}
    if not items:  # an unset variable in a job (--fail-on "$X") must not turn the gate off
        raise UsageError(f"--fail-on: empty; give classes ({', '.join(FAIL_ON_CHOICES)}) or none to report only")
    if items == {"none"}:
        return frozenset()
    if "none" in items:
        raise UsageError("--fail-on: none may not be combined with other classes")
    unknown = items - set(FAIL_ON_CHOICES)
    if unknown:
        raise UsageError(
            f"--fail-on: unknown {', '.join(sorted(unknown))}; choose from {', '.join(FAIL_ON_CHOICES)}"
        )
    return frozenset(items)


class Row(NamedTuple):
    """One judged value as the report keeps it.

    Compact on purpose: 100,000 of these are a few MB, ``base`` and ``result`` are shared by
    many rows, and dicts are built only when rendering.
    """

    key: bytes  # the full etcd key
    base: ObjectBase | None  # shared by every object under one key prefix; None: no API object
    name: str | None
    revision: int  # etcd mod_revision
    result: Resolution
    latest: bool | None  # only with --all-revisions


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
    kms_key_id: str | None = None
    kms_current_key_id: str | None = None
    kek_id: str | None = None
    decrypts_with: dict[str, str] | None = None
    deleted: bool | None = None  # only with --all-revisions: the key's newest revision is a tombstone

    @classmethod
    def from_row(cls, row: Row, deleted: bool | None = None) -> ObjectResult:
        ekey, base, name, revision, res, latest = row
        key = res.key
        resource, group, namespace = base if base is not None else (None, None, None)
        return cls(
            key=ekey.decode("utf-8", "backslashreplace"),
            resource=resource,
            group=group,
            namespace=namespace,
            name=name,
            revision=revision,
            provider=res.provider,
            key_name=res.key_name,
            key_fingerprint=None if key is None else key.fingerprint,
            config=None if key is None else key.config,
            verdict=res.verdict,
            reason=res.reason,
            plaintext=res.plaintext_flag,
            latest=latest,
            **_extra_fields(res),
            deleted=deleted,
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
            "kms_key_id": self.kms_key_id,
            "kms_current_key_id": self.kms_current_key_id,
            "kek_id": self.kek_id,
            "decrypts_with": self.decrypts_with,
        }
        if self.latest is not None:
            out["latest"] = self.latest
        if self.deleted is not None:
            out["deleted"] = self.deleted
        return out


def _extra_fields(res: Resolution) -> dict[str, Any]:
    """The key_ids of a KMS v2 value and the renamed key that would read an unreadable one."""
    ids, other = res.kms_ids, res.decrypts_with
    return {
        "kms_key_id": None if ids is None else ids.stored,
        "kms_current_key_id": None if ids is None else ids.current,
        "kek_id": None if ids is None else ids.kek,
        "decrypts_with": None
        if other is None
        else {"provider": other.provider, "name": other.name, "fingerprint": other.fingerprint, "config": other.config},
    }


_RESULT = attrgetter("result")


class _Tally(NamedTuple):
    rows: int  # how many rows were counted
    counts: dict[str, int]  # per verdict
    reasons: dict[str, int]  # unreadable per reason
    plaintext: int
    unencrypted: int  # stored without encryption (identity), whatever the configs say


@dataclass
class CheckReport:
    """The whole answer of ``check``; :meth:`exit_code` applies ``--fail-on``.

    Objects are kept as compact rows (:data:`Row`); :attr:`objects` and :meth:`json_chunks`
    render them on demand.
    """

    snapshot: dict[str, Any] = field(default_factory=dict)
    configs: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    uncovered_plaintext: int = 0
    deleted: set[bytes] = field(default_factory=set)  # --all-revisions: keys whose newest revision is a tombstone
    # Resource selectors of the current config whose write provider is identity.
    plaintext_writes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # config problems that explain verdicts
    kms: list[KmsProblem] = field(default_factory=list)  # KMS providers that did not answer
    _keyset: KeySet | None = None
    _tally: _Tally | None = field(default=None, repr=False)

    @classmethod
    def begin(cls, keyset: KeySet) -> CheckReport:
        return cls(
            configs=[{"path": c.path} for c in keyset.configs],
            plaintext_writes=plaintext_writes(keyset.configs[0]) if keyset.configs else [],
            warnings=[
                *keyset.notes,
                *(
                    f"config {path}: resource {name!r} matches no resource, so its rule covers nothing"
                    + resource_suggestion(name, keyset.resource_names())
                    for path, name in keyset.unknown_resources()
                ),
            ],
            _keyset=keyset,
        )

    def _counted(self) -> _Tally:
        # Counted from the rows when asked, not per add: many rows share one Resolution.
        tally = self._tally
        if tally is None or tally.rows != len(self.rows):
            per_result = Counter(map(_RESULT, self.rows))  # results hash by identity: rows share them
            counts = dict.fromkeys(VERDICTS, 0)
            reasons: dict[str, int] = {}
            plaintext = unencrypted = 0
            for res, n in per_result.items():
                counts[res.verdict] += n
                if res.reason:
                    reasons[res.reason] = reasons.get(res.reason, 0) + n
                if res.plaintext_flag:
                    plaintext += n
                if res.provider == "identity":
                    unencrypted += n
            tally = self._tally = _Tally(len(self.rows), counts, reasons, plaintext, unencrypted)
        return tally

    @property
    def counts(self) -> dict[str, int]:
        """Objects per verdict."""
        return self._counted().counts

    @property
    def reasons(self) -> dict[str, int]:
        """Unreadable objects per reason."""
        return self._counted().reasons

    @property
    def plaintext(self) -> int:
        """Objects stored unencrypted although the current config encrypts their resource."""
        return self._counted().plaintext

    @property
    def unencrypted(self) -> int:
        """Values stored without encryption, judged or only counted (``--fail-on unencrypted``)."""
        return self._counted().unencrypted + self.uncovered_plaintext

    @property
    def objects(self) -> list[ObjectResult]:
        """Every judged value as an :class:`ObjectResult` (built on each access)."""
        return [ObjectResult.from_row(r, self.is_deleted(r)) for r in self.rows]

    def is_deleted(self, row: Row) -> bool | None:
        """Whether ``row``'s key is deleted (``None`` without --all-revisions)."""
        latest = row.latest
        return None if latest is None else (not latest and row.key in self.deleted)

    def objects_where(self, verdicts: Collection[str], plaintext: bool = False) -> list[ObjectResult]:
        """The objects with one of ``verdicts`` (and, with ``plaintext``, the plaintext ones)."""
        return [
            ObjectResult.from_row(r, self.is_deleted(r))
            for r in self.rows
            if r.result.verdict in verdicts or (plaintext and r.result.plaintext_flag)
        ]

    def finish(self, reader: Reader) -> None:
        """Build the key table once every object is judged."""
        assert self._keyset is not None
        self.keys = key_table(self._keyset, reader.key_use)

    @property
    def kms_unavailable(self) -> bool:
        return self.reasons.get("kms-unavailable", 0) > 0

    def summary(self) -> dict[str, Any]:
        return {
            "objects": len(self.rows),
            **self.counts,
            "plaintext": self.plaintext,
            "reasons": dict(sorted(self.reasons.items())),
            "uncovered_plaintext": self.uncovered_plaintext,
            "unencrypted": self.unencrypted,
        }

    @property
    def integrity_failed(self) -> bool:
        """The snapshot would not restore (trailer missing or wrong, no --skip-hash-check)."""
        return self.snapshot.get("integrity") == "failed"

    def exit_code(self, fail_on: frozenset[str]) -> int:
        """3 when the snapshot would not restore, 4 when a KMS needed for the verdicts was
        unreachable (they are incomplete), else 1/0.

        Integrity first: a snapshot etcdutl refuses fails whatever its values say, and it is the
        code extract/reencrypt/decrypt give the same file (they refuse it before asking a KMS).
        """
        if self.integrity_failed:
            return EXIT_INPUT
        if self.kms_unavailable:
            return EXIT_KMS
        for verdict in ("unreadable", "retired", "stale"):
            if verdict in fail_on and self.counts[verdict]:
                return EXIT_FINDINGS
        if "plaintext" in fail_on and self.plaintext:
            return EXIT_FINDINGS
        if "unencrypted" in fail_on and self.unencrypted:
            return EXIT_FINDINGS
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {**self.to_json_head(), "objects": [o.to_json() for o in self.objects]}

    def json_chunks(self, batch: int = 2048) -> Iterator[str]:
        """:meth:`to_json` as JSON text in pieces: the head indented, one object per line.

        Equal to ``json.loads``-ing :meth:`to_json`'s dump, but built without a dict per object:
        the fields shared by many objects (resource, key, verdict) are encoded once per
        distinct value, so 100,000 objects render in a fraction of a second and memory stays
        at one batch of lines.
        """
        head = json.dumps({**self.to_json_head(), "objects": []}, indent=2)
        tail = '"objects": []\n}'
        assert head.endswith(tail)
        if not self.rows:
            yield head + "\n"
            return
        yield head[: -len(tail)] + '"objects": [\n'
        enc = _ENCODE_STR
        bases: dict[ObjectBase | None, str] = {}
        outcomes: dict[tuple[Resolution, bool | None, bool | None], str] = {}
        lines: list[str] = []
        n = len(self.rows)
        deleted_keys = self.deleted
        for i, (ekey, base, name, revision, res, latest) in enumerate(self.rows, 1):
            b = bases.get(base)
            if b is None:
                b = bases[base] = _base_fragment(base)
            deleted = None if latest is None else (not latest and ekey in deleted_keys)
            o = outcomes.get((res, latest, deleted))
            if o is None:
                o = outcomes[(res, latest, deleted)] = _outcome_fragment(res, latest, deleted)
            key_json = enc(ekey.decode("utf-8", "backslashreplace"))
            name_json = "null" if name is None else enc(name)
            lines.append(f'    {{"key": {key_json}, {b}, "name": {name_json}, "revision": {revision:d}, {o}}}')
            if len(lines) >= batch or i == n:
                yield ",\n".join(lines) + (",\n" if i < n else "\n")
                lines.clear()
        yield "  ]\n}\n"

    def to_json_head(self) -> dict[str, Any]:
        """Everything of :meth:`to_json` but the objects."""
        return {
            "snapshot": self.snapshot,
            "configs": self.configs,
            "keys": self.keys,
            "plaintext_writes": self.plaintext_writes,
            "summary": self.summary(),
            "warnings": self.warnings,
            "kms": [p.to_json() for p in self.kms],
        }


_ENCODE_STR = json.encoder.encode_basestring_ascii  # what json.dumps uses for str: same bytes


def _base_fragment(base: ObjectBase | None) -> str:
    if base is None:
        return '"resource": null, "group": null, "namespace": null'
    resource, group, namespace = base
    return f'"resource": {json.dumps(resource)}, "group": {json.dumps(group)}, "namespace": {json.dumps(namespace)}'


def _outcome_fragment(res: Resolution, latest: bool | None, deleted: bool | None = None) -> str:
    key = res.key
    fields = {
        "provider": res.provider,
        "key_name": res.key_name,
        "key_fingerprint": None if key is None else key.fingerprint,
        "config": None if key is None else key.config,
        "verdict": res.verdict,
        "reason": res.reason,
        "plaintext": res.plaintext_flag,
        **_extra_fields(res),
    }
    if latest is not None:
        fields["latest"] = latest
    if deleted is not None:
        fields["deleted"] = deleted
    return json.dumps(fields)[1:-1]


def key_table(keyset: KeySet, use: dict[KeyUse, int]) -> list[dict[str, Any]]:
    """One row per distinct key or KMS provider, in config order, with the objects under it."""
    rows = []
    active = keyset.active_identities()
    for key in keyset.all_keys():
        provider = key.provider  # a KMS provider's is its storage form, kms-v1 or kms-v2
        ident = KeyUse(provider, key.name, key.fingerprint)
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
