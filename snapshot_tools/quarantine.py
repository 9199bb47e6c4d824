"""``quarantine``: take the objects nothing can read out of a snapshot, so that it restores.

A kube-apiserver whose secrets cache meets one value it cannot decrypt never becomes ready
(issue 15). :func:`run_quarantine` finds every object whose *latest* value the configs given
cannot read (``check``'s ``unreadable``; ``retired`` too on request) and deletes it the way etcd
deletes keys: one transaction at a new revision (current + 1), one tombstone per key (sub
0..n-1 in key order; the revision key ends in ``'t'``, the value is a ``mvccpb.KeyValue`` with only
the key). Every other bucket, key and revision is copied unchanged; with ``all_revisions``,
unreadable older revisions of the objects that stay (deleted ones included) are left out as
well (a watch from an older resourceVersion then does not see them), while a tombstoned
object keeps its history, like any object etcd deletes. Nothing is lost: every stored
revision of a quarantined object goes, still encrypted, to a set-aside directory
(:mod:`snapshot_tools.set_aside`) before OUT is published, and :func:`run_restore` puts the
objects back later, in a transaction of puts at a new revision, re-encrypted with a new config
or as stored.

The output is a rebuilt snapshot (:func:`snapshot_tools.snapshot_copy.copy_snapshot`: atomic,
re-read, page accounting) and is then compared with the input record for record: every record
the same bytes, except the ones left out, and the new transaction exactly as built. A KMS
that does not answer is not a lost key: nothing is written at all (:class:`KMSUnavailable`).

References: etcd ``server/storage/mvcc/kvstore_txn.go`` (``storeTxnWrite.delete``: tombstone
revision key and ``KeyValue{Key}``; ``put``: create_revision, version 1 for a new key),
``kvstore.go`` (``restore``: current revision, compaction), spec sections 1.3, 1.7.
"""

from __future__ import annotations

import os
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from snapshot_tools.atomic_file import check_target
from snapshot_tools.errors import (
    KMSUnavailable,
    OutputError,
    RewriteRefused,
    SnapshotError,
    UsageError,
)
from snapshot_tools.inputs import is_s3_url, opened
from snapshot_tools.integrity import require_integrity
from snapshot_tools.k3s_bootstrap import prepare_keyset
from snapshot_tools.keysets import config_files, load_keyset
from snapshot_tools.mvcc import (
    KEY_BUCKET,
    META_BUCKET,
    TOMBSTONE_KEY_SIZE,
    revision_key,
)
from snapshot_tools.proto.etcd_kv_pb2 import KeyValue
from snapshot_tools.readers import Reader
from snapshot_tools.resources import KeyParser, resolve_resource
from snapshot_tools.set_aside import MANIFEST, SetAsideDir, read_set_aside
from snapshot_tools.snapshot import Snapshot
from snapshot_tools.snapshot_copy import DROP, copy_snapshot
from snapshot_tools.unwrap import KeyAccess, open_unwrappers
from snapshot_tools.write_target import WriteTarget

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from pathlib import Path

    from snapshot_tools.inputs import S3Options, SnapshotInput
    from snapshot_tools.keysets import KeySet
    from snapshot_tools.readers import Resolution
    from snapshot_tools.set_aside import RestoreEntry
    from snapshot_tools.snapshot import Record
    from snapshot_tools.snapshot_copy import BucketPath, _Drop
    from snapshot_tools.unwrap import Unwrapper

SCHEDULED_COMPACT_REV = b"scheduledCompactRev"
FINISHED_COMPACT_REV = b"finishedCompactRev"
TOMBSTONED = "tombstoned"  # the object's latest value was unreadable: deleted at the new revision
HISTORY = "history"  # --all-revisions: only older revisions were unreadable, and were left out


@dataclass
class QuarantineOptions:
    """Everything ``quarantine`` needs; built by the CLI from its flags."""

    snapshot: str
    access: KeyAccess
    output: str | None = None  # None only with dry_run
    directory: str | None = None  # the set-aside directory (--to-dir); None only with dry_run
    resources: Sequence[str] = ()
    all_revisions: bool = False
    include_retired: bool = False
    dry_run: bool = False
    force: bool = False
    etcd_prefix: str = "/registry"
    skip_hash_check: bool = False
    s3: S3Options | None = None  # for an s3:// snapshot
    download_progress: bool = False  # a download bar on stderr (the CLI: when it is a terminal)


@dataclass
class Finding:
    """One stored revision that cannot be left where it is; no values, no key material."""

    key: bytes
    main: int
    sub: int
    mod_revision: int
    verdict: str
    reason: str | None
    provider: str
    key_name: str | None
    key_id: str | None  # KMS v2: the key_id stored with the value
    latest: bool

    def needs(self) -> str:
        """``aescbc/key1``, ``kms-v2/vault (key_id k-2)``, ``identity``: what would read it."""
        text = self.provider + (f"/{self.key_name}" if self.key_name else "")
        return text + (f" (key_id {self.key_id})" if self.key_id else "")


@dataclass
class QuarantinedObject:
    """An object taken out (``tombstoned``) or whose unreadable history was left out (``history``)."""

    key: bytes
    resource: str | None
    namespace: str | None
    name: str | None
    action: str
    findings: list[Finding] = field(default_factory=list)  # the latest first when tombstoned

    @property
    def shown_key(self) -> str:
        return self.key.decode("utf-8", "backslashreplace")


@dataclass
class QuarantineSummary:
    """What ``quarantine`` did (or, with ``dry_run``, would do)."""

    snapshot: str
    output: str | None
    directory: str | None
    dry_run: bool
    revision_in: int = 0
    revision_out: int = 0  # the new transaction's revision when something was tombstoned
    objects: list[QuarantinedObject] = field(default_factory=list)
    records: int = 0  # etcd records written (the key bucket)
    revisions_dropped: int = 0
    manifest: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0

    @property
    def tombstoned(self) -> list[QuarantinedObject]:
        return [o for o in self.objects if o.action == TOMBSTONED]

    def to_json(self) -> dict[str, object]:
        return {
            "snapshot": self.snapshot,
            "output": self.output,
            "directory": self.directory,
            "manifest": self.manifest,
            "dry_run": self.dry_run,
            "revision_in": self.revision_in,
            "revision_out": self.revision_out,
            "tombstoned": len(self.tombstoned),
            "revisions_dropped": self.revisions_dropped,
            "records": self.records,
            "objects": [
                {
                    "key": o.shown_key,
                    "resource": o.resource,
                    "namespace": o.namespace,
                    "name": o.name,
                    "action": o.action,
                    "revisions": [
                        {
                            "revision": f.mod_revision,
                            "latest": f.latest,
                            "verdict": f.verdict,
                            "reason": f.reason,
                            "needs": f.needs(),
                        }
                        for f in o.findings
                    ],
                }
                for o in self.objects
            ],
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "seconds": round(self.seconds, 3),
        }


# -- etcd records ------------------------------------------------------------------------------


def current_revision(snap: Snapshot) -> int:
    """The revision etcd starts at: the last record's, or a later compaction's (``restore``)."""
    rev = snap.revision
    if META_BUCKET in snap.buckets():
        for key, value in snap.items(META_BUCKET):
            if key in (SCHEDULED_COMPACT_REV, FINISHED_COMPACT_REV) and len(value) >= 8:
                rev = max(rev, int.from_bytes(value[:8], "big"))
    return rev


def tombstone_entries(keys: Iterable[bytes], main: int) -> list[tuple[bytes, bytes]]:
    """A transaction of deletes at ``main``, as etcd writes it: ``(revision key + 't', KeyValue{key})``."""
    return [
        (revision_key(main, sub, tombstone=True), KeyValue(key=key).SerializeToString()) for sub, key in enumerate(keys)
    ]


def put_entry(key: bytes, value: bytes, main: int, sub: int, lease: int = 0) -> tuple[bytes, bytes]:
    """A put of a key that does not exist (or was deleted) at ``main.sub``: version 1."""
    kv = KeyValue(key=key, create_revision=main, mod_revision=main, version=1, value=value, lease=lease)
    return revision_key(main, sub), kv.SerializeToString()


def compare_copy(
    src: Snapshot, out_path: Path, dropped: set[tuple[int, int]], tail: Sequence[tuple[bytes, bytes]]
) -> None:
    """The written snapshot is the input record for record, byte for byte, without the
    ``dropped`` ``(main, sub)`` records and with ``tail`` after the last one (the new
    transaction: its keys the highest revisions, so every tombstoned key's latest is its
    tombstone); every other bucket identical.

    Raises:
        OutputError: any difference.
    """

    def fail(why: str) -> OutputError:
        return OutputError(f"the written snapshot failed verification: {why}")

    try:
        with Snapshot.open(out_path) as out:
            if out.buckets() != src.buckets():
                raise fail("the bucket names differ from the input's")
            for name in src.buckets():
                if name == KEY_BUCKET:
                    continue
                if list(out.items(name)) != list(src.items(name)):
                    raise fail(f"bucket {name!r} differs from the input's")
            if KEY_BUCKET not in src.buckets():
                if tail:
                    raise fail("no key bucket")
                return
            written = out.items(KEY_BUCKET)
            for key, value in src.items(KEY_BUCKET):
                if dropped and (int.from_bytes(key[:8], "big"), int.from_bytes(key[9:17], "big")) in dropped:
                    continue
                got = next(written, None)
                if got is None or got[0] != key or got[1] != value:
                    raise fail(f"the record at revision key {key.hex()} differs from the input's")
            rest = list(written)
            if rest != list(tail):
                raise fail(f"{len(rest)} records after the input's last one, expected {len(tail)} as built")
    except SnapshotError as exc:
        raise fail(exc.reason) from None


# -- finding what to set aside -----------------------------------------------------------------


class _Judge:
    """Which stored values go: check's verdicts, for the resources asked about."""

    def __init__(self, opts: QuarantineOptions, reader: Reader, wanted: set[str]) -> None:
        self.reader = reader
        self.parser = KeyParser(opts.etcd_prefix)
        self.wanted = wanted
        self.verdicts = ("unreadable", "retired") if opts.include_retired else ("unreadable",)
        self.unavailable: list[str] = []

    def __call__(self, rec: Record, latest: bool) -> Finding | None:
        gr, _base, _name, label = self.parser.parse(rec.key)
        if self.wanted and label not in self.wanted:
            return None
        if not self.reader.is_reported(rec.value, gr):
            return None
        res = self.reader.resolve(rec.key, rec.value, gr)
        if res.verdict == "unreadable" and res.reason == "kms-unavailable":
            self.unavailable.append(f"{rec.key.decode('utf-8', 'backslashreplace')}@{rec.mod_revision}")
            return None
        if res.verdict not in self.verdicts:
            return None
        return _finding(rec, res, latest)


def _finding(rec: Record, res: Resolution, latest: bool) -> Finding:
    key_id = res.kms_ids.stored if res.kms_ids is not None else None
    return Finding(
        rec.key, rec.main, rec.sub, rec.mod_revision, res.verdict, res.reason, res.provider, res.key_name,
        key_id, latest,
    )  # fmt: skip


def _by_key(records: Iterable[Record]) -> Iterator[list[Record]]:
    group: list[Record] = []
    for rec in records:
        if group and group[0].key != rec.key:
            yield group
            group = []
        group.append(rec)
    if group:
        yield group


def find_quarantine(snap: Snapshot, opts: QuarantineOptions, judge: _Judge) -> list[QuarantinedObject]:
    """The objects to set aside, in etcd key order (one read of each value judged)."""
    parse = judge.parser.parse
    out: list[QuarantinedObject] = []

    def add(key: bytes, action: str, findings: list[Finding]) -> None:
        _gr, base, name, label = parse(key)
        namespace = base.namespace if base is not None else None
        out.append(QuarantinedObject(key, label, namespace, name, action, findings))

    if not opts.all_revisions:
        for rec in snap.latest():
            f = judge(rec, True)
            if f is not None:
                add(rec.key, TOMBSTONED, [f])
        return out
    for group in _by_key(snap.all_revisions()):
        last = group[-1]
        latest = None if last.tombstone else judge(last, True)
        older = [f for r in group[:-1] if not r.tombstone and (f := judge(r, False)) is not None]
        if latest is not None:
            add(last.key, TOMBSTONED, [latest, *older])
        elif older:
            add(last.key, HISTORY, older)
    return out


# -- quarantine --------------------------------------------------------------------------------


def input_files(snapshot: str, paths: Sequence[str], access: KeyAccess) -> list[str]:
    """Every file the command reads: the snapshot, each config (and a directory's files),
    each keyring. No output may be one of them.

    Raises:
        ConfigError: a config path that does not exist.
    """
    files = [] if is_s3_url(snapshot) else [snapshot]  # a local .zip/.gz is an input too
    for path in paths:
        files.append(path)
        files.extend(str(f) for f in config_files(path))
    files.extend(access.key_files())
    return files


def run_quarantine(opts: QuarantineOptions) -> QuarantineSummary:
    """Set aside every object whose latest value cannot be read; see the module docstring.

    Raises:
        UsageError: no output or directory without ``dry_run``; an unknown ``--resource``.
        OutputError: OUT is an input, not a regular file, or exists without ``force``; the
            directory is not empty without ``force``; the output fails verification.
        KMSUnavailable: a KMS needed for a verdict did not answer: nothing is written.
    """
    started = time.monotonic()
    with ExitStack() as stack:
        keyset, snapshot = prepare_keyset(
            opts.access.configs, opts.snapshot, opts.access, stack, opts.s3, progress=opts.download_progress
        )
        known = keyset.resource_names()
        wanted = {resolve_resource(label, known) for label in opts.resources}  # typos fail here
        inputs = input_files(opts.snapshot, opts.access.configs, opts.access)
        set_aside: SetAsideDir | None = None
        if not opts.dry_run:
            if opts.output is None or opts.directory is None:
                raise UsageError("quarantine writes OUT and the set-aside directory: give both (or --dry-run)")
            check_target(opts.output, force=opts.force, inputs=inputs)  # before a KMS is asked anything
            set_aside = SetAsideDir(opts.directory, force=opts.force, inputs=[*inputs, opts.output])
        # Unpacked or downloaded once, for the integrity check and the read.
        local = stack.enter_context(opened(snapshot, opts.s3, progress=opts.download_progress))
        if not opts.skip_hash_check:
            require_integrity(local)
        unwrappers = stack.enter_context(open_unwrappers(keyset, opts.access))
        return _quarantine(opts, local, Reader(keyset, unwrappers), wanted, set_aside, inputs, started)


def _quarantine(
    opts: QuarantineOptions,
    local: SnapshotInput,
    reader: Reader,
    wanted: set[str],
    set_aside: SetAsideDir | None,
    inputs: list[str],
    started: float,
) -> QuarantineSummary:
    summary = QuarantineSummary(local.spec, opts.output, opts.directory, opts.dry_run)
    judge = _Judge(opts, reader, wanted)
    with Snapshot.open(local.path) as snap:
        summary.revision_in = summary.revision_out = snap.revision
        summary.bytes_in = snap.size
        objects = find_quarantine(snap, opts, judge)
        if judge.unavailable:
            raise _unavailable(judge.unavailable)
        summary.objects = objects
        if opts.dry_run:
            if any(o.action == TOMBSTONED for o in objects):
                summary.revision_out = current_revision(snap) + 1
            summary.seconds = time.monotonic() - started
            return summary
        assert set_aside is not None and opts.output is not None
        doomed = [o.key for o in objects if o.action == TOMBSTONED]
        dropped = (
            {(f.main, f.sub) for o in objects for f in o.findings if not f.latest} if opts.all_revisions else set()
        )
        tail = tombstone_entries(doomed, current_revision(snap) + 1) if doomed else []
        key_path: BucketPath = (KEY_BUCKET,)

        def transform(bpath: BucketPath, key: bytes, raw: bytes) -> _Drop | None:
            if (
                bpath == key_path
                and len(key) != TOMBSTONE_KEY_SIZE
                and (int.from_bytes(key[:8], "big"), int.from_bytes(key[9:17], "big")) in dropped
            ):
                return DROP
            return None

        def append(bpath: BucketPath) -> list[tuple[bytes, bytes]]:
            return tail if bpath == key_path else []

        def before_commit() -> None:
            summary.manifest = str(set_aside.write(snap, objects, summary_facts(summary, tail)))

        result = copy_snapshot(
            snap,
            opts.output,
            transform if dropped else None,
            force=opts.force,
            before_commit=before_commit,
            inputs=inputs,
            append=append,
            check_output=lambda path: compare_copy(snap, path, dropped, tail),
            abort=set_aside.undo,
        )
    if tail:
        summary.revision_out = int.from_bytes(tail[-1][0][:8], "big")
    summary.revisions_dropped = len(dropped)
    summary.records = result.buckets.get((KEY_BUCKET,), 0)
    summary.bytes_out = result.size
    summary.seconds = time.monotonic() - started
    return summary


def summary_facts(summary: QuarantineSummary, tail: Sequence[tuple[bytes, bytes]]) -> dict[str, object]:
    """The manifest's head: where the objects came from and the revision they were deleted at."""
    return {
        "snapshot": summary.snapshot,
        "output": summary.output,
        "snapshot_revision": summary.revision_in,
        "tombstone_revision": int.from_bytes(tail[-1][0][:8], "big") if tail else None,
    }


def _unavailable(where: list[str]) -> KMSUnavailable:
    return KMSUnavailable(
        f"{len(where)} values need a KMS that could not be reached (first: {where[0]}); "
        "an unreachable KMS is not a lost key: nothing was written"
    )


# -- quarantine during a rewrite (reencrypt --quarantine-unreadable) ---------------------------------


class RewriteQuarantine:
    """The objects a rewrite takes out as it meets their unreadable latest values.

    The copy streams records in revision order; an object's latest record is its last, so by
    the time the ``key`` bucket ends every object is known and :meth:`append` can write the
    transaction of tombstones. :meth:`check_output` confirms it is the output's last records.
    """

    def __init__(self, snap: Snapshot, directory: SetAsideDir, etcd_prefix: str) -> None:
        self.snap = snap
        self.directory = directory
        self.parse = KeyParser(etcd_prefix).parse
        self.latest = {(r.main, r.sub) for r in snap.latest()}
        self.objects: dict[bytes, QuarantinedObject] = {}
        self.tail: list[tuple[bytes, bytes]] = []

    def take(self, rec: Record, res: Resolution) -> bool:
        """Quarantine ``rec``'s object if ``rec`` is its latest value; whether it was."""
        if (rec.main, rec.sub) not in self.latest:
            return False
        _gr, base, name, label = self.parse(rec.key)
        namespace = base.namespace if base is not None else None
        obj = QuarantinedObject(rec.key, label, namespace, name, TOMBSTONED, [_finding(rec, res, True)])
        self.objects[rec.key] = obj
        return True

    def append(self, bpath: BucketPath) -> list[tuple[bytes, bytes]]:
        if bpath != (KEY_BUCKET,) or not self.objects:
            return []
        self.tail = tombstone_entries(sorted(self.objects), current_revision(self.snap) + 1)
        return self.tail

    def check_output(self, path: Path) -> None:
        """The output ends with exactly the transaction built (so each key's latest is its tombstone).

        Raises:
            OutputError: it does not.
        """
        if not self.tail:
            return
        with Snapshot.open(path) as out:
            # The last records only: a list of every record would hold the whole snapshot.
            last = list(deque(out.items(KEY_BUCKET), maxlen=len(self.tail)))
        if last != self.tail:
            raise OutputError("the written snapshot failed verification: the tombstones are not its last records")

    def write(self, output: str) -> str:
        """Set every revision of the objects aside; the manifest's path."""
        facts: dict[str, object] = {
            "snapshot": str(self.snap.path),
            "output": output,
            "snapshot_revision": self.snap.revision,
            "tombstone_revision": int.from_bytes(self.tail[-1][0][:8], "big") if self.tail else None,
        }
        objects = [self.objects[k] for k in sorted(self.objects)]
        return str(self.directory.write(self.snap, objects, facts))

    def keys(self) -> list[str]:
        return [self.objects[k].shown_key for k in sorted(self.objects)]


# -- putting set-aside objects back --------------------------------------------------------------


@dataclass
class RestoreOptions:
    """``quarantine --restore-from DIR SNAPSHOT OUT [--to NEW --config ...]``."""

    directory: str
    snapshot: str
    output: str
    access: KeyAccess = field(default_factory=KeyAccess)  # configs that read the set-aside values
    to: str | None = None  # write them as NEW's write provider does; None: as stored
    force: bool = False
    etcd_prefix: str = "/registry"
    skip_hash_check: bool = False
    s3: S3Options | None = None  # for an s3:// snapshot
    download_progress: bool = False


@dataclass
class RestoreSummary:
    """What ``--restore-from`` put back, and what it left in the directory."""

    output: str
    directory: str
    revision_in: int = 0
    revision_out: int = 0
    restored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "key (why)"
    reencrypted: bool = False
    checked: bool = False  # the values were read with the configs given
    bytes_out: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "output": self.output,
            "directory": self.directory,
            "revision_in": self.revision_in,
            "revision_out": self.revision_out,
            "restored": self.restored,
            "skipped": self.skipped,
            "reencrypted": self.reencrypted,
            "checked": self.checked,
            "bytes_out": self.bytes_out,
            "seconds": round(self.seconds, 3),
        }


def run_restore(opts: RestoreOptions) -> RestoreSummary:
    """Put the tombstoned objects of a set-aside directory back into a copy of the snapshot.

    One transaction of puts at current + 1 (sub in key order), each a new object (version 1),
    its lease kept when the lease still exists. An object that exists again in the snapshot is
    left out (and listed). With ``to`` every value is read with the configs given and written as
    NEW's write provider writes; with configs alone each must be readable by the first; with
    neither the values go back as stored, unchecked.

    Raises:
        InputError: the directory or its manifest is missing or damaged.
        RewriteRefused: values the configs still cannot read (nothing written).
        KMSUnavailable: a KMS needed did not answer (nothing written).
    """
    started = time.monotonic()
    entries = read_set_aside(opts.directory)
    paths = ([opts.to] if opts.to else []) + list(opts.access.configs)
    if opts.to and not opts.access.configs:
        raise UsageError("--to needs --config: the configs that read the set-aside values")
    inputs = input_files(opts.snapshot, paths, opts.access)
    inputs += [str(e.path) for e in entries]
    inputs.append(os.path.join(opts.directory, MANIFEST))  # OUT may not replace it either
    check_target(opts.output, force=opts.force, inputs=inputs)
    keyset = load_keyset(paths) if paths else None  # a bad config fails before any download
    summary = RestoreSummary(opts.output, opts.directory, reencrypted=opts.to is not None, checked=bool(paths))
    with ExitStack() as stack:
        local = stack.enter_context(opened(opts.snapshot, opts.s3, progress=opts.download_progress))
        if not opts.skip_hash_check:
            require_integrity(local)
        unwrappers = stack.enter_context(open_unwrappers(keyset, opts.access)) if keyset is not None else None
        return _restore(opts, local, entries, keyset, unwrappers, summary, inputs, started)


def _restore(
    opts: RestoreOptions,
    local: SnapshotInput,
    entries: Sequence[RestoreEntry],
    keyset: KeySet | None,
    unwrappers: dict[str, Unwrapper] | None,
    summary: RestoreSummary,
    inputs: list[str],
    started: float,
) -> RestoreSummary:
    group_resource = KeyParser(opts.etcd_prefix).group_resource
    reader = Reader(keyset, unwrappers or {}, keep_plaintext=True) if keyset is not None else None
    target = WriteTarget(keyset.configs[0], unwrappers or {}) if keyset is not None and opts.to else None
    unreadable: list[str] = []
    unavailable: list[str] = []
    with Snapshot.open(local.path) as snap:
        summary.revision_in = summary.revision_out = snap.revision
        live = {r.key for r in snap.latest()}
        leases = {k for k, _v in snap.items(b"lease")} if b"lease" in snap.buckets() else set()
        values: list[tuple[bytes, bytes, int]] = []
        for e in sorted(entries, key=lambda e: e.key):
            shown = e.key.decode("utf-8", "backslashreplace")
            if e.key in live:
                summary.skipped.append(f"{shown} (exists in the snapshot)")
                continue
            value = e.value
            gr = group_resource(e.key)
            if reader is not None:
                res = reader.resolve(e.key, value, gr)
                if res.verdict == "unreadable" and res.reason == "kms-unavailable":
                    unavailable.append(shown)
                    continue
                ok = res.verdict in ("current", "stale") or (target is not None and res.plaintext is not None)
                if not ok or res.plaintext is None:
                    unreadable.append(f"{shown} ({res.reason or res.verdict})")
                    continue
                if target is not None:
                    writer = target.writer(gr)
                    if writer is None:
                        raise UsageError(f"{shown}: the new config does not cover its resource")
                    value = writer.write(res.plaintext, e.key)
                    if writer.read(value, e.key) != res.plaintext:
                        raise OutputError(f"{shown}: the re-encrypted value does not read back")
            lease = e.lease if e.lease and e.lease.to_bytes(8, "big", signed=True) in leases else 0
            values.append((e.key, value, lease))
        if unavailable:
            raise _unavailable(unavailable)
        if unreadable:
            raise RewriteRefused(
                "set-aside values the configs given still cannot read",
                unreadable,
                "give the config that holds their key",
            )
        main = current_revision(snap) + 1
        tail = [put_entry(k, v, main, sub, lease) for sub, (k, v, lease) in enumerate(values)]
        key_path: BucketPath = (KEY_BUCKET,)
        result = copy_snapshot(
            snap,
            opts.output,
            force=opts.force,
            inputs=inputs,
            append=lambda bpath: tail if bpath == key_path else [],
            check_output=lambda path: compare_copy(snap, path, set(), tail),
        )
    summary.restored = [k.decode("utf-8", "backslashreplace") for k, _v, _l in values]
    if tail:
        summary.revision_out = main
    summary.bytes_out = result.size
    summary.seconds = time.monotonic() - started
    return summary


__all__ = [
    "HISTORY",
    "TOMBSTONED",
    "Finding",
    "QuarantineOptions",
    "QuarantineSummary",
    "QuarantinedObject",
    "RestoreOptions",
    "RestoreSummary",
    "RewriteQuarantine",
    "compare_copy",
    "current_revision",
    "find_quarantine",
    "put_entry",
    "run_quarantine",
    "run_restore",
    "tombstone_entries",
]
