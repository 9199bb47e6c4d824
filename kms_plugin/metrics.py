"""Prometheus metrics of the plugin, in a registry per server (tests run several in one process).

Only hashed key_ids, KEK ids and counts appear here; never key material or plaintext.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kms_plugin import __version__

if TYPE_CHECKING:
    from kms_plugin.keks.local import Keyring

# Calls take tens of microseconds to a few milliseconds over a unix socket.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
)


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
            "Calls to a remote KMS (AWS) by operation and outcome; probes included.",
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
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram, Counter | None]] = {}
        self._active_created = time.time()
        self.kek_age.set_function(lambda: time.time() - self._active_created)
        self._info_labels: tuple[str, str] | None = None

    def observe(self, api: str, method: str, code: str, seconds: float) -> None:
        key = (api, method, code)
        children = self._children.get(key)
        if children is None:
            err = self.errors.labels(api, method, code) if code != "OK" else None
            children = (self.operations.labels(api, method, code), self.latency.labels(api, method), err)
            self._children[key] = children
        ops, hist, err = children
        ops.inc()
        hist.observe(seconds)
        if err is not None:
            err.inc()

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
