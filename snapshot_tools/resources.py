"""etcd key -> Kubernetes group-resource, namespace and name.

kube-apiserver stores an object at ``<prefix>/<resource-prefix>/<namespace>/<name>`` (namespaced)
or ``<prefix>/<resource-prefix>/<name>`` (cluster-scoped). The resource prefix is normally the
plural resource name *without* its group; a few built-ins use historical prefixes, and servers
that put the group in the path (CRDs, APIServices, custom resources) use ``<group>/<plural>``.
Which group a group-less prefix belongs to is fixed by the built-in API, so it lives in one table
here (:data:`BUILTIN_PREFIXES`). Unknown group-less prefixes give ``None`` rather than a guess:
a wrong group would silently change which encryption rule applies.

References: ``staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go`` (prefix normalisation),
``pkg/kubeapiserver/default_storage_factory_builder.go`` and ``storage_factory.go``
``ResourcePrefix`` (special prefixes), ``test/integration/etcd/data.go`` (example keys),
``pkg/controlplane`` reconcilers (``/masterleases/``, ``/peerserverleases/``, ``/ranges/``);
spec section 10.
"""

from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from snapshot_tools.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "BUILTIN_PREFIXES",
    "BUILTIN_RESOURCES",
    "ResourceRef",
    "is_known_resource",
    "normalize_prefix",
    "parse_etcd_key",
    "parse_group_resource",
    "resolve_resource",
    "resource_label",
    "resource_suggestion",
    "unknown_resource_names",
]


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """Where an etcd key points: ``namespace`` is ``None`` for cluster-scoped objects."""

    group: str
    resource: str
    namespace: str | None
    name: str


# resource prefix (path segments after the etcd prefix) -> (group, resource).
# Keys with more than one segment are matched before single-segment ones.
BUILTIN_PREFIXES: dict[str, tuple[str, str]] = {
    # core ("") group
    "configmaps": ("", "configmaps"),
    "secrets": ("", "secrets"),
    "namespaces": ("", "namespaces"),
    "pods": ("", "pods"),
    "podtemplates": ("", "podtemplates"),
    "serviceaccounts": ("", "serviceaccounts"),
    "persistentvolumes": ("", "persistentvolumes"),
    "persistentvolumeclaims": ("", "persistentvolumeclaims"),
    "limitranges": ("", "limitranges"),
    "resourcequotas": ("", "resourcequotas"),
    # Both events groups (core and events.k8s.io) store here; the encryption config can only
    # name them as core `events` (validation rejects events.k8s.io).
    "events": ("", "events"),
    "services/specs": ("", "services"),
    "services/endpoints": ("", "endpoints"),
    "minions": ("", "nodes"),
    "controllers": ("", "replicationcontrollers"),
    # Internal stores without a REST API; `*.` / `*.*` still apply to them.
    "ranges/serviceips": ("", "serviceipallocations"),
    "ranges/servicenodeports": ("", "servicenodeportallocations"),
    "masterleases": ("", "apiserveripinfo"),
    "peerserverleases": ("", "apiserverpeeripinfo"),
    # apps
    "deployments": ("apps", "deployments"),
    "replicasets": ("apps", "replicasets"),
    "daemonsets": ("apps", "daemonsets"),
    "statefulsets": ("apps", "statefulsets"),
    "controllerrevisions": ("apps", "controllerrevisions"),
    # batch
    "jobs": ("batch", "jobs"),
    "cronjobs": ("batch", "cronjobs"),
    # autoscaling
    "horizontalpodautoscalers": ("autoscaling", "horizontalpodautoscalers"),
    # policy
    "poddisruptionbudgets": ("policy", "poddisruptionbudgets"),
    "podsecuritypolicy": ("policy", "podsecuritypolicies"),  # removed in 1.25; old snapshots
    # rbac
    "roles": ("rbac.authorization.k8s.io", "roles"),
    "rolebindings": ("rbac.authorization.k8s.io", "rolebindings"),
    "clusterroles": ("rbac.authorization.k8s.io", "clusterroles"),
    "clusterrolebindings": ("rbac.authorization.k8s.io", "clusterrolebindings"),
    # coordination
    "leases": ("coordination.k8s.io", "leases"),
    "leasecandidates": ("coordination.k8s.io", "leasecandidates"),
    # scheduling / node
    "priorityclasses": ("scheduling.k8s.io", "priorityclasses"),
    "runtimeclasses": ("node.k8s.io", "runtimeclasses"),
    # storage
    "storageclasses": ("storage.k8s.io", "storageclasses"),
    "csinodes": ("storage.k8s.io", "csinodes"),
    "csidrivers": ("storage.k8s.io", "csidrivers"),
    "csistoragecapacities": ("storage.k8s.io", "csistoragecapacities"),
    "volumeattachments": ("storage.k8s.io", "volumeattachments"),
    "volumeattributesclasses": ("storage.k8s.io", "volumeattributesclasses"),
    # networking (ingresses of both extensions and networking.k8s.io live under `ingress`)
    "ingress": ("networking.k8s.io", "ingresses"),
    "ingressclasses": ("networking.k8s.io", "ingressclasses"),
    "networkpolicies": ("networking.k8s.io", "networkpolicies"),
    "ipaddresses": ("networking.k8s.io", "ipaddresses"),
    "servicecidrs": ("networking.k8s.io", "servicecidrs"),
    # discovery
    "endpointslices": ("discovery.k8s.io", "endpointslices"),
    # certificates
    "certificatesigningrequests": ("certificates.k8s.io", "certificatesigningrequests"),
    "clustertrustbundles": ("certificates.k8s.io", "clustertrustbundles"),
    "podcertificaterequests": ("certificates.k8s.io", "podcertificaterequests"),
    # admission
    "mutatingwebhookconfigurations": (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    ),
    "validatingwebhookconfigurations": (
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
    ),
    "validatingadmissionpolicies": ("admissionregistration.k8s.io", "validatingadmissionpolicies"),
    "validatingadmissionpolicybindings": (
        "admissionregistration.k8s.io",
        "validatingadmissionpolicybindings",
    ),
    "mutatingadmissionpolicies": ("admissionregistration.k8s.io", "mutatingadmissionpolicies"),
    "mutatingadmissionpolicybindings": (
        "admissionregistration.k8s.io",
        "mutatingadmissionpolicybindings",
    ),
    # flow control
    "flowschemas": ("flowcontrol.apiserver.k8s.io", "flowschemas"),
    "prioritylevelconfigurations": ("flowcontrol.apiserver.k8s.io", "prioritylevelconfigurations"),
    # dynamic resource allocation
    "resourceclaims": ("resource.k8s.io", "resourceclaims"),
    "resourceclaimtemplates": ("resource.k8s.io", "resourceclaimtemplates"),
    "resourceslices": ("resource.k8s.io", "resourceslices"),
    "deviceclasses": ("resource.k8s.io", "deviceclasses"),
    # apiserver internals
    "storageversions": ("internal.apiserver.k8s.io", "storageversions"),
    "storageversionmigrations": ("storagemigration.k8s.io", "storageversionmigrations"),
}

_MULTI = {tuple(k.split("/")): v for k, v in BUILTIN_PREFIXES.items() if "/" in k}
_SINGLE = {k: v for k, v in BUILTIN_PREFIXES.items() if "/" not in k}
# First segments that only ever start a multi-segment prefix (`services/...`, `ranges/...`).
_MULTI_HEADS = {k[0] for k in _MULTI}


def normalize_prefix(prefix: str) -> str:
    """``--etcd-prefix`` as the etcd3 store uses it: ``path.Join("/", prefix)`` plus ``/``.

    ``registry``, ``/registry`` and ``/registry/`` all become ``/registry/``; ``""`` becomes ``/``.
    """
    parts: list[str] = []
    for seg in prefix.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts:
                parts.pop()
            continue
        parts.append(seg)
    return "/" + "".join(p + "/" for p in parts)


def parse_group_resource(text: str) -> tuple[str, str]:
    """``schema.ParseGroupResource``: split at the first ``.`` -> ``(group, resource)``.

    ``secrets`` -> ``("", "secrets")``, ``deployments.apps`` -> ``("apps", "deployments")``,
    ``*.`` -> ``("", "*")``, ``*.*`` -> ``("*", "*")``.
    """
    resource, dot, group = text.partition(".")
    if not dot:
        return "", text
    return group, resource


def resource_label(ref: ResourceRef | tuple[str, str]) -> str:
    """``secrets``, ``deployments.apps``, ``pandas.awesome.bears.example``: the form users type
    for ``--resource`` and the form the encryption config uses."""
    if isinstance(ref, ResourceRef):
        group, resource = ref.group, ref.resource
    else:
        group, resource = ref
    return f"{resource}.{group}" if group else resource


def parse_etcd_key(key: bytes, prefix: str = "/registry") -> ResourceRef | None:
    """Map an etcd key to the object it stores; ``None`` when it is not an API object key.

    ``None`` means: outside the prefix, not UTF-8, an unknown group-less resource prefix, or a
    segment count that fits neither ``namespace/name`` nor ``name``. Names never contain ``/``.
    """
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    norm = normalize_prefix(prefix)
    if not text.startswith(norm):
        return None
    segs = text[len(norm) :].split("/")
    if not segs or not segs[0]:
        return None
    head = segs[0]
    if "." in head:
        # `<group>/<plural>/...`: CRDs, APIServices and custom resources.
        if len(segs) < 2 or not segs[1]:
            return None
        group, resource, rest = head, segs[1], segs[2:]
    elif head in _MULTI_HEADS:
        if len(segs) < 2:
            return None
        found = _MULTI.get((head, segs[1]))
        if found is None:
            return None
        (group, resource), rest = found, segs[2:]
        if not rest and head == "ranges":
            # `ranges/serviceips` is a single object: the allocator's range itself.
            rest = [segs[1]]
    else:
        found = _SINGLE.get(head)
        if found is None:
            return None
        (group, resource), rest = found, segs[1:]
    if any(not s for s in rest):
        return None
    if len(rest) == 2:
        return ResourceRef(group, resource, rest[0], rest[1])
    if len(rest) == 1:
        return ResourceRef(group, resource, None, rest[0])
    return None


# -- resource names as users type them (--resource, a config's resources: list) ---------------

BUILTIN_RESOURCES: Final = frozenset(BUILTIN_PREFIXES.values())
"""Every built-in ``(group, resource)`` a snapshot can hold."""
_BUILTIN_GROUPS: Final = frozenset(group for group, _ in BUILTIN_RESOURCES)
_BUILTIN_LABELS: Final = sorted(resource_label(gr) for gr in BUILTIN_RESOURCES)


def is_known_resource(label: str) -> bool:
    """A built-in resource, or ``plural.group`` in a group that is not built-in (custom
    resources, CRDs, APIServices). ``secret``, ``Secrets`` and ``deployment.apps`` are not:
    no object is ever stored under them. Wildcards (``*.``, ``*.apps``) are not names."""
    group, resource = parse_group_resource(label)
    if (group, resource) in BUILTIN_RESOURCES:
        return True
    return bool(group) and bool(resource) and group not in _BUILTIN_GROUPS and label == label.lower()


def _is_wildcard(label: str) -> bool:
    return parse_group_resource(label)[1] == "*"


def resource_suggestion(label: str, known: Iterable[str] = ()) -> str:
    """``"; did you mean secrets?"`` (difflib over the built-ins and ``known``), or ``""``."""
    candidates = sorted(set(_BUILTIN_LABELS) | {k for k in known if is_known_resource(k)})
    typed = label.lower()
    if typed != label and typed in candidates:
        return f"; did you mean {typed}?"  # only the case was wrong
    near = difflib.get_close_matches(typed, candidates, n=3, cutoff=0.6)
    # `deployments` for `deployments.apps`, `widgetz` for `widgets.example.com`: by the plural.
    plural = typed.split(".", 1)[0]
    by_plural = {c.split(".", 1)[0] for c in candidates}
    for p in difflib.get_close_matches(plural, by_plural, n=3, cutoff=0.8):
        near += [c for c in candidates if c.split(".", 1)[0] == p and c not in near]
    near = [c for c in near if c != label][:3]
    return f"; did you mean {' or '.join(near)}?" if near else ""


def resolve_resource(label: str, known: Iterable[str] = ()) -> str:
    """The ``--resource`` name ``label`` checked: ``check``, ``extract`` and ``reencrypt`` share it.

    ``known`` are the names the configs given use (for the did-you-mean only).

    Raises:
        UsageError: a name no object is stored under (:func:`is_known_resource`), since it
            would silently select nothing; the message suggests the nearest names.
    """
    text = label.strip()
    if not is_known_resource(text):
        raise UsageError(f"unknown resource {label!r}{resource_suggestion(text, known)}")
    return text


def unknown_resource_names(names: Iterable[str]) -> list[str]:
    """The names of a config's ``resources:`` lists that match no resource (wildcards are fine),
    each once, in order: a rule naming only those covers nothing."""
    out: list[str] = []
    for name in names:
        if not _is_wildcard(name) and not is_known_resource(name) and name not in out:
            out.append(name)
    return out


class ObjectBase(NamedTuple):
    """What every object under one key prefix shares: ``(resource, group, namespace)``."""

    resource: str
    group: str
    namespace: str | None


class ParsedKey(NamedTuple):
    """An etcd key as the commands that walk snapshots need it; all ``None`` for a key that is
    no API object key. ``label`` is the ``--resource`` form (``secrets``, ``deployments.apps``)."""

    gr: tuple[str, str] | None
    base: ObjectBase | None
    name: str | None
    label: str | None


class _Parent(NamedTuple):
    gr: tuple[str, str]
    base: ObjectBase
    label: str


NOT_AN_OBJECT = ParsedKey(None, None, None, None)


class KeyParser:
    """``parse_etcd_key`` cached by the key's parent path (``/registry/secrets/ns-1``).

    Once the path after the etcd prefix has at least three segments, the last one (the object
    name) takes no part in finding the group, resource and namespace: it only has to be
    non-empty (:func:`parse_etcd_key`). Those keys share one :class:`_Parent` per parent; every
    other key is parsed in full. Used by the commands that walk whole snapshots.
    """

    __slots__ = ("_cache", "prefix", "prefix_bytes")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.prefix_bytes = normalize_prefix(prefix).encode()
        self._cache: dict[bytes, _Parent | None] = {}  # None: not an API object key

    def parse(self, key: bytes) -> ParsedKey:
        """The :class:`ParsedKey` of ``key``."""
        parent, sep, last = key.rpartition(b"/")
        if sep and last:
            try:
                name = last.decode()
            except UnicodeDecodeError:
                return NOT_AN_OBJECT
            hit = self._cache.get(parent, _MISS)
            prefix = self.prefix_bytes
            if hit is _MISS and parent.startswith(prefix) and parent.count(b"/", len(prefix)) >= 1:
                ref = parse_etcd_key(key, self.prefix)
                hit = self._cache[parent] = None if ref is None else _parent(ref)
            if hit is not _MISS:
                if hit is None:
                    return NOT_AN_OBJECT
                # One per key on the hot path: tuple.__new__ skips NamedTuple's Python __new__.
                return tuple.__new__(ParsedKey, (hit.gr, hit.base, name, hit.label))
        ref = parse_etcd_key(key, self.prefix)
        if ref is None:
            return NOT_AN_OBJECT
        p = _parent(ref)
        return ParsedKey(p.gr, p.base, ref.name, p.label)

    def group_resource(self, key: bytes) -> tuple[str, str] | None:
        """Just ``(group, resource)``, or ``None`` for a key that is no API object key."""
        return self.parse(key).gr


def _parent(ref: ResourceRef) -> _Parent:
    return _Parent((ref.group, ref.resource), ObjectBase(ref.resource, ref.group, ref.namespace), resource_label(ref))


class _Miss(enum.Enum):
    """The cache's "not looked at yet" (``None`` is a cached "not an API object key")."""

    MISS = enum.auto()


_MISS: Final = _Miss.MISS
