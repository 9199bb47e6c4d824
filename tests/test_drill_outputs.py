"""The drill's report writers on results built by hand: JUnit XML and the Prometheus textfile stay
valid whatever a snapshot name or message holds (quotes, newlines, control characters), a skipped
stage is ``skipped`` in JUnit and absent from ``stage_success``, and the worst exit code follows
check's order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from snapshot_tools.drill import DrillResult, StageResult, worst
from snapshot_tools.drill_junit import junit_xml
from snapshot_tools.drill_metrics import metrics_text
from tests.support.drill import parse_junit

if TYPE_CHECKING:
    from pathlib import Path

ODD = 's3://b/we"ird\\name\n\x01-1700000000.zip'


def _results() -> list[DrillResult]:
    bad = DrillResult(
        ODD,
        [
            StageResult("integrity", "passed", 0.5),
            StageResult("check", "failed", 0.25, message="2 unreadable <&> \x07 (--fail-on unreadable)", exit_code=1),
            StageResult("restore", "skipped", message="check failed"),
        ],
        seconds=0.75,
    )
    good = DrillResult("/snap/ok.db", [StageResult(n, "passed", 1.0) for n in ("integrity", "check", "restore")])
    return [bad, good]


def test_junit_is_valid_xml_with_odd_text(tmp_path: Path) -> None:
    path = tmp_path / "j.xml"
    path.write_bytes(junit_xml(_results()))
    root = parse_junit(path)
    assert root.get("tests") == "6" and root.get("failures") == "1" and root.get("skipped") == "1"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [ODD.replace("\x01", "\ufffd"), "/snap/ok.db"]
    failure = suites[0].find("testcase[@name='check']/failure")
    assert failure is not None and str(failure.get("message")).startswith("2 unreadable <&> \ufffd")
    skipped = suites[0].find("testcase[@name='restore']/skipped")
    assert skipped is not None and skipped.get("message") == "check failed"
    assert suites[1].find("testcase/failure") is None


def test_textfile_parses_with_odd_labels() -> None:
    text = metrics_text(_results(), now=1_800_000_000.0).decode()
    samples = [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]
    stages = {(lab["snapshot"], lab["stage"]): v for n, lab, v in samples if n == "k8s_at_rest_drill_stage_success"}
    assert stages == {
        (ODD, "integrity"): 1, (ODD, "check"): 0,
        ("/snap/ok.db", "integrity"): 1, ("/snap/ok.db", "check"): 1, ("/snap/ok.db", "restore"): 1,
    }  # fmt: skip
    success = {lab["snapshot"]: v for n, lab, v in samples if n == "k8s_at_rest_drill_success"}
    assert success == {ODD: 0, "/snap/ok.db": 1}
    assert {v for n, _, v in samples if n == "k8s_at_rest_drill_last_run_timestamp_seconds"} == {1_800_000_000}
    assert not [n for n, _, _ in samples if n == "k8s_at_rest_drill_objects"]  # no check report here


def test_worst_follows_checks_order() -> None:
    assert worst([]) == 0
    assert worst([0, 1, 0]) == 1
    assert worst([1, 4]) == 4
    assert worst([4, 3, 1]) == 3
    assert worst([3, 2]) == 2
