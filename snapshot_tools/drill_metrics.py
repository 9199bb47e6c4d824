"""The drill's results as a Prometheus textfile, for node_exporter's textfile collector.

Every series is labelled by ``snapshot`` (the path or URL given), so one file can carry a
whole bucket's drill and an alert can name the snapshot. A stage that was skipped has no
``stage_success`` series (it neither passed nor failed); objects per verdict come from the
check stage when it ran.

References: prometheus_client ``generate_latest``; node_exporter's textfile collector README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from snapshot_tools.verdict import VERDICTS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from snapshot_tools.drill import DrillResult

__all__ = ["PREFIX", "metrics_text"]

PREFIX = "k8s_at_rest_drill"


def metrics_text(results: Sequence[DrillResult], now: float) -> bytes:
    """The text exposition of ``results``; ``now`` is the run's Unix time."""
    registry = CollectorRegistry(auto_describe=False)
    success = Gauge(f"{PREFIX}_success", "1 when every stage of the snapshot's drill passed, else 0.",
                    ["snapshot"], registry=registry)  # fmt: skip
    stage = Gauge(f"{PREFIX}_stage_success", "1 when the stage passed, 0 when it failed (skipped: absent).",
                  ["snapshot", "stage"], registry=registry)  # fmt: skip
    objects = Gauge(f"{PREFIX}_objects", "Objects per check verdict.", ["snapshot", "verdict"], registry=registry)
    duration = Gauge(f"{PREFIX}_duration_seconds", "Wall time of the snapshot's drill.", ["snapshot"],
                     registry=registry)  # fmt: skip
    last_run = Gauge(f"{PREFIX}_last_run_timestamp_seconds", "When the drill ran (Unix time).", ["snapshot"],
                     registry=registry)  # fmt: skip
    for result in results:
        snap = result.snapshot
        success.labels(snap).set(1 if result.passed else 0)
        for s in result.stages:
            if s.status != "skipped":
                stage.labels(snap, s.name).set(1 if s.status == "passed" else 0)
        if result.report is not None:
            counts = result.report.counts
            for verdict in VERDICTS:
                objects.labels(snap, verdict).set(counts.get(verdict, 0))
        duration.labels(snap).set(result.fetch_seconds + result.seconds)
        last_run.labels(snap).set(now)
    return generate_latest(registry)
