"""Every third-party module the product code imports comes from a declared runtime dependency.

The test extras pull in more (click via flask for moto, ...), so an undeclared import can pass
the suite and still break `pip install .` - the README's first command.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions

from packaging.requirements import Requirement

from tests.support.fixtures import ROOT


def _imported_top_levels() -> set[str]:
    names: set[str] = set()
    for package in ("snapshot_tools", "kms_plugin"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - {"snapshot_tools", "kms_plugin"} - set(sys.stdlib_module_names) - {"__future__"}


def test_runtime_imports_are_declared_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name.lower().replace("_", "-") for r in project["dependencies"]}
    owners = packages_distributions()
    undeclared = {}
    for module in sorted(_imported_top_levels()):
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [])}
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert not undeclared, f"imported but not declared in [project].dependencies: {undeclared}"
