"""Prometheus metrics of the plugin, in a registry per server (tests run several in one process).

Only hashed key_ids, KEK ids and counts appear here; never key material or plaintext.

Where a metric describes what kube-apiserver's envelope metrics describe, it has their name
(``apiserver_envelope_encryption_<name>`` -> ``kms_plugin_<name>``), label names and label values,
so dashboards can put the two sides next to each other:

* ``kms_plugin_kms_operations_latency_seconds{method_name, grpc_status_code}``: the apiserver's
  ``kms_operations_latency_seconds`` seen from the plugin (same buckets, same full gRPC method
  name such as ``/v2.KeyManagementService/Encrypt``; no ``provider_name``, which only the
  apiserver knows). The difference between the two is the socket and queueing.
* ``kms_plugin_key_id_hash_total{transformation_type, key_id_hash}`` and
  ``kms_plugin_key_id_hash_last_timestamp_seconds``: uses of a key_id by answered calls, Encrypt as
  ``to_storage`` and Decrypt as ``from_storage``. The apiserver counts objects, the plugin counts
  DEK-seed calls; the ``key_id_hash`` values (``sha256:<hex>``) are identical.
* ``kms_plugin_key_id_hash_status_last_timestamp_seconds{key_id_hash}``: the last time Status
  answered with a key_id.

The key_id label sets are capped like the apiserver's (an LRU of :data:`KEY_ID_LABEL_SETS`; the
evicted one's series are removed). The older ``kms_plugin_operations_total``,
``kms_plugin_errors_total`` and ``kms_plugin_operation_duration_seconds`` stay: they predate these,
the README and tests name them, and alerts may use them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kms_plugin import __version__
from kms_plugin.logs import key_id_hash

if TYPE_CHECKING:
    from kms_plugin.keks.local import Keyring

# Calls take tens of microseconds to a few milliseconds over a unix socket.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
)

# kube-apiserver's kms_operations_latency_seconds buckets: 0.1 ms doubling, 20 of them (~52 s).
APISERVER_LATENCY_BUCKETS = tuple(0.0001 * 2**i for i in range(20))
KEY_ID_LABEL_SETS = 10  # the apiserver's cacheSize for its key_id_hash label sets
TRANSFORMATION = {"Encrypt": "to_storage", "Decrypt": "from_storage"}


class PluginMetrics:
    """All the plugin's metrics; ``observe`` is on the request path, so it is kept small."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.operations = Counter(
            "kms_plugin_operations_total",
            "KMS gRPC calls by API, method and gRPC status code.",
            ["api", "method", "code"],
            registry=r,
        )
        self.errors = Counter(
            "kms_plugin_errors_total",
            "KMS gRPC calls that ended with a status other than OK.",
            ["api", "method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "kms_plugin_operation_duration_seconds",
            "Server-side duration of KMS gRPC calls.",
            ["api", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.key_id_info = Gauge(
            "kms_plugin_key_id_info",
            "The key_id (a hash of the active KEK identity) Status reports; value 1.",
            ["key_id", "kek_id"],
            registry=r,
        )
        self.reloads = Counter(
            "kms_plugin_keyring_reloads_total",
            "Keyring file re-reads after a change, by result.",
            ["result"],
            registry=r,
        )
        self.kek_age = Gauge(
            "kms_plugin_active_kek_age_seconds",
            "Age of the active KEK, from its creation time.",
            registry=r,
        )
        self.keks = Gauge(
            "kms_plugin_keyring_keks", "KEKs in the keyring by state.", ["state"], registry=r
        )
        self.remote_calls = Counter(
            "kms_plugin_remote_calls_total",
            "Calls to the key backend outside the process (AWS KMS, a PKCS#11 token) by operation and outcome; "
            "probes included.",
            ["operation", "outcome"],
            registry=r,
        )
        self.healthy = Gauge(
            "kms_plugin_healthy", "1 when Status reports healthz ok, else 0.", registry=r
        )
        self.build_info = Gauge(
            "kms_plugin_build_info", "The plugin's package version (label); value 1.", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
        self.kms_latency = Histogram(
            "kms_plugin_kms_operations_latency_seconds",
            "KMS operation duration with gRPC error code status total (apiserver's name, plugin side).",
            ["method_name", "grpc_status_code"],
            buckets=APISERVER_LATENCY_BUCKETS,
            registry=r,
        )
        self.key_id_hash_total = Counter(
            "kms_plugin_key_id_hash_total",
            "Number of times a keyID is used split by transformation type (Encrypt: to_storage, "
            "Decrypt: from_storage).",
            ["transformation_type", "key_id_hash"],
            registry=r,
        )
        self.key_id_hash_last = Gauge(
            "kms_plugin_key_id_hash_last_timestamp_seconds",
            "The last time in seconds when a keyID was used.",
            ["transformation_type", "key_id_hash"],
            registry=r,
        )
        self.key_id_hash_status_last = Gauge(
            "kms_plugin_key_id_hash_status_last_timestamp_seconds",
            "The last time in seconds when a keyID was returned by the Status RPC call.",
            ["key_id_hash"],
            registry=r,
        )
        # (kind, key_id) -> its (counter, gauge) children, least recently used first.
        self._key_id_labels: OrderedDict[tuple[str, str], tuple[Counter | None, Gauge]] = OrderedDict()
        self._key_id_lock = threading.Lock()
        self._latency_children: dict[tuple[str, str, str], Histogram] = {}
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram, Counter | None]] = {}
        self._active_created = time.time()
        self.kek_age.set_function(lambda: time.time() - self._active_created)
        self._info_labels: tuple[str, str] | None = None

    def observe(self, api: str, method: str, code: str, seconds: float, key_id: str = "") -> None:
        """One finished call; ``key_id`` only for an answered one (see the module docstring)."""
        key = (api, method, code)
        children = self._children.get(key)
        if children is None:
            err = self.errors.labels(api, method, code) if code != "OK" else None
            children = (self.operations.labels(api, method, code), self.latency.labels(api, method), err)
            self._children[key] = children
            self._latency_children[key] = self.kms_latency.labels(f"/{api}.KeyManagementService/{method}", code)
        ops, hist, err = children
        ops.inc()
        hist.observe(seconds)
        self._latency_children[key].observe(seconds)
        if err is not None:
            err.inc()
        if key_id:
            self._key_id_used(method, key_id)

    def _key_id_used(self, method: str, key_id: str) -> None:
        kind = TRANSFORMATION.get(method, "status" if method == "Status" else "")
        if not kind:
            return
        labels = (kind, key_id)
        now = time.time()
        with self._key_id_lock:  # the LRU and its series change together
            children = self._key_id_labels.get(labels)
            if children is not None:
                self._key_id_labels.move_to_end(labels)
            else:
                hashed = key_id_hash(key_id)
                if kind == "status":
                    children = (None, self.key_id_hash_status_last.labels(hashed))
                else:
                    children = (self.key_id_hash_total.labels(kind, hashed), self.key_id_hash_last.labels(kind, hashed))
                self._key_id_labels[labels] = children
                if len(self._key_id_labels) > KEY_ID_LABEL_SETS * 3:  # Status, Encrypt, Decrypt
                    old_kind, old_key_id = self._key_id_labels.popitem(last=False)[0]
                    self._forget(old_kind, key_id_hash(old_key_id))
            total, last = children
            if total is not None:
                total.inc()
            last.set(now)

    def _forget(self, kind: str, hashed: str) -> None:
        try:
            if kind == "status":
                self.key_id_hash_status_last.remove(hashed)
            else:
                self.key_id_hash_total.remove(kind, hashed)
                self.key_id_hash_last.remove(kind, hashed)
        except KeyError:
            pass

    def remote_call(self, operation: str, outcome: str) -> None:
        self.remote_calls.labels(operation, outcome).inc()

    def set_key_id(self, key_id: str, kek_id: str) -> None:
        """Point ``kms_plugin_key_id_info`` at the current key_id (a remote key: kek_id ``aws``)."""
        labels = (key_id, kek_id)
        if labels != self._info_labels:
            if self._info_labels is not None:
                self.key_id_info.remove(*self._info_labels)
            self.key_id_info.labels(*labels).set(1)
            self._info_labels = labels

    def set_keyring(self, keyring: Keyring) -> None:
        self.set_key_id(keyring.active_key_id, keyring.active.id)
        self._active_created = keyring.active.created.timestamp()
        for state in ("active", "decrypt-only"):
            self.keks.labels(state).set(sum(1 for k in keyring.keks if k.state == state))
