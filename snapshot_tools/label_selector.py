"""Label selectors as ``kubectl -l`` reads them: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
``k notin (a,b)``, ``k``, ``!k``; a comma between requirements means AND.

As in Kubernetes, ``!=`` and ``notin`` also match objects without the label, and an empty selector
matches everything. Keys and values are validated as label keys and values, so a typo such as
``app=(web`` is a usage error rather than a filter that silently selects nothing.

Reference: ``k8s.io/apimachinery/pkg/labels/selector.go`` (``Parse``, ``Requirement.Matches``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from snapshot_tools.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Requirement", "Selector", "parse_selector"]

_NAME = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_KEY = re.compile(rf"(?:(?P<prefix>{_DNS_LABEL}(?:\.{_DNS_LABEL})*)/)?{_NAME}")
_VALUE = re.compile(rf"(?:{_NAME})?")
_SET = re.compile(r"(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)")
_EQUALITY = re.compile(r"(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)")
_EXISTS = re.compile(r"(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One requirement: ``key`` with ``op`` one of ``in``, ``notin``, ``exists``, ``!``."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!":
            return self.key not in labels
        if self.op == "in":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # notin, !=


@dataclass(frozen=True, slots=True)
class Selector:
    """Requirements that must all hold."""

    text: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels if isinstance(labels, dict) else {}
        return all(r.matches(labels) for r in self.requirements)


def _split(text: str) -> list[str]:
    """The requirements of ``text``: split at commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
            if depth > 1:
                raise UsageError(f"invalid --selector {text!r}: nested parentheses")
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise UsageError(f"invalid --selector {text!r}: unbalanced ')'")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise UsageError(f"invalid --selector {text!r}: unbalanced '('")
    parts.append(text[start:])
    return parts


def _key(key: str, text: str) -> str:
    m = _KEY.fullmatch(key)  # the name part is at most 63 characters by the pattern
    if m is None or len(m.group("prefix") or "") > 253:
        raise UsageError(f"invalid --selector {text!r}: {key!r} is not a valid label key")
    return key


def _value(value: str, text: str) -> str:
    if len(value) > 63 or _VALUE.fullmatch(value) is None:
        raise UsageError(f"invalid --selector {text!r}: {value!r} is not a valid label value")
    return value


def _requirement(part: str, text: str) -> Requirement:
    part = part.strip()
    if m := _SET.fullmatch(part):
        values = [v.strip() for v in m.group("values").split(",")]
        if values == [""]:
            raise UsageError(f"invalid --selector {text!r}: {m.group('op')} needs at least one value")
        return Requirement(_key(m.group("key"), text), m.group("op"), frozenset(_value(v, text) for v in values))
    if m := _EQUALITY.fullmatch(part):
        op = "notin" if m.group("op") == "!=" else "in"
        return Requirement(_key(m.group("key"), text), op, frozenset({_value(m.group("value"), text)}))
    if m := _EXISTS.fullmatch(part):
        return Requirement(_key(m.group("key"), text), "!" if m.group("neg") else "exists")
    raise UsageError(
        f"invalid --selector {text!r}: cannot read {part!r} "
        "(expected k=v, k==v, k!=v, 'k in (a,b)', 'k notin (a,b)', k or !k, joined by commas)"
    )


def parse_selector(text: str) -> Selector:
    """A selector from its ``kubectl -l`` text.

    Raises:
        UsageError: malformed text (bad key or value, unbalanced parentheses, empty requirement).
    """
    if not text.strip():
        return Selector(text, ())
    parts = _split(text)
    if any(not p.strip() for p in parts):
        raise UsageError(f"invalid --selector {text!r}: an empty requirement (stray comma)")
    return Selector(text, tuple(_requirement(p, text) for p in parts))
