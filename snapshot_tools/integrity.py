"""Snapshot integrity as part of the verdict: would ``etcdutl snapshot restore`` take this file?

etcdutl refuses a snapshot whose SHA-256 trailer is missing (a raw ``member/snap/db`` copy) or
does not match its contents, unless told ``--skip-hash-check``. A gate that passes a snapshot
the restore would refuse is worse than none, so ``check`` fails such a snapshot (exit 3, after
its report) and ``extract``/``reencrypt``/``decrypt`` refuse it before any work: they must not
write anything from a file etcd would not restore. The same flag lets all four read it anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from snapshot_tools.errors import IntegrityError
from snapshot_tools.live_etcd import LIVE
from snapshot_tools.sources import open_source

if TYPE_CHECKING:
    from snapshot_tools.inputs import SnapshotInput

__all__ = ["LIVE_REASON", "SKIP_FLAG", "Integrity", "judge_integrity", "require_integrity"]

SKIP_FLAG = "--skip-hash-check"  # etcdutl snapshot restore's own flag name

# Trailer state (Snapshot.trailer) -> why etcdutl snapshot restore refuses it.
_REASONS = {
    "missing": "no SHA-256 trailer (a raw member/snap/db copy?): etcdutl snapshot restore refuses it",
    "mismatch": "the SHA-256 trailer does not match the contents: etcdutl snapshot restore refuses it",
}


LIVE_REASON = "read from a running etcd: there is no snapshot file or SHA-256 trailer to hash"


class Integrity(NamedTuple):
    """``passed``, ``failed``, ``skipped`` (failed, but ``--skip-hash-check`` was given) or
    ``not-applicable`` (a running etcd, not a file), and why when not passed."""

    status: str
    reason: str | None = None


def judge_integrity(trailer: str, *, skip: bool) -> Integrity:
    """The integrity verdict of a snapshot whose trailer state is ``trailer``
    (``valid``, ``missing``, ``mismatch``, or ``live`` for a running etcd)."""
    if trailer == LIVE:
        return Integrity("not-applicable", LIVE_REASON)
    reason = _REASONS.get(trailer)
    if reason is None:
        return Integrity("passed")
    return Integrity("skipped" if skip else "failed", reason)


def refusal(path: str, reason: str) -> str:
    """The one line a command prints when it refuses a snapshot for its integrity."""
    return f"{path}: {reason}; pass {SKIP_FLAG} to read it anyway"


def require_integrity(path: str | SnapshotInput) -> None:
    """Hash the snapshot at ``path`` (or an opened input); raise unless etcdutl would restore it.

    Raises:
        IntegrityError: the trailer is missing or mismatched (exit 3).
        InputError/SnapshotError: a missing, unreadable or damaged snapshot.
    """
    with open_source(path) as source:
        verdict = judge_integrity(source.integrity(), skip=False)
        name = source.name
    if verdict.reason is not None:
        raise IntegrityError(refusal(name, verdict.reason))
