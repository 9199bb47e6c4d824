"""etcd key -> group/resource/namespace/name (spec section 10).

The "seen in a real snapshot" rows have the key shapes read out of the apiserver-v1.36 fixture
snapshots (kube-apiserver v1.36.2 writing to etcd 3.5; a few object names shortened); the
rest follow upstream's ``test/integration/etcd/data.go`` examples and the storage-factory
special prefixes.
"""

from __future__ import annotations

import pytest

from snapshot_tools.resources import (
    BUILTIN_PREFIXES,
    ResourceRef,
    normalize_prefix,
    parse_etcd_key,
    parse_group_resource,
    resource_label,
)
from tests.support.fixtures import FIXTURE_CASES, load_manifest

Row = tuple[str, tuple[str, str, str | None, str]]


def _table(text: str) -> list[Row]:
    """Rows of ``key group resource namespace name``; ``-`` is the core group / no namespace."""
    rows: list[Row] = []
    for line in text.strip().splitlines():
        key, group, resource, ns, name = line.split()
        rows.append((key, (group.strip("-"), resource, None if ns == "-" else ns, name)))
    return rows


SEEN_IN_FIXTURE_SNAPSHOT = _table(
    """
/registry/apiregistration.k8s.io/apiservices/v1. apiregistration.k8s.io apiservices - v1.
/registry/apiregistration.k8s.io/apiservices/v1.apps apiregistration.k8s.io apiservices - v1.apps
/registry/configmaps/alpha/cm-binary - configmaps alpha cm-binary
/registry/events/default/kube-apiserver.18eaa7274 - events default kube-apiserver.18eaa7274
/registry/flowschemas/catch-all flowcontrol.apiserver.k8s.io flowschemas - catch-all
/registry/ipaddresses/10.0.0.1 networking.k8s.io ipaddresses - 10.0.0.1
/registry/leases/kube-system/apiserver-wlv3 coordination.k8s.io leases kube-system apiserver-wlv3
/registry/namespaces/beta-2 - namespaces - beta-2
/registry/peerserverleases/apiserver-wlv32tlt - apiserverpeeripinfo - apiserver-wlv32tlt
/registry/priorityclasses/system-node-crit scheduling.k8s.io priorityclasses - system-node-crit
/registry/prioritylevelconfigurations/e flowcontrol.apiserver.k8s.io prioritylevelconfigurations - e
/registry/ranges/servicenodeports - servicenodeportallocations - servicenodeports
/registry/secrets/beta-2/tls - secrets beta-2 tls
/registry/servicecidrs/kubernetes networking.k8s.io servicecidrs - kubernetes
/registry/services/specs/default/kubernetes - services default kubernetes
"""
)

UPSTREAM_LAYOUT = [
    *_table(
        """
/registry/secrets/ns1/secret1 - secrets ns1 secret1
/registry/services/endpoints/ns1/ep1 - endpoints ns1 ep1
/registry/minions/node1 - nodes - node1
/registry/controllers/ns1/rc1 - replicationcontrollers ns1 rc1
/registry/ingress/ns1/ing1 networking.k8s.io ingresses ns1 ing1
/registry/ingressclasses/nginx networking.k8s.io ingressclasses - nginx
/registry/networkpolicies/ns1/np networking.k8s.io networkpolicies ns1 np
/registry/deployments/ns1/deployment4 apps deployments ns1 deployment4
/registry/replicasets/ns1/rs apps replicasets ns1 rs
/registry/daemonsets/ns1/ds apps daemonsets ns1 ds
/registry/statefulsets/ns1/ss apps statefulsets ns1 ss
/registry/jobs/ns1/job1 batch jobs ns1 job1
/registry/cronjobs/ns1/cj batch cronjobs ns1 cj
/registry/roles/ns1/r rbac.authorization.k8s.io roles ns1 r
/registry/rolebindings/ns1/rb rbac.authorization.k8s.io rolebindings ns1 rb
/registry/clusterroles/admin rbac.authorization.k8s.io clusterroles - admin
/registry/clusterrolebindings/system:b rbac.authorization.k8s.io clusterrolebindings - system:b
/registry/storageclasses/standard storage.k8s.io storageclasses - standard
/registry/csinodes/node1 storage.k8s.io csinodes - node1
/registry/csidrivers/ebs.csi.aws.com storage.k8s.io csidrivers - ebs.csi.aws.com
/registry/volumeattachments/va1 storage.k8s.io volumeattachments - va1
/registry/poddisruptionbudgets/ns1/pdb policy poddisruptionbudgets ns1 pdb
/registry/horizontalpodautoscalers/ns1/h autoscaling horizontalpodautoscalers ns1 h
/registry/certificatesigningrequests/csr-1 certificates.k8s.io certificatesigningrequests - csr-1
/registry/runtimeclasses/gvisor node.k8s.io runtimeclasses - gvisor
/registry/endpointslices/ns1/es-abc discovery.k8s.io endpointslices ns1 es-abc
/registry/events/ns1/event1 - events ns1 event1
/registry/masterleases/10.0.0.1 - apiserveripinfo - 10.0.0.1
/registry/ranges/serviceips - serviceipallocations - serviceips
/registry/cr.bar.com/foos/ns1/cr1foo cr.bar.com foos ns1 cr1foo
/registry/awesome.bears.com/pandas/cr3panda awesome.bears.com pandas - cr3panda
"""
    ),
    (
        "/registry/mutatingwebhookconfigurations/m",
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", None, "m"),
    ),
    (
        "/registry/validatingwebhookconfigurations/v",
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", None, "v"),
    ),
    (
        "/registry/apiextensions.k8s.io/customresourcedefinitions/foos.cr.bar.com",
        ("apiextensions.k8s.io", "customresourcedefinitions", None, "foos.cr.bar.com"),
    ),
]

NOT_OBJECTS = [
    "/registry/",  # the prefix itself
    "/registry/secrets",  # no name
    "/registry/secrets/ns/name/extra",  # too many segments
    "/registry/secrets//name",  # empty namespace
    "/registry/services/other/ns/name",  # unknown services/ sub-prefix
    "/registry/services/specs",  # nothing after the resource path
    "/registry/no-such-resource/ns/name",  # unknown group-less prefix: no guessing
    "/registry/cr.bar.com",  # group without a resource
    "/bootstrap/abcdef012345",  # K3s bootstrap data, outside the prefix
    "/registryx/secrets/ns/name",  # prefix must end at a '/'
    "compact_rev_key",
]


def _ref(expected: tuple[str, str, str | None, str]) -> ResourceRef:
    return ResourceRef(*expected)


@pytest.mark.parametrize(("key", "expected"), SEEN_IN_FIXTURE_SNAPSHOT + UPSTREAM_LAYOUT)
def test_parse_default_prefix(key: str, expected: tuple[str, str, str | None, str]) -> None:
    assert parse_etcd_key(key.encode()) == _ref(expected)


@pytest.mark.parametrize("key", NOT_OBJECTS)
def test_not_an_object_key(key: str) -> None:
    assert parse_etcd_key(key.encode()) is None


def test_non_utf8_key_is_none() -> None:
    assert parse_etcd_key(b"/registry/secrets/ns/\xff\xfe") is None


LEGACY_PREFIX = "43da1478-5e9c-4ef3-a92a-2b19d540c8a5/registry"


@pytest.mark.parametrize(
    ("prefix", "normalised"),
    [
        ("/registry", "/registry/"),
        ("registry", "/registry/"),
        ("/registry/", "/registry/"),
        ("//registry//", "/registry/"),
        ("/a/./b/../registry", "/a/registry/"),
        ("", "/"),
        (LEGACY_PREFIX, f"/{LEGACY_PREFIX}/"),
    ],
)
def test_normalize_prefix(prefix: str, normalised: str) -> None:
    assert normalize_prefix(prefix) == normalised


@pytest.mark.parametrize("prefix", ["registry", "/registry", "/registry/"])
def test_prefix_spellings_are_equivalent(prefix: str) -> None:
    assert parse_etcd_key(b"/registry/secrets/default/foo", prefix) == ResourceRef(
        "", "secrets", "default", "foo"
    )


def test_custom_prefix_from_upstream_legacy_data_test() -> None:
    # The KMS v2 legacy-data test runs with --etcd-prefix 43da.../registry (spec section 10).
    prefix = "43da1478-5e9c-4ef3-a92a-2b19d540c8a5/registry"
    key = b"/43da1478-5e9c-4ef3-a92a-2b19d540c8a5/registry/secrets/kms-v2-legacy-data/foo"
    assert parse_etcd_key(key, prefix) == ResourceRef("", "secrets", "kms-v2-legacy-data", "foo")
    # ... and the same key is not an object under the default prefix,
    assert parse_etcd_key(key) is None
    # nor is a default-prefix key under the custom one.
    assert parse_etcd_key(b"/registry/secrets/kms-v2-legacy-data/foo", prefix) is None


def test_custom_prefix_with_custom_resource() -> None:
    key = b"/tenant-a/registry/awesome.bears.example/pandas/zoo/po"
    ref = parse_etcd_key(key, "/tenant-a/registry")
    assert ref == ResourceRef("awesome.bears.example", "pandas", "zoo", "po")
    assert resource_label(ref) == "pandas.awesome.bears.example"


def test_empty_prefix() -> None:
    assert parse_etcd_key(b"/secrets/ns/a", "") == ResourceRef("", "secrets", "ns", "a")


@pytest.mark.parametrize(
    ("ref", "label"),
    [
        (ResourceRef("", "secrets", "ns", "a"), "secrets"),
        (ResourceRef("apps", "deployments", "ns", "a"), "deployments.apps"),
        (ResourceRef("awesome.bears.example", "pandas", None, "a"), "pandas.awesome.bears.example"),
        (("", "configmaps"), "configmaps"),
        (("networking.k8s.io", "ingresses"), "ingresses.networking.k8s.io"),
    ],
)
def test_resource_label(ref: ResourceRef | tuple[str, str], label: str) -> None:
    assert resource_label(ref) == label


@pytest.mark.parametrize(
    ("text", "gr"),
    [
        ("secrets", ("", "secrets")),
        ("deployments.apps", ("apps", "deployments")),
        ("pandas.awesome.bears.example", ("awesome.bears.example", "pandas")),
        ("*.", ("", "*")),
        ("*.apps", ("apps", "*")),
        ("*.*", ("*", "*")),
    ],
)
def test_parse_group_resource_round_trips_labels(text: str, gr: tuple[str, str]) -> None:
    assert parse_group_resource(text) == gr
    if "*" not in text:
        assert resource_label(gr) == text


def test_label_of_parsed_key_matches_config_selector() -> None:
    # --resource filtering compares labels; they must equal the config's selector spelling.
    for key, selector in [
        (b"/registry/deployments/ns/d", "deployments.apps"),
        (b"/registry/ingress/ns/i", "ingresses.networking.k8s.io"),
        (b"/registry/minions/n", "nodes"),
        (b"/registry/services/specs/ns/s", "services"),
    ]:
        ref = parse_etcd_key(key)
        assert ref is not None
        assert resource_label(ref) == selector
        assert parse_group_resource(selector) == (ref.group, ref.resource)


def test_table_prefixes_all_parse() -> None:
    # Every table entry must be reachable: a namespaced and a cluster-scoped key parse to it.
    for prefix, (group, resource) in BUILTIN_PREFIXES.items():
        ns = parse_etcd_key(f"/registry/{prefix}/ns/obj".encode())
        cl = parse_etcd_key(f"/registry/{prefix}/obj".encode())
        assert ns == ResourceRef(group, resource, "ns", "obj"), prefix
        assert cl == ResourceRef(group, resource, None, "obj"), prefix


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_fixture_manifest_keys(case: str) -> None:
    """Every etcd key a fixture manifest lists maps back to the object it records."""
    manifest = load_manifest(case)
    objects = {o["etcd_key"]: o for o in manifest["objects"]}
    assert objects
    for key, obj in objects.items():
        ref = parse_etcd_key(key.encode())
        assert ref is not None, key
        assert ref.group == ""
        assert ref.resource == {"Secret": "secrets", "ConfigMap": "configmaps"}[obj["kind"]]
        assert (ref.namespace, ref.name) == (obj["namespace"], obj["name"])
    for item in manifest["etcd_inventory_secrets_configmaps"]:
        ref = parse_etcd_key(item["etcd_key"].encode())
        assert ref is not None and ref.resource in ("secrets", "configmaps")
        assert ref.namespace is not None
