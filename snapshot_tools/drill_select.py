"""Which snapshots of an S3 prefix to drill: list ``s3://bucket/prefix/``, pick the newest.

K3s and RKE2 name snapshots ``<name>-<node>-<unix seconds>`` (``.zip`` when compressed) and
order them by that timestamp, falling back to the object's time (spec k3s-rke2-bootstrap.md
6.1); objects under a ``.metadata/`` directory are their extra-metadata JSON, not snapshots
(6.3, 6.4: K3s's own listing skips them). The node is the text between the base name and the
timestamp; the base names K3s and RKE2 use by default (``etcd-snapshot``, ``on-demand``) are
recognised, and for any other name the whole text before the timestamp is the group.

The selection is pure (:func:`select`); :func:`list_prefix` is the one S3 call.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, NamedTuple

from snapshot_tools.errors import InputError, S3Unreachable, UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["Candidate", "SnapshotName", "is_prefix", "list_prefix", "parse_name", "select", "split_prefix"]

BASE_NAMES = ("etcd-snapshot", "on-demand")  # K3s/RKE2 defaults: scheduled and on-demand
METADATA_DIR = ".metadata"
_NAME = re.compile(r"^(?P<head>.+)-(?P<ts>[0-9]{9,11})(?:\.zip)?$")


class SnapshotName(NamedTuple):
    """What a K3s/RKE2 snapshot file name says."""

    node: str  # the node name, or the whole text before the timestamp for an unknown base name
    timestamp: int  # Unix seconds


class Candidate(NamedTuple):
    """One object of the prefix: its URL, when it was taken and by which node (``None``: unknown)."""

    url: str
    key: str
    timestamp: float  # from the name, else the object's last-modified time
    node: str | None


def parse_name(filename: str) -> SnapshotName | None:
    """``etcd-snapshot-node1-1700000000.zip`` -> ``("node1", 1700000000)``; ``None`` if not that shape."""
    m = _NAME.match(filename)
    if m is None:
        return None
    head = m.group("head")
    for base in BASE_NAMES:
        if head.startswith(base + "-") and len(head) > len(base) + 1:
            return SnapshotName(head[len(base) + 1 :], int(m.group("ts")))
    return SnapshotName(head, int(m.group("ts")))


def is_prefix(url: str) -> bool:
    """An ``s3://`` URL naming a prefix (``s3://bucket/``, ``s3://bucket/dir/``), not an object."""
    return url.startswith("s3://") and (url.endswith("/") or "/" not in url[len("s3://") :])


def split_prefix(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ``("bucket", "a/b/")``."""
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise UsageError(f"{url}: no bucket name")
    return bucket, prefix


def candidates(bucket: str, objects: Iterable[dict[str, Any]], prefix: str) -> list[Candidate]:
    """The snapshot objects of a listing (``Key``, ``LastModified``), metadata and directories left out."""
    out = []
    for obj in objects:
        key = str(obj["Key"])
        rest = key[len(prefix) :]
        parts = rest.split("/")
        if not rest or key.endswith("/") or METADATA_DIR in parts[:-1]:
            continue
        name = parse_name(parts[-1])
        if name is not None:
            out.append(Candidate(f"s3://{bucket}/{key}", key, float(name.timestamp), name.node))
        else:
            out.append(Candidate(f"s3://{bucket}/{key}", key, obj["LastModified"].timestamp(), None))
    return out


def select(found: list[Candidate], newest: int | None, *, per_node: bool) -> list[Candidate]:
    """The newest ``newest`` candidates (all when ``None``), or that many per node with
    ``per_node`` (objects whose node is unknown form one group); newest first, ties by key."""
    ordered = sorted(found, key=lambda c: (-c.timestamp, c.key))
    if not per_node:
        return ordered if newest is None else ordered[:newest]
    want = 1 if newest is None else newest
    taken: dict[str | None, int] = {}
    out = []
    for c in ordered:
        if taken.get(c.node, 0) < want:
            taken[c.node] = taken.get(c.node, 0) + 1
            out.append(c)
    return out


def list_prefix(client: Any, url: str) -> list[Candidate]:
    """Every snapshot object under the prefix ``url`` (paginated ``ListObjectsV2``).

    Raises:
        InputError: no such bucket, access denied, or no snapshot under the prefix.
        S3Unreachable: the endpoint did not answer (exit 4).
    """
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, prefix = split_prefix(url)
    found: list[Candidate] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.extend(candidates(bucket, page.get("Contents", []), prefix))
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "error"))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if isinstance(status, int) and status >= 500:
            raise S3Unreachable(f"{url}: S3 error {code} listing the prefix") from None
        raise InputError(f"{url}: cannot list the prefix: {code}") from None
    except NoCredentialsError:
        raise InputError(f"{url}: no usable AWS credentials to list the prefix") from None
    except BotoCoreError as exc:
        raise S3Unreachable(f"{url}: S3 could not be reached: {exc}") from None
    if not found:
        raise InputError(f"{url}: no snapshot under this prefix")
    return found
