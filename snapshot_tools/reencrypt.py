"""``reencrypt`` and ``decrypt``: rewrite every stored value of a snapshot under a new config.

Each value is read with the whole history (the configs given plus the new one) and written
again the way a kube-apiserver started with the new config would write it: its first provider
for the resource, that provider's first key, the etcd key as AAD where the format has one. KMS
v2 output uses one fresh seed per run, wrapped once (like an apiserver process). The output is a
rebuilt snapshot (:func:`snapshot_tools.snapshot_copy.copy_snapshot`): never the input, written beside
OUT, verified, then renamed. Verification decrypts every rewritten record with exactly the
target's key (for KMS v2: this run's seed, once confirmed to be what the KMS unwraps the stored
DEK source to) and compares a checksum of the plaintext with what was written; unchanged
records are compared byte for byte by the copy.

References: ``transformer.go`` (the first provider/key writes), ``kmsv2/envelope.go``
(``TransformToStorage``: one seed per state, ``EncryptedObject`` template), spec sections 1.4, 6.5.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import google_crc32c

from snapshot_tools.atomic_file import check_target
from snapshot_tools.errors import KMSUnavailable, RewriteRefused, UsageError
from snapshot_tools.inputs import SnapshotInput, is_s3_url, opened
from snapshot_tools.integrity import require_integrity
from snapshot_tools.k3s_bootstrap import prepare_keyset
from snapshot_tools.keysets import config_files
from snapshot_tools.providers import ENCRYPTED_PREFIX
from snapshot_tools.quarantine import RewriteQuarantine
from snapshot_tools.readers import Reader
from snapshot_tools.resources import KeyParser
from snapshot_tools.set_aside import SetAsideDir
from snapshot_tools.snapshot import KEY_BUCKET, Snapshot
from snapshot_tools.snapshot_copy import copy_snapshot, kv_transform, kv_verify
from snapshot_tools.unwrap import open_unwrappers
from snapshot_tools.write_target import IDENTITY, KeyRef, TargetWriter, WriteTarget

if TYPE_CHECKING:
    from collections.abc import Callable

    from snapshot_tools.config import StaticKey
    from snapshot_tools.config_model import KMSProvider
    from snapshot_tools.inputs import S3Options
    from snapshot_tools.keysets import KeySet
    from snapshot_tools.readers import Resolution
    from snapshot_tools.snapshot import Record
    from snapshot_tools.unwrap import KeyAccess, Unwrapper

@dataclass
class RewriteOptions:
    """Everything ``reencrypt``/``decrypt`` need; ``to=None`` means decrypt (identity)."""

    snapshot: str | SnapshotInput  # a path, .zip, .gz or s3:// spec, or an input opened already
    access: KeyAccess  # the configs read (besides ``to``) and how to reach each KMS provider
    output: str
    to: str | None = None
    force: bool = False
    latest_only: bool = False
    decrypt_uncovered: bool = False
    skip_unreadable: bool = False
    etcd_prefix: str = "/registry"
    skip_hash_check: bool = False  # etcdutl's flag: read a snapshot with a missing/wrong trailer
    # --quarantine-unreadable DIR: objects whose latest value nothing reads are deleted at a new
    # revision and set aside in DIR (snapshot_tools.quarantine); older unreadable values are copied.
    quarantine_dir: str | None = None
    s3: S3Options | None = None  # for an s3:// snapshot
    download_progress: bool = False  # a download bar on stderr (the CLI: when it is a terminal)


@dataclass
class RewriteSummary:
    """What a rewrite did; no key material, no values."""

    output: str
    transitions: dict[tuple[KeyRef, KeyRef], int] = field(default_factory=dict)  # (source, target) -> n
    revisions_rewritten: int = 0
    unchanged: int = 0
    skipped_unreadable: list[str] = field(default_factory=list)
    decrypted_uncovered: list[str] = field(default_factory=list)
    latest_only: bool = False
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    records: int = 0  # etcd records in the key bucket (revisions and tombstones)
    quarantined: list[str] = field(default_factory=list)  # --quarantine-unreadable: keys deleted
    quarantine_manifest: str | None = None

    def edges(self) -> list[tuple[tuple[KeyRef, KeyRef], int]]:
        """``((source, target), revisions)`` in a stable order (by label)."""
        return sorted(self.transitions.items(), key=lambda item: (item[0][0].label(), item[0][1].label()))

    def to_json(self) -> dict[str, object]:
        return {
            "output": self.output,
            "rewritten": [
                {"from": src._asdict(), "to": dst._asdict(), "revisions": n} for (src, dst), n in self.edges()
            ],
            "revisions_rewritten": self.revisions_rewritten,
            "records": self.records,
            "skipped_unreadable": self.skipped_unreadable,
            "decrypted_uncovered": self.decrypted_uncovered,
            "latest_only": self.latest_only,
            "quarantined": self.quarantined,
            "quarantine_manifest": self.quarantine_manifest,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "seconds": round(self.seconds, 3),
        }


class _Labels:
    """Summary labels of source keys, built once per key (fingerprints are SHA-256s)."""

    def __init__(self) -> None:
        self._labels: dict[tuple[str, str | None, StaticKey | KMSProvider | None], KeyRef] = {}

    def __call__(self, res: Resolution) -> KeyRef:
        slot = (res.provider, res.key_name, res.key)
        label = self._labels.get(slot)
        if label is None:
            label = self._labels[slot] = _source_label(res)
        return label


def _source_label(res: Resolution) -> KeyRef:
    if res.provider == IDENTITY:
        return KeyRef(IDENTITY)
    return KeyRef(res.provider, res.key_name, None if res.key is None else res.key.fingerprint)


# The C extension has no annotations.
_crc32c: Callable[[bytes], int] = google_crc32c.value


def _digest(data: bytes) -> int:
    # CRC-32C (hardware) and length of the plaintext. The check guards against our own
    # mistakes (a value written from the wrong record, key or AAD), not an adversary: the
    # AEAD formats do not even decrypt after any change, and a 128-bit hash here cost a sixth
    # of a whole rewrite.
    return _crc32c(data) << 32 | len(data)


def _where(rec: Record) -> str:
    return f"{rec.key.decode('utf-8', 'backslashreplace')}@{rec.mod_revision}"


def input_files(opts: RewriteOptions) -> list[str]:
    """Every file a rewrite reads: the snapshot, ``--to``, each config (a directory and the
    config files in it) and each keyring file. The output may be none of them.

    Raises:
        ConfigError: a config path that does not exist (or a directory without configs).
    """
    files = _snapshot_files(opts.snapshot)
    for path in ([opts.to] if opts.to else []) + list(opts.access.configs):
        files.append(path)
        files.extend(str(f) for f in config_files(path))
    files.extend(opts.access.key_files())
    return files


def _snapshot_files(snapshot: str | SnapshotInput) -> list[str]:
    """The local files behind the snapshot: the original (not an S3 URL) and its unpacked copy."""
    names = [snapshot.path, snapshot.spec] if isinstance(snapshot, SnapshotInput) else [snapshot]
    return list(dict.fromkeys(n for n in names if not is_s3_url(n)))


def run_rewrite(opts: RewriteOptions) -> RewriteSummary:
    """Rewrite the snapshot at ``opts.output``; see the module docstring.

    Plaintext values of resources a config covers are read as what they are, even where no
    config lists ``identity`` (an apiserver would refuse them): the rewrite encrypts them.

    Raises:
        OutputError: the output is one of :func:`input_files`, is not a regular file, or
            exists without ``force`` (checked before any work, and again before publishing).
        RewriteRefused: unreadable values (without ``skip_unreadable``) or encrypted values of
            resources the new config does not cover (without ``decrypt_uncovered``).
        KMSUnavailable: a KMS needed to read or to wrap could not be reached.
    """
    started = time.monotonic()
    paths = ([opts.to] if opts.to else []) + list(opts.access.configs)
    with ExitStack() as stack:
        keyset, snapshot = prepare_keyset(
            paths, opts.snapshot, opts.access, stack, opts.s3, progress=opts.download_progress
        )
        inputs = input_files(opts)
        check_target(opts.output, force=opts.force, inputs=inputs)  # before a KMS is asked anything
        aside = None
        if opts.quarantine_dir is not None:
            if opts.skip_unreadable:
                raise UsageError("--quarantine-unreadable and --skip-unreadable exclude each other: choose one")
            aside = SetAsideDir(opts.quarantine_dir, force=opts.force, inputs=[*inputs, opts.output])
        # Unpacked or downloaded once, for the integrity check and the read.
        snapshot = stack.enter_context(opened(snapshot, opts.s3, progress=opts.download_progress))
        if not opts.skip_hash_check:
            require_integrity(snapshot)  # nothing is written from a snapshot etcd would refuse
        unwrappers = stack.enter_context(open_unwrappers(keyset, opts.access))
        return _rewrite(opts, snapshot, keyset, unwrappers, started, inputs, aside)


def _rewrite(
    opts: RewriteOptions,
    snapshot: SnapshotInput,
    keyset: KeySet,
    unwrappers: dict[str, Unwrapper],
    started: float,
    inputs: list[str],
    aside: SetAsideDir | None = None,
) -> RewriteSummary:
    reader = Reader(keyset, unwrappers, keep_plaintext=True)
    target_config = keyset.configs[0] if opts.to else None
    target = WriteTarget(target_config, unwrappers)
    summary = RewriteSummary(output=str(opts.output), latest_only=opts.latest_only)
    # (main, sub) -> (checksum of the plaintext written, the writer that wrote it): verification
    # reads every rewritten record back with that writer's key alone (see write_target.TargetWriter.read).
    expected: dict[tuple[int, int], tuple[int, TargetWriter]] = {}
    unreadable: list[str] = []
    unavailable: list[str] = []
    uncovered: list[str] = []
    group_resource = KeyParser(opts.etcd_prefix).group_resource
    labels = _Labels()
    transitions = summary.transitions
    reported, resolve = reader.is_reported, reader.resolve

    with Snapshot.open(snapshot.path) as snap:
        newest = {(r.main, r.sub) for r in snap.latest()} if opts.latest_only else None
        quarantine = RewriteQuarantine(snap, aside, opts.etcd_prefix) if aside is not None else None

        def replace(rec: Record) -> bytes | None:
            if newest is not None and (rec.main, rec.sub) not in newest:
                return None
            key, value = rec.key, rec.value
            gr = group_resource(key)
            if not reported(value, gr):
                return None  # plaintext of a resource no config covers: not ours to touch
            res = resolve(key, value, gr)
            if res.plaintext is None:  # unreadable (plaintext-rejected still holds the value)
                if res.reason != "kms-unavailable" and quarantine is not None and quarantine.take(rec, res):
                    return None  # copied as it is, then deleted at the new revision
                (unavailable if res.reason == "kms-unavailable" else unreadable).append(
                    f"{_where(rec)} ({res.reason})"
                )
                return None
            writer = target.writer(gr)
            if writer is None:
                if not value.startswith(ENCRYPTED_PREFIX):
                    return None
                if not opts.decrypt_uncovered:
                    uncovered.append(_where(rec))
                    return None
                summary.decrypted_uncovered.append(_where(rec))
                writer = target.identity
            plaintext = res.plaintext
            new_value = writer.write(plaintext, key)
            if new_value == value:
                summary.unchanged += 1
                return None
            edge = (labels(res), writer.label)
            transitions[edge] = transitions.get(edge, 0) + 1
            expected[(rec.main, rec.sub)] = (_digest(plaintext), writer)
            return new_value

        def check(rec: Record) -> bool:
            want = expected.get((rec.main, rec.sub))
            if want is None:
                return False
            digest, writer = want
            plaintext = writer.read(rec.value, rec.key)
            return plaintext is not None and _digest(plaintext) == digest

        def before_commit() -> None:
            if unavailable:
                raise KMSUnavailable(
                    f"{len(unavailable)} values need a KMS that could not be reached "
                    f"(first: {unavailable[0]}); nothing was written"
                )
            if uncovered:
                raise RewriteRefused(
                    "encrypted values of resources the new config does not cover",
                    uncovered,
                    "add them to the new config or pass --decrypt-uncovered to write them as plaintext",
                )
            if unreadable and not opts.skip_unreadable and quarantine is None:
                raise RewriteRefused(
                    "unreadable values", unreadable, "give the configs that hold their keys, or --skip-unreadable"
                )
            if quarantine is not None:
                summary.quarantine_manifest = quarantine.write(opts.output)

        result = copy_snapshot(
            snap,
            opts.output,
            kv_transform(replace),
            force=opts.force,
            verify=kv_verify(check),
            before_commit=before_commit,
            inputs=inputs,
            append=None if quarantine is None else quarantine.append,
            check_output=None if quarantine is None else quarantine.check_output,
            abort=None if aside is None else aside.undo,
        )
        if quarantine is not None:
            summary.quarantined = quarantine.keys()
    summary.revisions_rewritten = result.rewritten
    summary.skipped_unreadable = unreadable
    # etcd records (revisions and tombstones), not the entries of every bucket
    summary.records = result.buckets.get((KEY_BUCKET,), 0)
    summary.bytes_in = result.input_size
    summary.bytes_out = result.size
    summary.seconds = time.monotonic() - started
    return summary
