"""``status --etcd-endpoint``: what a running etcd holds, read at one revision.

The live counterpart of :mod:`snapshot_tools.status`: no file, so no size, trailer, pages or
etcdutl hash; instead the member's Maintenance.Status (version, db size, raft position), the
revision read and the compact revision. Live keys per resource and storage forms are counted
as for a snapshot (:func:`snapshot_tools.status.resource_path`, ``storage_form``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from snapshot_tools.live_etcd import LIVE, EtcdSource
from snapshot_tools.providers import storage_form
from snapshot_tools.resources import normalize_prefix
from snapshot_tools.status import resource_path

if TYPE_CHECKING:
    from collections.abc import Iterable

    from snapshot_tools.live_etcd import EtcdTarget
    from snapshot_tools.snapshot import Record

__all__ = ["LiveStatus", "census", "live_status"]


@dataclass
class LiveStatus:
    """Everything ``status --etcd-endpoint`` reports; ``resources`` and ``storage_forms`` as in
    :class:`~snapshot_tools.status.SnapshotStatus`. ``db_size`` is the member's backend file
    size (Maintenance.Status ``dbSize``); ``revision`` the one every count was read at."""

    endpoint: str
    version: str
    member_id: int
    leader: int
    raft_index: int
    raft_term: int
    revision: int
    compacted_revision: int
    db_size: int
    etcd_prefix: str
    source: str = LIVE
    resources: dict[str, int] = field(default_factory=dict)
    storage_forms: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def census(records: Iterable[Record], key_prefix: bytes) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Live keys per resource and values per (resource, storage form, key name), as ``status``
    reports them; ``key_prefix`` is the normalised prefix with its trailing ``/``."""
    resources: Counter[str] = Counter()
    forms: Counter[tuple[str, str, str | None]] = Counter()
    for record in records:
        label = resource_path(record.key, key_prefix)
        resources[label] += 1
        forms[(label, *storage_form(record.value))] += 1
    return dict(sorted(resources.items())), [
        {"resource": r, "form": f, "name": n, "count": c}
        for (r, f, n), c in sorted(forms.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or ""))
    ]


def live_status(target: EtcdTarget, etcd_prefix: str = "/registry") -> LiveStatus:
    """Read the etcd ``target`` names (read-only) and gather its status.

    Raises:
        EtcdUnreachable: the endpoint cannot be read (exit 4).
    """
    key_prefix = normalize_prefix(etcd_prefix).encode()
    with EtcdSource(target) as source:
        server = source.server_status()
        resources, forms = census(source.latest(key_prefix), key_prefix)
        return LiveStatus(
            endpoint=source.name,
            version=server.version,
            member_id=server.member_id,
            leader=server.leader,
            raft_index=server.raft_index,
            raft_term=server.raft_term,
            revision=source.revision,
            compacted_revision=source.compacted_revision(),
            db_size=server.db_size,
            etcd_prefix=key_prefix.decode().rstrip("/") or "/",
            resources=resources,
            storage_forms=forms,
        )
