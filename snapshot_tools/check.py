"""``check``: judge every stored value of a snapshot against a history of encryption configs.

The library half of ``snapshot-tools check``: it opens the snapshot, loads the configs, builds
the KMS unwrappers and returns a :class:`~snapshot_tools.report.CheckReport`; it prints nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from snapshot_tools.errors import UsageError
from snapshot_tools.keysets import load_keyset
from snapshot_tools.kms import CachingUnwrapper, PluginUnwrapper, Unwrapper
from snapshot_tools.report import CheckReport, ObjectResult
from snapshot_tools.resolve import Resolver
from snapshot_tools.resources import parse_etcd_key, resource_label
from snapshot_tools.snapshot import Snapshot

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from snapshot_tools.keysets import KeySet
    from snapshot_tools.snapshot import Record


@dataclass
class CheckOptions:
    """Everything ``check`` needs; built by the CLI from its flags."""

    snapshot: str
    configs: Sequence[str]
    kms: dict[str, str] = field(default_factory=dict)  # provider name -> unix:// endpoint
    keyrings: dict[str, str] = field(default_factory=dict)  # provider name -> keyring file
    all_revisions: bool = False
    resources: Sequence[str] = ()
    etcd_prefix: str = "/registry"


def parse_assignments(values: Sequence[str], flag: str) -> dict[str, str]:
    """``["a=b", ...]`` -> ``{"a": "b"}``; a malformed or repeated name is a usage error."""
    out: dict[str, str] = {}
    for item in values:
        name, sep, target = item.partition("=")
        if not sep or not name or not target:
            raise UsageError(f"{flag} takes NAME=VALUE, got {item!r}")
        if name in out:
            raise UsageError(f"{flag} names provider {name!r} twice")
        out[name] = target
    return out


def build_unwrappers(keyset: KeySet, kms: dict[str, str], keyrings: dict[str, str]) -> dict[str, Unwrapper]:
    """One caching unwrapper per KMS provider name: flags first, else the config's endpoint."""
    both = set(kms) & set(keyrings)
    if both:
        raise UsageError(f"--kms and --keyring may not both name provider {sorted(both)[0]!r}")
    unwrappers: dict[str, Unwrapper] = {}
    for name, path in keyrings.items():
        from snapshot_tools.kms import KeyringUnwrapper

        unwrappers[name] = CachingUnwrapper(KeyringUnwrapper(path))
    for name, endpoint in kms.items():
        provider = keyset.kms_provider(name)
        version = provider.api_version if provider is not None else "v2"
        unwrappers[name] = CachingUnwrapper(PluginUnwrapper(endpoint, api_version=version))
    for provider in keyset.kms_all():
        if provider.name not in unwrappers:
            unwrappers[provider.name] = CachingUnwrapper(
                PluginUnwrapper(
                    provider.endpoint, timeout=provider.timeout_s, api_version=provider.api_version
                )
            )
    return unwrappers


def _records(snap: Snapshot, prefix: bytes, all_revisions: bool) -> Iterator[tuple[Record, bool]]:
    """Records to judge with a ``latest`` flag; tombstones are not objects."""
    if not all_revisions:
        for rec in snap.latest(prefix):
            yield rec, True
        return
    group: list[Record] = []
    for rec in snap.all_revisions(prefix):
        if group and group[0].key != rec.key:
            yield from _flush(group)
            group = []
        group.append(rec)
    yield from _flush(group)


def _flush(group: list[Record]) -> Iterator[tuple[Record, bool]]:
    if not group:
        return
    live_last = not group[-1].tombstone
    for i, rec in enumerate(group):
        if not rec.tombstone:
            yield rec, live_last and i == len(group) - 1


def run_check(
    opts: CheckOptions, progress: Callable[[int], None] | None = None
) -> CheckReport:
    """Judge every reported value of the snapshot; see DESIGN.md "Keys and verdicts"."""
    keyset = load_keyset(opts.configs)
    unwrappers = build_unwrappers(keyset, opts.kms, opts.keyrings)
    resolver = Resolver(keyset, unwrappers)
    wanted = set(opts.resources)
    report = CheckReport.begin(keyset)
    with Snapshot.open(opts.snapshot) as snap:
        report.snapshot = {"path": str(opts.snapshot), "revision": snap.revision, "trailer": snap.trailer}
        done = 0
        for rec, latest in _records(snap, b"", opts.all_revisions):
            done += 1
            if progress is not None and done % 4096 == 0:
                progress(done)
            ref = parse_etcd_key(rec.key, opts.etcd_prefix)
            label = resource_label(ref) if ref is not None else None
            if wanted and label not in wanted:
                continue
            if not resolver.is_reported(rec.value, ref):
                report.uncovered_plaintext += 1
                continue
            res = resolver.resolve(rec.key, rec.value, ref)
            report.add(ObjectResult.make(rec, ref, res, latest if opts.all_revisions else None))
    report.finish(resolver)
    return report
