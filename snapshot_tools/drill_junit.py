"""The drill's results as JUnit XML: one ``testsuite`` per snapshot, one ``testcase`` per stage.

The shape CI systems render (Jenkins, GitLab, GitHub actions' reporters): a failed stage is a
``failure`` with its message, a skipped one ``skipped`` with why. Built with ``xml.etree`` so any
text (etcd keys, paths) is escaped; characters XML 1.0 cannot hold are replaced first.

References: the JUnit XML schema as Jenkins and pytest (``--junitxml``) write it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from snapshot_tools.drill import DrillResult

__all__ = ["junit_xml"]

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: object) -> str:
    return _NOT_XML.sub("\ufffd", str(value))


def junit_xml(results: Sequence[DrillResult]) -> bytes:
    """The whole document, UTF-8 with an XML declaration."""
    root = ET.Element("testsuites", name="snapshot-tools drill")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for result in results:
        failures = sum(s.status == "failed" for s in result.stages)
        skipped = sum(s.status == "skipped" for s in result.stages)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=_text(result.snapshot),
            tests=str(len(result.stages)),
            failures=str(failures),
            errors="0",
            skipped=str(skipped),
            time=f"{result.seconds:.3f}",
        )
        for stage in result.stages:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=_text(f"drill.{result.snapshot}"),
                name=stage.name,
                time=f"{stage.seconds:.3f}",
            )
            if stage.status == "failed":
                failure = ET.SubElement(case, "failure", message=_text(stage.message or "failed"))
                failure.text = _text(stage.message or "failed")
            elif stage.status == "skipped":
                ET.SubElement(case, "skipped", message=_text(stage.message or "skipped"))
        totals["tests"] += len(result.stages)
        totals["failures"] += failures
        totals["skipped"] += skipped
    for name, value in totals.items():
        root.set(name, str(value))
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"
