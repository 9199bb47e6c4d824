"""``check``: judge every stored value of a snapshot against a history of encryption configs.

The library half of ``snapshot-tools check``: it opens the snapshot, loads the configs, builds
the KMS unwrappers and returns a :class:`~snapshot_tools.report.CheckReport`; it prints nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from snapshot_tools.errors import UsageError
from snapshot_tools.keysets import load_keyset
from snapshot_tools.kms import CachingUnwrapper, PluginUnwrapper, Unwrapper
from snapshot_tools.report import CheckReport
from snapshot_tools.resolve import Resolver
from snapshot_tools.resources import KeyParser
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
    aws_kms: dict[str, str | None] = field(default_factory=dict)  # provider name -> AWS key or None
    aws: object | None = None  # kms_plugin.keks.awsclient.AwsSettings template (key unset)
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


def parse_aws_kms(values: Sequence[str]) -> dict[str, str | None]:
    """``["a=alias/k", "b"]`` -> ``{"a": "alias/k", "b": None}`` (``--aws-kms NAME[=KEY]``)."""
    out: dict[str, str | None] = {}
    for item in values:
        name, sep, key = item.partition("=")
        if not name or (sep and not key):
            raise UsageError(f"--aws-kms takes NAME or NAME=KEY (ARN, key id or alias), got {item!r}")
        if name in out:
            raise UsageError(f"--aws-kms names provider {name!r} twice")
        out[name] = key or None
    return out


def build_unwrappers(
    keyset: KeySet,
    kms: dict[str, str],
    keyrings: dict[str, str],
    aws_kms: dict[str, str | None] | None = None,
    aws: object | None = None,
) -> dict[str, Unwrapper]:
    """One caching unwrapper per KMS provider name: flags first, else the config's endpoint."""
    aws_kms = aws_kms or {}
    for a, b, names in (("--kms", "--keyring", set(kms) & set(keyrings)),
                        ("--kms", "--aws-kms", set(kms) & set(aws_kms)),
                        ("--keyring", "--aws-kms", set(keyrings) & set(aws_kms))):
        if names:
            raise UsageError(f"{a} and {b} may not both name provider {sorted(names)[0]!r}")
    unwrappers: dict[str, Unwrapper] = {}
    if aws_kms:
        import dataclasses

        from snapshot_tools.kms import AwsKmsUnwrapper

        for name, key in aws_kms.items():
            settings = dataclasses.replace(aws, key=key)  # type: ignore[type-var]
            unwrappers[name] = CachingUnwrapper(AwsKmsUnwrapper(settings))
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




class _Trailer(threading.Thread):
    """The SHA-256 trailer check on the second core while the main thread judges values.

    hashlib releases the GIL on large buffers, so hashing the whole file costs the check
    (almost) no wall time on a machine with a free core.
    """

    def __init__(self, snap: Snapshot) -> None:
        super().__init__(name="snapshot-trailer", daemon=True)
        self.snap = snap
        self.result: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.snap.trailer
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc

    def get(self) -> str:
        self.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def run_check(
    opts: CheckOptions, progress: Callable[[int], None] | None = None
) -> CheckReport:
    """Judge every reported value of the snapshot; see DESIGN.md "Keys and verdicts"."""
    keyset = load_keyset(opts.configs)
    unwrappers = build_unwrappers(keyset, opts.kms, opts.keyrings, opts.aws_kms, opts.aws)
    resolver = Resolver(keyset, unwrappers)
    wanted = set(opts.resources)
    report = CheckReport.begin(keyset)
    parse = KeyParser(opts.etcd_prefix).parse
    reported, resolve, add = resolver.is_reported_gr, resolver.resolve_gr, report.rows.append
    all_revisions = opts.all_revisions
    with Snapshot.open(opts.snapshot) as snap:
        trailer = _Trailer(snap)
        trailer.start()
        try:
            done = 0
            for rec, latest in _records(snap, b"", opts.all_revisions):
                done += 1
                if progress is not None and done % 4096 == 0:
                    progress(done)
                key, value = rec.key, rec.value
                gr, base, name, label = parse(key)
                if wanted and label not in wanted:
                    continue
                if not reported(value, gr):
                    report.uncovered_plaintext += 1
                    continue
                res = resolve(key, value, gr)
                # report.add_row, inlined: this loop runs once per object
                add((key, base, name, rec.mod_revision, res, latest if all_revisions else None))
        finally:
            trailer.join()  # never close the map under the hashing thread
        report.snapshot = {"path": str(opts.snapshot), "revision": snap.revision, "trailer": trailer.get()}
    report.finish(resolver)
    return report
