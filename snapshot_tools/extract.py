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
import hashlib
import json
import os
import re
import stat
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import yaml

from snapshot_tools import objects
from snapshot_tools.atomic_file import AtomicFile
from snapshot_tools.errors import EXIT_FINDINGS, EXIT_KMS, EXIT_OK, MalformedValue, OutputError, UsageError
from snapshot_tools.inputs import opened
from snapshot_tools.integrity import require_integrity
from snapshot_tools.k3s_bootstrap import keyset_for, prepare_keyset
from snapshot_tools.readers import Reader
from snapshot_tools.resources import (
    BUILTIN_PREFIXES,
    normalize_prefix,
    parse_etcd_key,
    parse_group_resource,
    resolve_resource,
    resource_label,
)
from snapshot_tools.sources import as_of, open_record_source
from snapshot_tools.unwrap import kms_problems, open_unwrappers

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from snapshot_tools.inputs import S3Options, SnapshotInput
    from snapshot_tools.keysets import KeySet
    from snapshot_tools.label_selector import Selector
    from snapshot_tools.live_etcd import EtcdTarget
    from snapshot_tools.resources import ResourceRef
    from snapshot_tools.snapshot import Record
    from snapshot_tools.sources import RecordSource
    from snapshot_tools.unwrap import KeyAccess, KmsProblem, Unwrapper

__all__ = [
    "RAW_ANNOTATION",
    "SERVER_FIELDS",
    "ExtractOptions",
    "ExtractResult",
    "ObjectDir",
    "Skipped",
    "build_manifest",
    "iter_extract",
    "render_json",
    "render_yaml",
    "run_extract",
    "scan_prefix",
    "stream_json",
    "stream_yaml",
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

    snapshot: str | SnapshotInput  # a path, .zip, .gz or s3:// spec, or an input opened already
    access: KeyAccess  # the configs and how to reach each KMS provider
    resources: Sequence[str] = ("secrets",)
    namespace: str | None = None
    name: str | None = None
    selector: Selector | None = None  # label selector (kubectl -l); None: every object
    revision: int | None = None  # None: the latest live revision
    strip_server_fields: bool = False
    show_managed_fields: bool = False
    etcd_prefix: str = "/registry"
    skip_hash_check: bool = False  # etcdutl's flag: read a snapshot with a missing/wrong trailer
    etcd: EtcdTarget | None = None  # --etcd-endpoint: read this live etcd instead of ``snapshot``
    s3: S3Options | None = None  # for an s3:// snapshot
    download_progress: bool = False  # a download bar on stderr (the CLI: when it is a terminal)


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
    """What the CLI has to say about the manifests: counts and the objects skipped.

    :func:`iter_extract` fills it while it yields the manifests (nothing kept per object but the
    small :class:`Skipped` rows); :func:`run_extract` also collects the manifests in ``items``.
    """

    items: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    matched: int = 0  # records that passed the filters, readable or not
    written: int = 0  # manifests yielded
    secrets: int = 0  # Secrets among the items: their values are on their way to stdout
    decrypted: int = 0  # items that were stored encrypted
    raw_kinds: set[str] = field(default_factory=set)  # kinds emitted with RAW_ANNOTATION
    snapshot_revision: int = 0
    kms: list[KmsProblem] = field(default_factory=list)  # KMS providers that did not answer

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
    group, resource = parse_group_resource(resolve_resource(label))
    path = _BY_RESOURCE.get((group, resource))
    if path is None:
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


def _labels(resources: Sequence[str], known: Sequence[str] = ()) -> list[str]:
    out: list[str] = []
    for label in resources:
        canonical = resolve_resource(label, known)
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


def _b64(values: dict[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode("ascii") for k, v in values.items()}


class _TooDeep(Exception):
    pass


def _jsonable(value: Any, depth: int) -> Any:
    # One walk: bytes (undecodable managedFields JSON comes back as bytes) to base64, and the
    # depth bound. The recursion stops at MAX_DEPTH, far below Python's limit.
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise _TooDeep
        return {k: _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise _TooDeep
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def _finished(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` made JSON-ready, refused when too deep to render (see :data:`MAX_DEPTH`)."""
    try:
        result: dict[str, Any] = _jsonable(manifest, 0)
    except _TooDeep:
        raise MalformedValue(f"the object nests deeper than {MAX_DEPTH} levels") from None
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
    """Every requested manifest in one list (``result.items``): for small extracts and tests.

    Raises: as :func:`iter_extract`.
    """
    result = ExtractResult()
    result.items = list(iter_extract(opts, result))
    return result


def iter_extract(
    opts: ExtractOptions, result: ExtractResult, progress: Callable[[int], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Select, decrypt and decode the requested objects, yielding one manifest at a time.

    Memory stays flat: nothing per object is kept but the :class:`Skipped` rows in ``result``,
    which is complete once the iterator is exhausted. ``progress`` gets the count of records
    looked at now and then. See the module docstring for the shape of a manifest.

    Raises (on the first ``next``, before anything is yielded, unless the snapshot is damaged
    further on):
        UsageError: bad filters or revision; ConfigError: a config that cannot be used;
        InputError/SnapshotError: a missing or damaged snapshot.
    """
    if opts.show_managed_fields and opts.strip_server_fields:
        raise UsageError("--show-managed-fields and --strip-server-fields may not be used together")
    with ExitStack() as stack:
        if opts.etcd is not None:  # a live etcd: no trailer, nothing to unpack
            keyset = keyset_for(opts.access.configs, opts.snapshot, opts.access, opts.etcd)
        else:
            keyset, snapshot = prepare_keyset(
                opts.access.configs, opts.snapshot, opts.access, stack, opts.s3, progress=opts.download_progress
            )
        _labels(opts.resources, keyset.resource_names())  # unknown resources fail before any work
        if opts.etcd is None:
            # Unpacked or downloaded once, for the integrity check and the read.
            local = stack.enter_context(opened(snapshot, opts.s3, progress=opts.download_progress))
            opts = replace(opts, snapshot=local)
            if not opts.skip_hash_check:
                require_integrity(opts.snapshot)  # nothing is written from a snapshot etcd would refuse
        unwrappers = stack.enter_context(open_unwrappers(keyset, opts.access))
        yield from _extract(opts, keyset, unwrappers, result, progress)
        result.kms = kms_problems(unwrappers)


_PROGRESS_EVERY = 1024


def _extract(
    opts: ExtractOptions,
    keyset: KeySet,
    unwrappers: dict[str, Unwrapper],
    result: ExtractResult,
    progress: Callable[[int], None] | None,
) -> Iterator[dict[str, Any]]:
    reader = Reader(keyset, unwrappers, keep_plaintext=True)
    selector = opts.selector if opts.selector is not None and opts.selector.requirements else None
    with open_record_source(opts.snapshot, opts.etcd) as source:
        result.snapshot_revision = source.revision
        if opts.revision is not None:
            _check_revision(source, opts.revision)
        seen = 0
        for rec, ref in _selected(source, opts):
            seen += 1
            if progress is not None and seen % _PROGRESS_EVERY == 0:
                progress(seen)
            key = rec.key.decode("utf-8", "replace")
            res = reader.resolve(rec.key, rec.value, (ref.group, ref.resource))
            # Plaintext comes back even when the config would reject it: the data is here.
            if res.plaintext is None:
                # Unreadable: whether it matches a selector is unknowable, so it counts.
                result.matched += 1
                reason = res.reason or res.verdict
                result.skipped.append(Skipped(key, rec.mod_revision, res.provider, res.key_name, reason))
                continue
            try:
                item, is_raw = build_manifest(res.plaintext, rec, ref, opts)
            except MalformedValue:
                result.matched += 1
                result.skipped.append(Skipped(key, rec.mod_revision, res.provider, res.key_name, "undecodable"))
                continue
            if selector is not None and not selector.matches(item["metadata"].get("labels")):
                continue
            result.matched += 1
            result.written += 1
            if is_raw:
                result.raw_kinds.add(f"{item['kind']} ({item['apiVersion']})")
            if item["kind"] == "Secret":
                result.secrets += 1
            if res.provider != "identity":
                result.decrypted += 1
            yield item
        if progress is not None:
            progress(seen)


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


def render_yaml(doc: dict[str, Any] | list[dict[str, Any]]) -> str:
    """One YAML document, block style, keys in manifest order, unicode kept.

    Lines are not folded (width is unbounded), so each value stays on one line.
    """
    try:
        out: list[str] = []
        if isinstance(doc, dict) and doc:
            _yaml_map(doc, "", "", out, set())
        elif isinstance(doc, list) and doc:
            _yaml_seq(doc, "", out, set())
        else:
            raise _Unusual
        return "".join(out)
    except _Unusual:
        pass
    return yaml.dump(
        doc,
        Dumper=_ManifestDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 30,
    )


# The fast YAML path: what PyYAML (with _represent_str) writes for the common manifest, written
# directly, several times faster (PyYAML's representer is Python even with libyaml). Strings of
# these characters are plain in block context, or single-quoted when a YAML 1.1 reader would not
# read them as strings; anything else (spaces, quotes, unicode, floats, shared containers, ...)
# raises _Unusual and the whole document goes through yaml.dump. A test compares the two.
_PLAIN_YAML = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./+=:-"


def _yaml_scalar(value: Any) -> str:
    kind = type(value)
    if kind is str:
        # bytes.translate: a table lookup per byte, several times faster than a regex on 20 KB values
        if (
            not value
            or not value.isascii()
            or value.encode("ascii").translate(None, _PLAIN_YAML)
            or value[0] in "-:"
            or value[-1] == ":"
        ):
            raise _Unusual
        if value.lower() in _YAML11_WORDS or _NUMBER_LIKE.match(value):
            return f"'{value}'"
        return str(value)
    if kind is int:
        return int.__repr__(value)
    if kind is bool or value is None:
        return _SCALARS[value]
    raise _Unusual


def _yaml_key(key: Any) -> str:
    if type(key) is not str or len(key) > 120:  # PyYAML writes long keys as "? key"
        raise _Unusual
    return _yaml_scalar(key)


def _seen(value: Any, seen: set[int]) -> None:
    if id(value) in seen:  # PyYAML would write an anchor and an alias
        raise _Unusual
    seen.add(id(value))


def _yaml_map(value: dict[str, Any], indent: str, first: str, out: list[str], seen: set[int]) -> None:
    _seen(value, seen)
    prefix = first
    for key, item in value.items():
        head = prefix + _yaml_key(key) + ":"
        kind = type(item)
        if kind is dict:
            if item:
                out.append(head + "\n")
                _yaml_map(item, indent + "  ", indent + "  ", out, seen)
            else:
                out.append(head + " {}\n")
        elif kind is list:
            if item:
                out.append(head + "\n")
                _yaml_seq(item, indent, out, seen)  # block sequences in a mapping are not indented
            else:
                out.append(head + " []\n")
        else:
            out.append(head + " " + _yaml_scalar(item) + "\n")
        prefix = indent


def _yaml_seq(value: list[Any], indent: str, out: list[str], seen: set[int]) -> None:
    _seen(value, seen)
    for item in value:
        kind = type(item)
        if kind is dict:
            if item:
                _yaml_map(item, indent + "  ", indent + "- ", out, seen)
            else:
                out.append(indent + "- {}\n")
        elif kind is list:
            raise _Unusual
        else:
            out.append(indent + "- " + _yaml_scalar(item) + "\n")


def render_json(doc: dict[str, Any]) -> str:
    """Indented JSON with unicode kept; escaped when a string cannot be UTF-8 (lone surrogates)."""
    return _json(doc) + "\n"


def _json(doc: dict[str, Any]) -> str:
    try:
        parts: list[str] = []
        _indented(doc, "\n", parts)
        text = "".join(parts)
    except _Unusual:
        text = json.dumps(doc, indent=2, ensure_ascii=False)
    if text.isascii():  # O(1) in CPython: the common case needs no trial encode
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(doc, indent=2)
    return text


class _Unusual(Exception):
    """A value the fast JSON path leaves to ``json.dumps`` (floats, subclasses, non-str keys)."""


_encode_str = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring
_SCALARS: dict[object, str] = {True: "true", False: "false", None: "null"}


def _indented(value: Any, newline: str, out: list[str]) -> None:
    """``json.dumps(value, indent=2, ensure_ascii=False)`` into ``out``, several times faster.

    The stdlib takes its pure-Python encoder whenever ``indent`` is set; manifests are small
    trees of dicts, lists and strings, written here directly. Byte-identical (a test compares
    the two on generated trees); anything else raises :class:`_Unusual`.
    """
    kind = type(value)
    if kind is str:
        out.append(_encode_str(value))
    elif kind is dict:
        if not value:
            out.append("{}")
            return
        inner = newline + "  "
        sep = "{" + inner
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual
            out.append(sep + _encode_str(key) + ": ")
            _indented(item, inner, out)
            sep = "," + inner
        out.append(newline + "}")
    elif kind is list:
        if not value:
            out.append("[]")
            return
        inner = newline + "  "
        sep = "[" + inner
        for item in value:
            out.append(sep)
            _indented(item, inner, out)
            sep = "," + inner
        out.append(newline + "]")
    elif kind is int:
        out.append(int.__repr__(value))
    elif kind is bool or value is None:
        out.append(_SCALARS[value])
    else:
        raise _Unusual


def stream_yaml(items: Iterator[dict[str, Any]]) -> Iterator[str]:
    """The ``v1 List`` of ``items`` as YAML text, one piece per item: memory stays flat.

    Each item is dumped on its own as a one-entry block sequence, which is byte for byte how the
    emitter writes it inside the List (:func:`render_yaml` of ``{apiVersion, items, kind}``;
    a test compares the two). ``kind: List`` comes last, so that output cut short (a snapshot
    damaged half-way) is no List that ``kubectl apply`` would take. Nothing at all without items.
    """
    started = False
    for item in items:
        if not started:
            started = True
            yield "apiVersion: v1\nitems:\n"
        yield render_yaml([item])  # a one-entry list renders as one block sequence entry
    if started:
        yield "kind: List\n"


def stream_json(items: Iterator[dict[str, Any]]) -> Iterator[str]:
    """The ``v1 List`` of ``items`` as the text :func:`render_json` gives, one piece per item.

    Output cut short is not valid JSON. Nothing at all without items.
    """
    started = False
    for item in items:
        text = "    " + _json(item).replace("\n", "\n    ")  # JSON strings hold no raw newline
        if not started:
            started = True
            yield '{\n  "apiVersion": "v1",\n  "kind": "List",\n  "items": [\n' + text
        else:
            yield ",\n" + text
    if started:
        yield "\n  ]\n}\n"


# -- one file per object -----------------------------------------------------------------------

CLUSTER_DIR = "_cluster"  # cluster-scoped objects; no namespace name can start with "_"
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
_MAX_COMPONENT = 200  # bytes; file systems allow 255


def path_component(text: str) -> str:
    """``text`` as one safe file name: a one-to-one escape, never ``.``/``..``/hidden/empty.

    Bytes outside ``[A-Za-z0-9._-]``, ``/`` included, become ``%XX``; so does a leading ``.`` or
    ``_`` (no hidden files, no clash with :data:`CLUSTER_DIR`). An empty text is ``%``. A result
    longer than 200 bytes is cut and ends in ``~`` and a hash of the whole (``~`` is always escaped
    otherwise, so such names cannot clash with short ones).
    """
    raw = text.encode("utf-8", "surrogatepass")
    out = "".join(chr(b) if b in _SAFE and not (i == 0 and b in b"._") else f"%{b:02X}" for i, b in enumerate(raw))
    if not out:
        return "%"
    if len(out) > _MAX_COMPONENT:
        out = out[: _MAX_COMPONENT - 17] + "~" + hashlib.sha256(raw).hexdigest()[:16]
    return out


def object_file(item: dict[str, Any], ext: str) -> tuple[str, str]:
    """``(directory, file name)`` of ``item`` under an ``--output-dir``.

    ``<namespace>/<kind>-<name>.<ext>`` (``_cluster/`` for cluster-scoped objects), the kind in
    lower case and qualified by its API group when it has one (``event.events.k8s.io-x.yaml``).
    """
    meta = item.get("metadata") or {}
    namespace = meta.get("namespace")
    api_version = str(item.get("apiVersion", ""))
    group = api_version.rpartition("/")[0]
    kind = str(item.get("kind", "")).lower() + (f".{group}" if group else "")
    directory = path_component(str(namespace)) if namespace else CLUSTER_DIR
    return directory, path_component(f"{kind}-{meta.get('name', '')}") + f".{ext}"


class ObjectDir:
    """An ``--output-dir``: one file per object, each written atomically with mode 0600.

    The directory is created with mode 0700 at the first write when missing (so a run that
    fails before writing anything leaves nothing behind); an existing one must be a real
    directory (not a symlink) and empty unless ``force`` (then files of the same name are
    replaced). Subdirectories are created 0700.

    Raises (on creation and on :meth:`write`):
        OutputError: as described, or a file that cannot be written.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, fmt: str, force: bool = False, inputs: Sequence[str] = ()
    ) -> None:
        self.path = os.fspath(path)
        self.fmt = fmt
        self.force = force
        self.inputs = list(inputs)
        self._made: set[str] | None = None  # None until the first write creates what is missing
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            if not os.path.isdir(os.path.dirname(os.path.abspath(self.path))):
                raise OutputError(f"{self.path}: its parent directory does not exist") from None
            return
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot check the output directory: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{self.path}: not a directory (a symbolic link or a file); give a new or empty one")
        if not force and os.listdir(self.path):
            raise OutputError(f"{self.path}: directory is not empty (use --force to write into it)")

    def _mkdir(self, path: str) -> None:
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # whatever the umask: it will hold secrets
        except FileExistsError:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise OutputError(f"{path}: exists and is not a directory") from None
        except OSError as exc:
            raise OutputError(f"{path}: cannot create the directory: {exc.strerror}") from None

    def write(self, item: dict[str, Any]) -> str:
        """Write ``item`` as its own YAML or JSON document; the path written."""
        directory, name = object_file(item, "json" if self.fmt == "json" else "yaml")
        sub = os.path.join(self.path, directory)
        if self._made is None:
            self._mkdir(self.path)
            self._made = set()
        if directory not in self._made:
            self._mkdir(sub)
            self._made.add(directory)
        text = render_json(item) if self.fmt == "json" else render_yaml(item)
        with AtomicFile(os.path.join(sub, name), force=self.force, inputs=self.inputs) as out:
            assert out.file is not None
            try:
                out.file.write(text.encode("utf-8"))
            except OSError as exc:
                raise OutputError(f"{out.target}: cannot write: {exc.strerror}") from None
            return os.fspath(out.commit())
