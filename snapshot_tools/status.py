"""``status``: what a snapshot holds, with ``etcdutl snapshot status`` (3.5) figures.

Library half of ``snapshot-tools status``: returns a :class:`SnapshotStatus`, prints nothing.

References: etcd ``etcdutl/snapshot/v3_snapshot.go`` (``Status``, v3.5): CRC-32C over every
top-level bucket name then its pairs via ``Bucket.ForEach`` (a nested bucket contributes its
name only and counts as a key); total keys = every pair of every bucket; revision = main of the
last ``key`` record; total size = ``Tx.Size()``. Spec section 1.4.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import google_crc32c

from snapshot_tools.bbolt.layout import BUCKET_LEAF_FLAG
from snapshot_tools.errors import SnapshotError
from snapshot_tools.inputs import SnapshotInput, opened
from snapshot_tools.k3s_bootstrap import BOOTSTRAP_PREFIX, BootstrapRecord, bootstrap_record
from snapshot_tools.providers import storage_form
from snapshot_tools.resources import normalize_prefix
from snapshot_tools.snapshot import Snapshot

if TYPE_CHECKING:
    from snapshot_tools.bbolt import DB
    from snapshot_tools.inputs import S3Options


@dataclass
class SnapshotStatus:
    """Everything ``status`` reports. ``hash`` is an int, as ``etcdutl -w json`` prints it.

    ``resources`` maps a resource label (``/registry/secrets``) to its live key count.
    ``bootstrap`` lists K3s/RKE2 ``/bootstrap/*`` records (``token_hash``: the 12-hex hash of the
    server token that opens it; ``kind``: ``lock`` for a zero-length value, else ``data``).
    ``storage_forms`` lists ``{resource, form, name, count}`` for live values under the prefix:
    ``form`` from :func:`snapshot_tools.providers.storage_form`, ``name`` the key or KMS provider
    name (``None`` for identity). ``free_pages`` counts pages below the high-water mark that no
    bucket reaches: etcd copies them into snapshots as they are, so they can still hold old
    values (deleted or overwritten Secrets, old ciphertexts); a rewrite does not copy them.
    ``path`` names the snapshot as the user did (a path or ``s3://`` URL); ``form`` is ``file``,
    ``zip`` or ``gzip`` (from its content) and ``size`` that of the snapshot inside;
    ``s3_metadata`` is the S3 object's user metadata (K3s/RKE2 put ``K3s-Token-Hash``,
    ``K3s-Node-Name``, ``K3s-Cluster-Id`` there), as boto3 returns it.
    """

    path: str
    size: int
    trailer: str
    page_size: int
    revision: int
    total_keys: int
    total_size: int
    hash: int
    etcd_prefix: str
    free_pages: int = 0
    resources: dict[str, int] = field(default_factory=dict)
    storage_forms: list[dict[str, Any]] = field(default_factory=list)
    # K3s/RKE2 /bootstrap/* records: {key, token_hash, size, revision, kind: lock|data}
    bootstrap: list[dict[str, Any]] = field(default_factory=list)
    form: str = "file"
    s3_metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resource_path(key: bytes, key_prefix: bytes) -> str:
    """The path ``status`` counts a key under: ``/registry/secrets`` for
    ``/registry/secrets/ns/name``, ``/registry/<group>/<plural>`` for a dotted group.

    ``key_prefix`` is the normalised prefix with its trailing ``/`` (``b"/registry/"``).
    """
    parts = key[len(key_prefix) :].split(b"/", 2)
    label = parts[0] if b"." not in parts[0] or len(parts) < 2 else parts[0] + b"/" + parts[1]
    return (key_prefix + label).decode("utf-8", "backslashreplace")


def etcdutl_figures(db: DB) -> tuple[int, int, int]:
    """``(hash, revision, total_keys)`` computed exactly as ``etcdutl snapshot status`` 3.5 does.

    Raises:
        SnapshotError: damage, or a root entry that is not a bucket (etcdutl: "cannot get hash of bucket").
    """
    crc = 0
    total = 0
    revision = 0
    root = db.root()
    buf = db.buf
    for flags, kstart, kend, vend in root.spans():
        name = buf[kstart:kend]
        if not flags & BUCKET_LEAF_FLAG:
            raise SnapshotError(f"root entry {name!r} is not a bucket", offset=kstart)
        crc = google_crc32c.extend(crc, name)
        last = None
        for key, value in root.child(name, kend, vend).items():
            crc = google_crc32c.extend(crc, key)
            if value is not None:
                crc = google_crc32c.extend(crc, value)
            total += 1
            last = key
        if name == b"key" and last is not None:
            revision = int.from_bytes(last[:8], "big")
    return crc, revision, total


def snapshot_status(
    path: str | os.PathLike[str] | SnapshotInput,
    etcd_prefix: str = "/registry",
    s3: S3Options | None = None,
    *,
    progress: bool = False,
) -> SnapshotStatus:
    """Open ``path`` (a file, ``.zip``, ``.gz`` or ``s3://`` spec, or an opened input) and gather
    its status; see :class:`SnapshotStatus`.

    Raises:
        InputError: the path cannot be opened.
        SnapshotError: the file is damaged (a trailer mismatch is a state, not an error).
    """
    key_prefix = normalize_prefix(etcd_prefix).encode()  # with its trailing "/"
    prefix = key_prefix.decode().rstrip("/") or "/"  # as reported: "/registry"
    spec = path if isinstance(path, SnapshotInput) else os.fspath(path)
    with opened(spec, s3, progress=progress) as inp, Snapshot.open(inp.path) as snap:
        if inp.trailer is not None:  # hashed while unpacked
            snap.adopt_trailer(inp.trailer)
        crc, revision, total = etcdutl_figures(snap.db)
        pages = snap.db.page_map()
        resources: Counter[str] = Counter()
        forms: Counter[tuple[str, str, str | None]] = Counter()
        bootstrap: list[BootstrapRecord] = []
        for record in snap.latest():  # one pass for the resources and K3s's /bootstrap records
            if record.key.startswith(key_prefix):
                label = resource_path(record.key, key_prefix)
                resources[label] += 1
                forms[(label, *storage_form(record.value))] += 1
            elif record.key.startswith(BOOTSTRAP_PREFIX):
                bootstrap.append(bootstrap_record(record))
        return SnapshotStatus(
            path=inp.spec,
            size=snap.size,
            trailer=snap.trailer,
            page_size=snap.page_size,
            revision=revision,
            total_keys=total,
            total_size=snap.total_size,
            hash=crc,
            etcd_prefix=prefix,
            free_pages=len(pages.free) + len(pages.unreachable),
            resources=dict(sorted(resources.items())),
            storage_forms=[
                {"resource": r, "form": f, "name": n, "count": c}
                for (r, f, n), c in sorted(forms.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or ""))
            ],
            bootstrap=[r.to_json() for r in bootstrap],
            form=inp.form,
            s3_metadata=dict(inp.s3_metadata),
        )
