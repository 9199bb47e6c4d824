"""``extract``: chosen objects of a snapshot as Kubernetes manifests that ``kubectl apply`` takes.

The library half of ``snapshot-tools extract``: it selects records (the latest live revision, or
the object as it was at an etcd revision), decrypts them with the :class:`~snapshot_tools.readers.Reader`, decodes them
and builds manifest dicts; it prints nothing. Rendering the ``v1 List`` as YAML or JSON text is
here too, because the YAML needs care that belongs with the data (see :func:`render_yaml`).

Output choices (the README documents them):

* one ``apiVersion: v1, kind: List`` document, for YAML and JSON alike: one parse, one apply;
* ``metadata.resourceVersion`` is the record's etcd ``mod_revision`` (it is not stored);
* ``managedFields`` are dropped unless asked for, as ``kubectl get`` does since 1.21;
* Secret ``data`` and ConfigMap ``binaryData`` as standard padded base64, as kubectl shows them;
* protobuf kinds without a schema here: apiVersion, kind, decoded metadata and the stored
  protobuf (base64) in the :data:`RAW_ANNOTATION` annotation; they cannot be applied as-is;
* JSON-stored objects (custom resources, APIServices, ...) as stored.

References: spec sections 9.4 and 10; ``staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go``
(resourceVersion from mod_revision), etcd ``server/mvcc/kvstore.go`` (``finishedCompactRev``,
``ErrCompacted``, ``ErrFutureRev``), sigs.k8s.io/yaml (YAML 1.1 scalars, see :func:`render_yaml`).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from snapshot_tools import objects
from snapshot_tools.errors import EXIT_FINDINGS, EXIT_KMS, EXIT_OK, MalformedValue, UsageError
from snapshot_tools.keysets import load_keyset
from snapshot_tools.readers import Reader
from snapshot_tools.resources import (
    BUILTIN_PREFIXES,
    normalize_prefix,
    parse_etcd_key,
    parse_group_resource,
    resource_label,
)
from snapshot_tools.sources import as_of, open_source
from snapshot_tools.unwrap import open_unwrappers

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from snapshot_tools.keysets import KeySet
    from snapshot_tools.resources import ResourceRef
    from snapshot_tools.snapshot import Record
    from snapshot_tools.sources import RecordSource
    from snapshot_tools.unwrap import KeyAccess, Unwrapper

__all__ = [
    "RAW_ANNOTATION",
    "SERVER_FIELDS",
    "ExtractOptions",
    "ExtractResult",
    "Skipped",
    "build_manifest",
    "render_json",
    "render_yaml",
    "run_extract",
    "scan_prefix",
]

RAW_ANNOTATION = "snapshot-tools.k8s-at-rest.io/stored-protobuf"
# Set by the apiserver, never by a client: a re-create must not carry them.
SERVER_FIELDS = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
_META_FIRST = ("name", "generateName", "namespace", "uid", "resourceVersion")
# Deepest object (maps and lists) that extract writes. Real objects stay far below it (a CRD's
# openAPIV3Schema or a deep managedFields is some tens of levels); the YAML emitter recurses
# per level and fails near 330 under Python's default recursion limit. A deeper object is
# skipped as undecodable, so one hostile custom resource cannot abort the whole extract.
MAX_DEPTH = 200
_BY_RESOURCE = {gr: prefix for prefix, gr in BUILTIN_PREFIXES.items()}


@dataclass
class ExtractOptions:
    """Everything ``extract`` needs; built by the CLI from its flags."""

    snapshot: str
    access: KeyAccess  # the configs and how to reach each KMS provider
    resources: Sequence[str] = ("secrets",)
    namespace: str | None = None
    name: str | None = None
    revision: int | None = None  # None: the latest live revision
    strip_server_fields: bool = False
    show_managed_fields: bool = False
    etcd_prefix: str = "/registry"


@dataclass(frozen=True, slots=True)
class Skipped:
    """A requested object that could not be output: where, and why (never its value)."""

    key: str
    revision: int
    provider: str
    key_name: str | None
    reason: str


@dataclass
class ExtractResult:
    """The manifests (``items``, JSON-ready) and what the CLI has to say about them."""

    items: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    matched: int = 0  # records that passed the filters, readable or not
    secrets: int = 0  # Secrets among the items: their values are on their way to stdout
    decrypted: int = 0  # items that were stored encrypted
    raw_kinds: set[str] = field(default_factory=set)  # kinds emitted with RAW_ANNOTATION
    snapshot_revision: int = 0

    @property
    def kms_unavailable(self) -> bool:
        return any(s.reason == "kms-unavailable" for s in self.skipped)

    @property
    def exit_code(self) -> int:
        """0 all out; 1 nothing matched or some object skipped; 4 a KMS was unreachable."""
        if self.kms_unavailable:
            return EXIT_KMS
        if self.matched == 0 or self.skipped:
            return EXIT_FINDINGS
        return EXIT_OK

    def manifest(self) -> dict[str, Any]:
        """The ``v1 List`` that ``kubectl apply -f`` takes."""
        return {"apiVersion": "v1", "kind": "List", "items": self.items}


# -- selection -------------------------------------------------------------------------------


def scan_prefix(label: str, etcd_prefix: str = "/registry", namespace: str | None = None) -> bytes:
    """The etcd key prefix that holds resource ``label`` (``secrets``, ``deployments.apps``, ...).

    Raises:
        UsageError: a group-less name that is no built-in resource (``deployments`` needs
            ``.apps``), since guessing its path could silently select nothing.
    """
    group, resource = parse_group_resource(label)
    path = _BY_RESOURCE.get((group, resource))
    if path is None:
        if "." not in group:
            plurals = (resource, f"{resource}s", f"{resource}es")  # `secret`, `ingress`
            hints = sorted(resource_label(gr) for gr in _BY_RESOURCE if gr[1] in plurals)
            hint = f"; did you mean {' or '.join(hints)}?" if hints else ""
            raise UsageError(f"unknown resource {label!r}{hint}")
        path = f"{group}/{resource}"  # custom resources, CRDs, APIServices
    # Without a trailing "/": the one-key resources (ranges/serviceips) are the key itself.
    prefix = normalize_prefix(etcd_prefix) + path
    if namespace is not None:
        prefix += f"/{namespace}/"
    return prefix.encode()


def _check_revision(source: RecordSource, revision: int) -> None:
    if revision < 1:
        raise UsageError(f"--revision must be a positive etcd revision, got {revision}")
    if revision > source.revision:
        raise UsageError(f"revision {revision} is after the snapshot's last revision {source.revision}")
    compacted = source.compacted_revision()
    if revision < compacted:
        # Older records may be gone; an answer could be silently wrong (etcd: ErrCompacted).
        raise UsageError(
            f"revision {revision} has been compacted; the snapshot keeps history from revision {compacted}"
        )


def _labels(resources: Sequence[str]) -> list[str]:
    out: list[str] = []
    for label in resources:
        group, resource = parse_group_resource(label.strip().lower())
        canonical = resource_label((group, resource))
        if canonical not in out:
            out.append(canonical)
    return out


def _selected(source: RecordSource, opts: ExtractOptions) -> Iterator[tuple[Record, ResourceRef]]:
    for label in _labels(opts.resources):
        prefix = scan_prefix(label, opts.etcd_prefix, opts.namespace)
        records = source.latest(prefix) if opts.revision is None else as_of(source, prefix, opts.revision)
        for rec in records:
            ref = parse_etcd_key(rec.key, opts.etcd_prefix)
            if ref is None or resource_label(ref) != label:
                continue
            if opts.namespace is not None and ref.namespace != opts.namespace:
                continue
            if opts.name is not None and ref.name != opts.name:
                continue
            yield rec, ref


# -- manifests -------------------------------------------------------------------------------


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` maps/lists deep (iterative: never recurses)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _b64(values: dict[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode("ascii") for k, v in values.items()}


def _jsonable(value: Any) -> Any:
    # Safety net: undecodable managedFields JSON comes back as bytes.
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _finished(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` made JSON-ready, refused when too deep to render (see :data:`MAX_DEPTH`)."""
    if _deeper_than(manifest, MAX_DEPTH):
        raise MalformedValue(f"the object nests deeper than {MAX_DEPTH} levels")
    result: dict[str, Any] = _jsonable(manifest)
    return result


def _metadata(meta: dict[str, Any], rec: Record, opts: ExtractOptions) -> dict[str, Any]:
    meta = dict(meta)
    meta["resourceVersion"] = str(rec.mod_revision)
    if not opts.show_managed_fields:
        meta.pop("managedFields", None)
    if opts.strip_server_fields:
        for name in SERVER_FIELDS:
            meta.pop(name, None)
    ordered = {k: meta.pop(k) for k in _META_FIRST if k in meta}
    ordered.update(meta)
    return ordered


def build_manifest(
    plaintext: bytes, rec: Record, ref: ResourceRef, opts: ExtractOptions
) -> tuple[dict[str, Any], bool]:
    """One stored object as a manifest dict, and whether it is a raw (schema-less) one.

    Raises:
        MalformedValue: the plaintext is not a decodable Kubernetes object.
    """
    obj = objects.decode_object(plaintext)
    raw = obj.get("raw") if objects.sniff(plaintext) == "protobuf" else None
    if isinstance(raw, bytes):
        meta = objects.decode_metadata(raw)
        if meta is None:
            meta = {"name": ref.name} | ({"namespace": ref.namespace} if ref.namespace else {})
        meta = _metadata(meta, rec, opts)
        # The whole stored value (magic + runtime.Unknown): what protobuf tools like auger read.
        meta.setdefault("annotations", {})[RAW_ANNOTATION] = base64.b64encode(plaintext).decode()
        return _finished({"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": meta}), True
    if obj.get("apiVersion") == "v1" and obj.get("kind") == "Secret" and isinstance(obj.get("data"), dict):
        obj["data"] = _b64(obj["data"])
    if obj.get("apiVersion") == "v1" and obj.get("kind") == "ConfigMap" and isinstance(obj.get("binaryData"), dict):
        obj["binaryData"] = _b64(obj["binaryData"])
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    out: dict[str, Any] = {"apiVersion": obj.pop("apiVersion"), "kind": obj.pop("kind")}
    obj.pop("metadata", None)
    out["metadata"] = _metadata(meta, rec, opts)
    out.update(obj)
    return _finished(out), False


def run_extract(opts: ExtractOptions) -> ExtractResult:
    """Select, decrypt and decode the requested objects; see the module docstring for the shape.

    Raises:
        UsageError: bad filters or revision; ConfigError: a config that cannot be used;
        InputError/SnapshotError: a missing or damaged snapshot.
    """
    if opts.show_managed_fields and opts.strip_server_fields:
        raise UsageError("--show-managed-fields and --strip-server-fields may not be used together")
    labels = _labels(opts.resources)
    for label in labels:
        scan_prefix(label, opts.etcd_prefix)  # unknown resources fail before any work
    keyset = load_keyset(opts.access.configs)
    with open_unwrappers(keyset, opts.access) as unwrappers:
        return _extract(opts, keyset, unwrappers)


def _extract(opts: ExtractOptions, keyset: KeySet, unwrappers: dict[str, Unwrapper]) -> ExtractResult:
    reader = Reader(keyset, unwrappers, keep_plaintext=True)
    result = ExtractResult()
    with open_source(opts.snapshot) as source:
        result.snapshot_revision = source.revision
        if opts.revision is not None:
            _check_revision(source, opts.revision)
        for rec, ref in _selected(source, opts):
            result.matched += 1
            key = rec.key.decode("utf-8", "replace")
            res = reader.resolve(rec.key, rec.value, (ref.group, ref.resource))
            # Plaintext comes back even when the config would reject it: the data is here.
            if res.plaintext is None:
                reason = res.reason or res.verdict
                result.skipped.append(Skipped(key, rec.mod_revision, res.provider, res.key_name, reason))
                continue
            try:
                item, is_raw = build_manifest(res.plaintext, rec, ref, opts)
            except MalformedValue:
                result.skipped.append(Skipped(key, rec.mod_revision, res.provider, res.key_name, "undecodable"))
                continue
            result.items.append(item)
            if is_raw:
                result.raw_kinds.add(f"{item['kind']} ({item['apiVersion']})")
            if item["kind"] == "Secret":
                result.secrets += 1
            if res.provider != "identity":
                result.decrypted += 1
    return result


# -- rendering -------------------------------------------------------------------------------

# kubectl reads YAML with sigs.k8s.io/yaml (go-yaml v2, YAML 1.1): there `y`, `n`, `on`, `1e3`,
# `0b1`, `1_0`, `.5` and `1:20` are not strings, and it turns them into bools or numbers, keys
# included. PyYAML quotes only what *it* would misread. Quote every word in the YAML 1.1 bool/null
# sets and every scalar starting like a number, so a base64 value like `1E10` stays a string.
_YAML11_WORDS = frozenset({"y", "yes", "n", "no", "true", "false", "on", "off", "null", "~", "<<", "="})
_NUMBER_LIKE = re.compile(r"[-+]?(?:[0-9]|\.[0-9]|\.inf\Z|\.nan\Z)", re.IGNORECASE)

if TYPE_CHECKING:
    _BaseDumper = yaml.SafeDumper
else:  # libyaml's dumper when PyYAML was built with it: same output, several times faster
    _BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _ManifestDumper(_BaseDumper):
    """SafeDumper that also quotes scalars a YAML 1.1 reader would not read as strings."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if data.lower() in _YAML11_WORDS or _NUMBER_LIKE.match(data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    return dumper.represent_str(data)


_ManifestDumper.add_representer(str, _represent_str)


def render_yaml(doc: dict[str, Any]) -> str:
    """One YAML document, block style, keys in manifest order, unicode kept.

    Lines are not folded (width is unbounded), so each value stays on one line.
    """
    return yaml.dump(
        doc,
        Dumper=_ManifestDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 30,
    )


def render_json(doc: dict[str, Any]) -> str:
    """Indented JSON with unicode kept; escaped when a string cannot be UTF-8 (lone surrogates)."""
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(doc, indent=2)
    return text + "\n"
