"""``check``: judge every stored value of a snapshot against a history of encryption configs.

The library half of ``snapshot-tools check``: it opens the snapshot, loads the configs, builds
the KMS unwrappers and returns a :class:`~snapshot_tools.report.CheckReport`; it prints nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from snapshot_tools.integrity import judge_integrity
from snapshot_tools.keysets import load_keyset
from snapshot_tools.readers import Reader
from snapshot_tools.report import CheckReport, Row
from snapshot_tools.resources import KeyParser, resolve_resource
from snapshot_tools.sources import judged_records, open_source
from snapshot_tools.unwrap import kms_problems, open_unwrappers

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from snapshot_tools.inputs import S3Options, SnapshotInput
    from snapshot_tools.keysets import KeySet
    from snapshot_tools.unwrap import KeyAccess, Unwrapper


@dataclass
class CheckOptions:
    """Everything ``check`` needs; built by the CLI from its flags."""

    snapshot: str | SnapshotInput  # a path, .zip, .gz or s3:// spec, or an input opened already
    access: KeyAccess  # the configs and how to reach each KMS provider
    all_revisions: bool = False
    resources: Sequence[str] = ()
    etcd_prefix: str = "/registry"
    skip_hash_check: bool = False  # etcdutl's flag: a missing/mismatched trailer does not fail
    s3: S3Options | None = None  # for an s3:// snapshot
    download_progress: bool = False  # a download bar on stderr (the CLI: when it is a terminal)


def run_check(
    opts: CheckOptions, progress: Callable[[int], None] | None = None
) -> CheckReport:
    """Judge every reported value of the snapshot; see DESIGN.md "Keys and verdicts"."""
    keyset = load_keyset(opts.access.configs)
    known = keyset.resource_names()
    opts = replace(opts, resources=[resolve_resource(label, known) for label in opts.resources])  # typos fail here
    with open_unwrappers(keyset, opts.access) as unwrappers:
        report = _check(opts, keyset, unwrappers, progress)
        report.kms = kms_problems(unwrappers)
        return report


def _check(
    opts: CheckOptions,
    keyset: KeySet,
    unwrappers: dict[str, Unwrapper],
    progress: Callable[[int], None] | None,
) -> CheckReport:
    reader = Reader(keyset, unwrappers)
    wanted = set(opts.resources)
    report = CheckReport.begin(keyset)
    parse = KeyParser(opts.etcd_prefix).parse
    reported, resolve, add = reader.is_reported, reader.resolve, report.rows.append
    new_row = tuple.__new__  # one Row per object: skip NamedTuple's Python-level __new__
    with open_source(opts.snapshot, opts.s3, progress=opts.download_progress) as source:
        source.start_integrity()
        done = 0
        for rec, latest, deleted in judged_records(source, all_revisions=opts.all_revisions):
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
            add(new_row(Row, (key, base, name, rec.mod_revision, resolve(key, value, gr), latest)))
            if deleted:
                report.deleted.add(key)
        trailer = source.integrity()
        integrity = judge_integrity(trailer, skip=opts.skip_hash_check)
        report.snapshot = {
            "path": source.name,
            "revision": source.revision,
            "trailer": trailer,
            "integrity": integrity.status,
            "integrity_reason": integrity.reason,
        }
    report.finish(reader)
    return report
