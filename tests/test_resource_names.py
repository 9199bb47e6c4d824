"""The one resolver for resource names as users type them (issue 11 items 1 and 4): built-in
resources and ``plural.group`` custom resources pass, anything no object is stored under does not,
with a did-you-mean."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from snapshot_tools.errors import UsageError
from snapshot_tools.resources import resolve_resource, resource_suggestion, unknown_resource_names
from tests.support.config_text import load_text

if TYPE_CHECKING:
    from pathlib import Path


def test_resolver_accepts_builtins_and_custom_resources() -> None:
    assert resolve_resource("secrets") == "secrets"
    assert resolve_resource("deployments.apps") == "deployments.apps"
    assert resolve_resource("widgets.example.com") == "widgets.example.com"
    with pytest.raises(UsageError, match=r"did you mean deployments\.apps"):
        resolve_resource("deployment.apps")  # a built-in group has no such resource
    with pytest.raises(UsageError, match=r"did you mean widgets\.example\.com"):
        resolve_resource("widgetz", known=["widgets.example.com"])


def test_unknown_names_are_flagged() -> None:
    names = ["secrets", "secret", "*.", "*.*", "*.apps", "widgets.example.com", "deployment.apps", "configmaps"]
    assert unknown_resource_names(names) == ["secret", "deployment.apps"]


def test_suggestions() -> None:
    assert resource_suggestion("secret") == "; did you mean secrets?"
    assert resource_suggestion("Secrets") == "; did you mean secrets?"
    assert "deployments.apps" in resource_suggestion("deployments")
    assert resource_suggestion("zzzzzz") == ""
    # a config's names are suggested only when they name something: not its own typos
    assert resource_suggestion("secrt", ["secret", "*.", "widgets.example.com"]) == "; did you mean secrets?"


def test_a_rule_naming_only_unknown_resources_has_no_active_key(tmp_path: Path) -> None:
    text = """apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secret]
  providers:
  - aescbc: {keys: [{name: k1, secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=}]}
- resources: [configmaps, bogus]
  providers:
  - aescbc: {keys: [{name: k2, secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=}]}
"""
    keyset = load_text(tmp_path, text)
    assert [name for _, name in keyset.unknown_resources()] == ["secret", "bogus"]
    assert {name for _, name, _ in keyset.active_identities()} == {"k2"}
