"""``drill``: prove a snapshot restores, stage by stage: integrity, check, restore.

The library half of ``snapshot-tools drill``. Each stage is timed and returns a
:class:`StageResult`; a stage runs only when every earlier one passed (a skipped one says why).

* ``integrity``: the bbolt structure (``tx.Check``'s page accounting, :meth:`DB.page_map`) and
  the SHA-256 trailer, judged as ``etcdutl snapshot restore`` would (:mod:`integrity`);
* ``check``: ``check``'s verdicts (:func:`run_check`) under ``--fail-on``;
* ``restore``: etcdutl restore + etcd on 127.0.0.1 (:mod:`etcd_restore`), every key read back and
  compared with the snapshot (:mod:`keyspace_compare`).

A snapshot's exit code is the one ``check`` would give it (3 damaged or refused, 4 KMS
unreachable, 1 findings) or 1 for a failed restore; :func:`worst` combines several.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snapshot_tools.check import CheckOptions, run_check
from snapshot_tools.errors import (
    EXIT_FINDINGS,
    EXIT_INPUT,
    EXIT_KMS,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    Error,
    OutputError,
    UsageError,
    exit_code_for,
)
from snapshot_tools.etcd_restore import restored_etcd
from snapshot_tools.integrity import SKIP_FLAG, judge_integrity
from snapshot_tools.keysets import load_keyset
from snapshot_tools.keyspace_compare import compare_keyspace
from snapshot_tools.snapshot import Snapshot

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager

    from snapshot_tools.etcd_bins import EtcdTools
    from snapshot_tools.inputs import SnapshotInput
    from snapshot_tools.report import CheckReport
    from snapshot_tools.unwrap import KeyAccess

__all__ = ["STAGES", "DrillOptions", "DrillResult", "StageResult", "drill_inputs", "drill_snapshot", "worst"]

STAGES = ("integrity", "check", "restore")
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"

# Which exit code wins when snapshots disagree: check's order (3, then 4, then 1), usage above all.
_SEVERITY = {EXIT_OK: 0, EXIT_FINDINGS: 1, EXIT_KMS: 2, EXIT_INPUT: 3, EXIT_USAGE: 4}
# Errors that are the command's, not the snapshot's: they stop the whole drill (exit 2).
_FATAL = (UsageError, ConfigError, OutputError)


def worst(codes: Iterator[int] | list[int]) -> int:
    """The exit code of several results: the most severe (:data:`_SEVERITY`)."""
    return max(codes, key=lambda c: _SEVERITY.get(c, 5), default=EXIT_OK)


@dataclass
class DrillOptions:
    """Everything a drill needs; built by the CLI from its flags."""

    access: KeyAccess  # the configs and KMS access, as check takes them
    fail_on: frozenset[str]
    etcd: EtcdTools | None  # None: --no-restore
    skip_hash_check: bool = False
    etcd_prefix: str = "/registry"


@dataclass
class StageResult:
    """One stage of one snapshot's drill; the JSON ``stages[]`` entry."""

    name: str
    status: str  # passed, failed or skipped
    seconds: float = 0.0
    message: str | None = None  # why it failed or was skipped
    details: dict[str, Any] = field(default_factory=dict)
    exit_code: int = EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 6),
            "message": self.message,
            "details": self.details,
        }


@dataclass
class DrillResult:
    """One snapshot's drill: its stages, check's report (when the check ran) and its exit code."""

    snapshot: str  # as given: a path or an s3:// URL
    stages: list[StageResult] = field(default_factory=list)
    report: CheckReport | None = None
    started: float = 0.0  # Unix time
    seconds: float = 0.0
    s3_metadata: dict[str, str] = field(default_factory=dict)
    fetch_seconds: float = 0.0  # download and unpacking before the stages (S3, .zip, .gz)

    @property
    def exit_code(self) -> int:
        return worst([s.exit_code for s in self.stages])

    @property
    def passed(self) -> bool:
        return all(s.status != FAILED for s in self.stages) and self.exit_code == EXIT_OK


def drill_snapshot(snapshot: SnapshotInput, opts: DrillOptions) -> DrillResult:
    """Drill an opened snapshot (its local ``path``, named by its ``spec``): every stage in order.

    Raises:
        UsageError/ConfigError/OutputError: the command's own mistake (not the snapshot's).
    """
    result = DrillResult(snapshot.spec, started=time.time(), s3_metadata=dict(snapshot.s3_metadata))
    began = time.monotonic()
    path = snapshot.path
    steps: list[tuple[str, Callable[[], StageResult]]] = [
        ("integrity", lambda: _integrity(snapshot, opts)),
        ("check", lambda: _check(snapshot, opts, result)),
        ("restore", lambda: _restore(path, opts)),
    ]
    blocked: str | None = None
    for name, step in steps:
        if blocked is not None:
            result.stages.append(StageResult(name, SKIPPED, message=f"{blocked} failed"))
            continue
        if name == "restore" and opts.etcd is None:
            result.stages.append(StageResult(name, SKIPPED, message="--no-restore"))
            continue
        stage = _timed(name, step)
        result.stages.append(stage)
        if stage.status == FAILED:
            blocked = name
    result.seconds = time.monotonic() - began
    return result


def drill_inputs(
    specs: list[str], opts: DrillOptions, opener: Callable[[str], AbstractContextManager[SnapshotInput]]
) -> Iterator[DrillResult]:
    """Drill each snapshot in turn; ``opener(spec)`` gives it as a local file
    (:func:`~snapshot_tools.inputs.open_input`) and removes anything it fetched or unpacked
    afterwards. A spec that cannot be opened (missing, damaged archive, S3 unreachable) fails
    at integrity; the others still run.

    Raises:
        ConfigError: a config cannot be used (before any snapshot is opened).
    """
    if opts.access.configs:
        load_keyset(opts.access.configs)  # the command's error (exit 2), not each snapshot's
    for spec in specs:
        with ExitStack() as stack:
            began = time.monotonic()
            try:
                local = stack.enter_context(opener(spec))
            except _FATAL:
                raise
            except Error as exc:
                yield failed_input(spec, exc)
                continue
            fetched = time.monotonic() - began
            result = drill_snapshot(local, opts)
            result.fetch_seconds = fetched
        yield result


def failed_input(spec: str, exc: Error) -> DrillResult:
    """The result of a snapshot that could not even be opened (missing, unreachable)."""
    stage = StageResult("integrity", FAILED, message=str(exc), exit_code=exit_code_for(exc))
    skipped = [StageResult(n, SKIPPED, message="integrity failed") for n in STAGES[1:]]
    return DrillResult(spec, [stage, *skipped], started=time.time())


def _timed(name: str, step: Callable[[], StageResult]) -> StageResult:
    began = time.monotonic()
    try:
        stage = step()
    except _FATAL:
        raise
    except Error as exc:
        stage = StageResult(name, FAILED, message=str(exc), exit_code=exit_code_for(exc))
    stage.seconds = time.monotonic() - began
    return stage


def _integrity(snapshot: SnapshotInput, opts: DrillOptions) -> StageResult:
    with Snapshot.open(snapshot.path) as snap:
        if snapshot.trailer is not None:  # hashed while it was unpacked: no second pass
            snap.adopt_trailer(snapshot.trailer)
        pages = snap.db.page_map()  # every page reached once: what tx.Check demands
        trailer = snap.trailer
        revision = snap.revision
    verdict = judge_integrity(trailer, skip=opts.skip_hash_check)
    details: dict[str, Any] = {
        "trailer": trailer,
        "hash_check": "skipped" if opts.skip_hash_check else "done",
        "revision": revision,
        "reachable_pages": pages.reachable,
    }
    if verdict.status == "failed":
        return StageResult("integrity", FAILED, message=f"{verdict.reason}; pass {SKIP_FLAG} to drill it anyway",
                           details=details, exit_code=EXIT_INPUT)  # fmt: skip
    return StageResult("integrity", PASSED, details=details)


def _check(snapshot: SnapshotInput, opts: DrillOptions, result: DrillResult) -> StageResult:
    """check's verdicts; the report is kept on ``result`` (the human and JSON reports show it)."""
    report = run_check(
        CheckOptions(
            snapshot=snapshot, access=opts.access, etcd_prefix=opts.etcd_prefix, skip_hash_check=opts.skip_hash_check
        )
    )
    result.report = report
    code = report.exit_code(opts.fail_on)
    details = {"summary": report.summary(), "fail_on": sorted(opts.fail_on)}
    if code == EXIT_OK:
        return StageResult("check", PASSED, details=details)
    if code == EXIT_KMS:
        why = "a KMS needed for the verdicts did not answer: " + ", ".join(p.provider for p in report.kms)
    elif code == EXIT_INPUT:
        why = str(report.snapshot.get("integrity_reason"))
    else:
        s = report.summary()
        found = [f"{s[v]} {v}" for v in ("unreadable", "retired", "stale") if v in opts.fail_on and s[v]]
        found += [f"{s[k]} {k}" for k in ("plaintext", "unencrypted") if k in opts.fail_on and s[k]]
        why = ", ".join(found) + f" (--fail-on {','.join(sorted(opts.fail_on))})"
    return StageResult("check", FAILED, message=why, details=details, exit_code=code)


def _restore(path: str, opts: DrillOptions) -> StageResult:
    assert opts.etcd is not None
    with restored_etcd(path, opts.etcd, skip_hash_check=opts.skip_hash_check) as etcd:
        read_began = time.monotonic()
        comparison = compare_keyspace(path, etcd.client_port)
        read_seconds = time.monotonic() - read_began
    details = {
        "keys_compared": comparison.keys_compared,
        "mismatches": comparison.mismatches,
        "missing": comparison.missing,
        "extra": comparison.extra,
        "snapshot_keys": comparison.snapshot_keys,
        "etcd_keys": comparison.etcd_keys,
        "snapshot_revision": comparison.snapshot_revision,
        "etcd_revision": comparison.etcd_revision,
        "pages_read": comparison.pages,
        "etcdutl_restore_seconds": round(etcd.restore_seconds, 6),
        "etcd_start_seconds": round(etcd.start_seconds, 6),
        "read_compare_seconds": round(read_seconds, 6),
        "etcd_binaries": opts.etcd.source,
        "differences": comparison.examples,
    }
    problem = comparison.problem()
    if problem is not None:
        return StageResult("restore", FAILED, message=problem, details=details, exit_code=EXIT_FINDINGS)
    return StageResult("restore", PASSED, details=details)
