"""Which stored values need a keyring KEK: the proof behind ``kms-plugin keyring retire``.

A direct scan, not ``check``: every stored revision of every key (tombstones aside) of every
source, whatever EncryptionConfiguration or KMS provider name wrote it. ``check`` judges values
against configs and reports only what they cover; a proof that a KEK is unused must also see
values under provider names no config lists any more, and needs no config at all. For each value:

* a KMS v2 or v1 envelope whose wrapped DEK/seed is in the keyring's wrapped format: the KEK its
  header names (and, for v2, the stored key_id). Naming the KEK being retired by either counts
  as **needing** it (never unwrapped: the answer would not change). Naming another KEK of the
  keyring, the wrapped key must open under it (authenticated: a damaged or altered header cannot
  hide a use); a failure, or a KEK the keyring does not hold, is **unreadable**;
* a KMS envelope in another format (AWS KMS, another plugin): not ours, counted per provider
  name; with ``--provider NAME`` the keyring serves NAME, so such a value under NAME is
  **unreadable**; a value in the keyring format naming a KEK the keyring does not hold is
  **unreadable**, unless ``--provider`` names other providers than its own (another keyring's);
* a malformed KMS envelope or an unknown ``k8s:enc:`` form: **unreadable**;
* identity and static-key values: counted, never KMS.

Per source, a SHA-256 trailer that does not match, or a snapshot file last written before the
KEK stopped being active (the creation of the next KEK), is a **problem**: that proof would
not cover what was written since. The proof holds only with nothing needing, nothing unreadable
and no problem. Work is one pass per source; memory is bounded by the counts and a capped
unwrap cache.

Sources go through :func:`open_proof_source`, the one place that turns a SOURCE argument into
records: snapshot files (also ``.zip``/``.gz``), ``s3://`` objects and a running etcd. The walk
and the per-source checks (:func:`scan_sources`) are shared with the PKCS#11 proof
(:mod:`snapshot_tools.kek_usage_pkcs11`).

References: ``snapshot_tools/check.py`` (the same sources and record walk), ``kmsv2.parse``
(``ValidateEncryptedObject``), ``kms_plugin.keks.format`` (the wrapped-key header).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from kms_plugin import api as plugin
from snapshot_tools.drill_select import parse_name
from snapshot_tools.errors import MalformedValue, UsageError
from snapshot_tools.inputs import is_s3_url
from snapshot_tools.providers import kmsv1, kmsv2
from snapshot_tools.providers.registry import FORMATS, IDENTITY, format_of
from snapshot_tools.resources import parse_etcd_key, resource_label
from snapshot_tools.sources import judged_records, open_source

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Mapping, Sequence

    from kms_plugin.api import Keyring
    from snapshot_tools.inputs import S3Options
    from snapshot_tools.sources import RecordSource

FIRST_KEYS = 5  # keys listed per resource (the rest are counted)
_UNWRAP_CACHE = 1 << 16
_MAX_V1_NAME = 256  # bytes of a KMS v1 value searched for the end of the provider name
_KMS_V1 = next(f for f in FORMATS if f.kms_version == "v1")
_KMS_V2 = next(f for f in FORMATS if f.kms_version == "v2")


class ProofSource(NamedTuple):
    """An opened SOURCE and when its data was taken (epoch seconds; ``None``: live or unknown)."""

    source: RecordSource
    taken_at: float | None


class ProofAccess(NamedTuple):
    """How to reach the SOURCEs that are not local files: S3 and a live etcd's TLS files."""

    s3: S3Options | None = None
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None


def open_proof_source(spec: str, access: ProofAccess = ProofAccess()) -> ProofSource:  # noqa: B008 - immutable
    """The one entry point for a ``--proof`` SOURCE: a snapshot file (``.db``, ``.zip``, ``.gz``),
    an ``s3://bucket/key`` object, or a running etcd (``https://host:port``, read at one revision
    with its history down to the compaction point).

    ``taken_at``: a local file's mtime; an S3 object's time from its K3s/RKE2 name
    (``<name>-<node>-<unix seconds>``), else unknown; a live etcd is now (``None``).

    Raises:
        InputError/SnapshotError: a missing, unreadable or damaged snapshot.
        S3Unreachable, EtcdUnreachable: a remote source that did not answer (exit 4).
    """
    if spec.startswith(("http://", "https://")):
        from snapshot_tools.live_etcd import EtcdSource, etcd_target  # grpc and pyetcd only when needed

        return ProofSource(EtcdSource(etcd_target(spec, access.cacert, access.cert, access.key)), None)
    if is_s3_url(spec):
        name = parse_name(spec.rsplit("/", 1)[-1])
        return ProofSource(open_source(spec, access.s3), None if name is None else float(name.timestamp))
    source = open_source(spec)
    try:
        taken_at: float | None = os.stat(spec).st_mtime
    except OSError:
        taken_at = None
    return ProofSource(source, taken_at)


@dataclass
class SourceScan:
    """What one source held."""

    name: str
    revision: int
    compacted: int
    values: int = 0
    integrity: str = "unknown"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "revision": self.revision,
            "compacted_revision": self.compacted,
            "values": self.values,
            "integrity": self.integrity,
        }


@dataclass
class Findings:
    """Counts per resource and the first few ``key@revision`` of each."""

    counts: Counter[str] = field(default_factory=Counter)
    first: dict[str, list[str]] = field(default_factory=dict)

    def add(self, label: str, key: bytes, revision: int, source: str) -> None:
        self.counts[label] += 1
        shown = self.first.setdefault(label, [])
        if len(shown) < FIRST_KEYS:
            shown.append(f"{key.decode('utf-8', 'backslashreplace')}@{revision} ({source})")

    def add_object(self, key: bytes, revision: int, source: str) -> None:
        """:meth:`add` under the object's resource (``secrets``, ``deployments.apps``, ...)."""
        ref = parse_etcd_key(key)
        self.add(resource_label(ref) if ref is not None else "(not an API object)", key, revision, source)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def to_json(self) -> list[dict[str, Any]]:
        return [{"what": k, "count": n, "first": self.first[k]} for k, n in sorted(self.counts.items())]


@dataclass
class KekUsage:
    """The proof (or refusal) for one KEK over all sources; data only, never key material."""

    kek_id: str
    key_id: str
    sources: list[SourceScan] = field(default_factory=list)
    needing: Findings = field(default_factory=Findings)  # by resource
    unreadable: Findings = field(default_factory=Findings)  # by reason
    by_kek: Counter[str] = field(default_factory=Counter)  # values per other keyring KEK
    other_kms: Counter[str] = field(default_factory=Counter)  # values per foreign KMS provider
    not_kms: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def proven(self) -> bool:
        """No stored value needs the KEK, every value was read, every source is whole."""
        return bool(self.sources) and not self.needing and not self.unreadable and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "kek_id": self.kek_id,
            "key_id": self.key_id,
            "proven_unused": self.proven,
            "sources": [s.to_json() for s in self.sources],
            "needing": self.needing.to_json(),
            "unreadable": self.unreadable.to_json(),
            "values_by_kek": dict(sorted(self.by_kek.items())),
            "other_kms": dict(sorted(self.other_kms.items())),
            "not_kms": self.not_kms,
            "problems": self.problems,
            "notes": self.notes,
        }

    def summary(self) -> dict[str, Any]:
        """The short form kept in the audit log: sources, revisions and counts."""
        return {
            "sources": [{"source": s.name, "revision": s.revision, "values": s.values} for s in self.sources],
            "values_by_kek": dict(sorted(self.by_kek.items())),
        }


class Envelope(NamedTuple):
    """A KMS value's parts that say who wrapped its data key."""

    provider: str
    key_id: str | None  # KMS v2 only
    wrapped: bytes
    annotations: Mapping[str, bytes]


def _envelope(value: bytes, version: str) -> Envelope:
    """The KMS envelope of ``value`` (starting with its KMS prefix).

    Raises:
        MalformedValue: not a well-formed envelope.
    """
    if version == "v2":
        name, sep, payload = value[len(_KMS_V2.prefix) :].partition(b":")
        if not sep or not name:
            raise MalformedValue("kms v2: no provider name")
        obj = kmsv2.parse(payload)
        return Envelope(name.decode("utf-8", "replace"), obj.key_id, obj.encrypted_dek_source, obj.annotations)
    body = value[len(_KMS_V1.prefix) :]
    # v1 names may hold ':'; try each end, preferring one whose DEK is in the keyring format.
    found: Envelope | None = None
    at = body.find(b":")
    while 0 < at <= _MAX_V1_NAME:
        try:
            wrapped, _ = kmsv1.split(body[at + 1 :])
        except MalformedValue:
            wrapped = b""
        if wrapped:
            env = Envelope(body[:at].decode("utf-8", "replace"), None, wrapped, {})
            if plugin.wrapped_kek_id(wrapped) is not None:
                return env
            found = found or env
        at = body.find(b":", at + 1)
    if found is None:
        raise MalformedValue("kms v1: no provider name or encrypted DEK")
    return found


def _kms_envelope(value: bytes, key: bytes, revision: int, source: str, usage: KekUsage) -> Envelope | None:
    """The KMS envelope of a stored value, or ``None`` for a value no KEK can need: identity and
    static-key values are counted as not KMS, unknown forms and malformed envelopes as unreadable
    (:meth:`ProofScanner.judge` judges the values this leaves it)."""
    fmt = format_of(value)
    if fmt is IDENTITY or (fmt is not None and fmt.static is not None):
        usage.not_kms += 1
        return None
    if fmt is None or fmt.kms_version is None:
        usage.unreadable.add("an unknown k8s:enc: storage form", key, revision, source)
        return None
    try:
        return _envelope(value, fmt.kms_version)
    except MalformedValue as exc:
        usage.unreadable.add(f"malformed KMS {fmt.kms_version} envelope ({exc})", key, revision, source)
        return None


class ProofScanner:
    """The rules every retire proof shares; a subclass says how a value names its key.

    Per KMS value: naming the target (by the key its wrapped key names, or by the stored v2
    key_id) is **needing**; not in the plugin's formats is another plugin's, **unreadable** under
    a ``--provider`` name; naming a key this side does not hold (or cannot use) is **unreadable**,
    unless ``--provider`` says the provider is another plugin's; naming a held key, the wrapped
    key must open under it (a failure is **unreadable**: an altered header cannot hide a use).
    """

    #: How a message names the formats of this plugin (a value outside them is not ours).
    formats = "the plugin's wrapped format"

    def __init__(self, target: Hashable, target_key_id: str, providers: Sequence[str], usage: KekUsage) -> None:
        self.target = target
        self.target_key_id = target_key_id
        self.providers = set(providers)
        self.usage = usage
        self.seen: set[str] = set()  # KMS provider names met

    def named(self, env: Envelope) -> Hashable | None:
        """The key ``env``'s wrapped key names (None: not in this plugin's formats)."""
        raise NotImplementedError

    def unusable(self, named: Hashable) -> str | None:
        """Why a value naming ``named`` cannot be read whatever its provider (a retired key), or None."""
        return None

    def held(self, named: Hashable) -> str | None:
        """The label ``by_kek`` counts values of ``named`` under; None: not held here."""
        raise NotImplementedError

    def not_held(self, named: Hashable) -> str:
        """Why a value naming a key that is not held is unreadable."""
        raise NotImplementedError

    def open(self, env: Envelope, label: str) -> str | None:
        """Why ``env``'s wrapped key does not open under held key ``label`` (None: it does)."""
        raise NotImplementedError

    def judge(self, key: bytes, revision: int, value: bytes, source: str) -> None:
        """Count one stored revision in :attr:`usage`."""
        usage = self.usage
        env = _kms_envelope(value, key, revision, source, usage)
        if env is None:
            return
        self.seen.add(env.provider)
        named = self.named(env)
        if (named is not None and named == self.target) or env.key_id == self.target_key_id:
            usage.needing.add_object(key, revision, source)
            return
        ours = not self.providers or env.provider in self.providers  # --provider: only those are ours
        if named is None:
            if env.provider in self.providers:
                usage.unreadable.add(
                    f"provider {env.provider!r}: data key not in {self.formats}", key, revision, source
                )
            else:
                usage.other_kms[env.provider] += 1
            return
        why = self.unusable(named)
        if why is not None:
            usage.unreadable.add(why, key, revision, source)
            return
        label = self.held(named)
        if label is None:
            if ours:
                usage.unreadable.add(self.not_held(named), key, revision, source)
            else:
                usage.other_kms[env.provider] += 1  # another plugin's value
            return
        failure = self.open(env, label)
        if failure is not None:
            usage.unreadable.add(failure, key, revision, source)
            return
        usage.by_kek[label] += 1


class _Scanner(ProofScanner):
    formats = "the keyring's wrapped format"

    def __init__(self, keyring: Keyring, kek_id: str, providers: Sequence[str], usage: KekUsage) -> None:
        super().__init__(kek_id, keyring.key_id_for(kek_id), providers, usage)
        self.keyring = keyring
        self.ids = {str(row["id"]) for row in keyring.describe()}
        self._opened: dict[tuple[bytes, str | None], str | None] = {}  # -> failure reason or None

    def named(self, env: Envelope) -> str | None:
        return plugin.wrapped_kek_id(env.wrapped)

    def held(self, named: Hashable) -> str | None:
        return named if isinstance(named, str) and named in self.ids else None

    def not_held(self, named: Hashable) -> str:
        return f"wrapped by KEK {named}, which this keyring does not hold"

    def open(self, env: Envelope, label: str) -> str | None:
        slot = (env.wrapped, env.key_id)
        if slot in self._opened:
            return self._opened[slot]
        try:
            self.keyring.unwrap(env.wrapped, key_id=env.key_id, annotations=dict(env.annotations) or None)
            failure = None
        except plugin.Error:
            failure = f"wrapped key does not open under KEK {label} (damaged or altered)"
        if len(self._opened) >= _UNWRAP_CACHE:
            self._opened.clear()
        self._opened[slot] = failure
        return failure


def _demoted_at(keyring: Keyring, kek_id: str) -> float | None:
    """When ``kek_id`` stopped being active: the creation of the first KEK made after it."""
    rows = keyring.describe()
    created = {str(r["id"]): datetime.fromisoformat(str(r["created"])).timestamp() for r in rows}
    mine = created[kek_id]
    later = [t for i, t in created.items() if i != kek_id and t > mine]
    return min(later) if later else None


def kek_usage(
    sources: Sequence[str],
    keyring: Keyring,
    kek_id: str,
    *,
    providers: Sequence[str] = (),
    access: ProofAccess = ProofAccess(),  # noqa: B008 - immutable
) -> KekUsage:
    """Scan every revision of every source for values that need KEK ``kek_id`` of ``keyring``.

    Raises:
        UsageError: no source, or ``kek_id`` is not in the keyring.
        InputError/SnapshotError: a source cannot be opened or is damaged (exit 3).
    """
    if not sources:
        raise UsageError("give at least one --proof SOURCE")
    try:
        key_id = keyring.key_id_for(kek_id)
    except plugin.Error as exc:
        raise UsageError(str(exc)) from None
    usage = KekUsage(kek_id, key_id)
    scanner = _Scanner(keyring, kek_id, providers, usage)
    scan_sources(sources, scanner.judge, usage, access, _demoted_at(keyring, kek_id))
    refuse_unknown_providers(providers, scanner.seen)
    return usage


def refuse_unknown_providers(providers: Sequence[str], seen: set[str]) -> None:
    """A ``--provider`` name under which no source stores a value is refused: ``--provider``
    narrows what counts as this keyring's, so a mistyped name must not pass a proof.

    Raises:
        UsageError: the first such name.
    """
    for name in sorted(set(providers) - seen):
        raise UsageError(
            f"--provider {name!r}: no value of the sources is stored under this KMS provider name "
            "(mistyped? drop the option when no provider name is needed)"
        )


def scan_sources(
    sources: Sequence[str],
    judge: Callable[[bytes, int, bytes, str], None],
    usage: KekUsage,
    access: ProofAccess,
    demoted: float | None,
) -> None:
    """``judge(key, revision, value, source)`` every stored revision of every source, and note
    per source its revision, value count, integrity, and whether it predates ``demoted`` (when
    the KEK stopped being active: a source taken earlier would not cover what was written since).

    Raises:
        InputError/SnapshotError: a source cannot be opened or is damaged (exit 3).
    """
    kek_id = usage.kek_id
    for spec in sources:
        opened = open_proof_source(spec, access)
        with opened.source as source:
            scan = SourceScan(source.name, source.revision, source.compacted_revision())
            usage.sources.append(scan)
            source.start_integrity()
            for rec, _latest, _deleted in judged_records(source, all_revisions=True):
                scan.values += 1
                judge(rec.key, rec.mod_revision, rec.value, source.name)
            scan.integrity = source.integrity()
        if scan.integrity == "mismatch":
            usage.problems.append(f"{scan.name}: the SHA-256 trailer does not match the contents (damaged)")
        elif scan.integrity == "missing":
            usage.notes.append(f"{scan.name}: no SHA-256 trailer (a raw member/snap/db copy?)")
        if demoted is not None and opened.taken_at is not None and opened.taken_at < demoted:
            usage.problems.append(
                f"{scan.name} was written before KEK {kek_id} stopped being active; "
                "take a new snapshot (after the apiserver has picked up the rotation) and prove again"
            )
