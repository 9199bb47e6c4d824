"""Read one encryption config file and validate it the way kube-apiserver would.

Accepted documents (YAML or JSON, one document per file):

* ``apiVersion: apiserver.config.k8s.io/v1``, ``kind: EncryptionConfiguration``;
* the legacy alias ``apiVersion: v1``, ``kind: EncryptionConfig`` (still registered upstream
  "due to a docs bug"; older RKE writes it);
* K3s/RKE2 ``server/cred/encryption-config.json`` is a plain EncryptionConfiguration (compact
  JSON), so it needs nothing special;
* RKE's ``cluster.rkestate`` (JSON ``FullState``). RKE keeps the provider file it deployed to
  ``/etc/kubernetes/ssl/encryption.yaml`` as a YAML *string* in
  ``currentState.encryptionConfig`` (and the planned one in ``desiredState.encryptionConfig``;
  they differ during a key rotation, which commits currentState first). Each non-empty, distinct
  string becomes one config: currentState first, then desiredState. When a state has no such
  string but ``rkeConfig.services.kubeApi.secretsEncryptionConfig`` is enabled with a
  ``customConfig`` object, that object is used instead (RKE renders it into the same file).

Decoding is strict like ``loadConfig`` (``serializer.EnableStrict``): unknown and duplicate
fields are errors, and so is a value of the wrong type. Validation then follows
``ValidateEncryptionConfiguration`` and the masking check of
``getTransformerOverridesAndKMSPluginProbes``; reasons use upstream's wording. Every problem
becomes a :class:`~snapshot_tools.errors.ConfigError` naming the file, the field position
(``resources[0].providers[1].aescbc.keys[0].secret``), the YAML line when known, and the reason.
Key material is never echoed, nor is any other file content: YAML and JSON errors give line,
column and a fixed reason, and an unknown field is named only when its name is a plain identifier.
Not modelled: the ``KMSv1`` feature gate and the v1 name-uniqueness rule that applies only with
automatic reload.

Hostile files are bounded (issue 9): only regular files are read (a FIFO or a device is refused
without blocking), at most :data:`MAX_CONFIG_BYTES` (:data:`MAX_STATE_BYTES` for ``.rkestate``),
no control characters, nesting at most :data:`MAX_DEPTH` deep, and no YAML anchors or aliases
(real configs never use them, and refusing them rules out alias bombs). Every check is linear
in the file size. JSON goes through the same bounds.

References: ``staging/src/k8s.io/apiserver/pkg/apis/apiserver/v1/{types_encryption,defaults,
register}.go``, ``.../apiserver/validation/validation_encryption.go``,
``.../server/options/encryptionconfig/config.go`` (``loadConfig``,
``getTransformerOverridesAndKMSPluginProbes``, ``transformerFromOverrides``); rancher/rke
``cluster/state.go`` (``FullState``/``State.EncryptionConfig``), ``cluster/encryption.go``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from snapshot_tools.config_model import (
    EncryptionConfig,
    KMSProvider,
    ProviderEntry,
    Rule,
    StaticKey,
)
from snapshot_tools.errors import ConfigError
from snapshot_tools.providers import STATIC_NAMES, static_provider
from snapshot_tools.resources import parse_group_resource

__all__ = [
    "ConfigFileError",
    "EncryptionConfig",
    "KMSProvider",
    "ProviderEntry",
    "Rule",
    "StaticKey",
    "config_error",
    "load_config_file",
    "parse_config_text",
    "parse_duration",
]

PROVIDER_KINDS = ("identity", *STATIC_NAMES, "kms")
TYPE_METAS = {
    ("apiserver.config.k8s.io/v1", "EncryptionConfiguration"),
    ("v1", "EncryptionConfig"),  # legacy alias, v1/register.go
}
DEFAULT_KMS_TIMEOUT_S = 3.0
DEFAULT_KMS_CACHESIZE = 1000
# Real configs are a few KB (one key is ~100 bytes); 1 MiB still holds ~10,000 keys or
# ~70,000 selectors, and bounds a load to ~2 s with libyaml (~5 s with pure-Python PyYAML).
MAX_CONFIG_BYTES = 1024 * 1024
# An RKE cluster.rkestate also carries every certificate and private key of the cluster.
MAX_STATE_BYTES = 16 * 1024 * 1024
# Collections inside collections. A config needs 8 (root .. keys[0]), a config inside an RKE
# state 14; nothing legitimate comes near 64, and recursive code stays far from its limits.
MAX_DEPTH = 64

# Upstream reason texts (validation_encryption.go).
_MORE_THAN_ONE = (
    "more than one provider specified in a single element, "
    "should split into different list elements"
)
_NO_PROVIDER = (
    "provider does not contain any of the expected providers: "
    "KMS, AESGCM, AESCBC, Secretbox, Identity"
)
_BASE64 = "secrets must be base64 encoded"
_EVENTS = (
    "'*.events.k8s.io' objects are stored using the 'events' API group in etcd. "
    "Use 'events' instead in the config file"
)
_EXTENSIONS = "'extensions' group has been removed and cannot be used for encryption"
_STAR = "use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources"
_OVERLAP = (
    "using overlapping resources such as 'secrets' and '*.' in the same resource list "
    "is not allowed as they will be masked"
)
_NON_REST = "resources which do not have REST API/s cannot be encrypted"
_CAPITAL = "resource name should not contain capital letters"
_ACROSS = "encrypting the same resource across groups is not supported"
_DUPLICATE = "the same resource cannot be specified multiple times"

_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0
}
# Unknown field names are echoed only when they look like field names: a long or base64-ish
# name might be key material that slipped into the wrong place, and anything else might hold
# escape sequences. Every real field name is at most 10 characters.
_SAFE_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,19}")
# What YAML forbids anywhere in a stream (PyYAML ``Reader.NON_PRINTABLE``); JSON text is held
# to the same rule, as the apiserver reads JSON through its YAML decoder too.
_NON_PRINTABLE = re.compile(
    "[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]"
)
_SURROGATE = re.compile("[\uD800-\uDFFF]")  # from \ud800-style escapes; not valid Unicode
# Parser problems that are fixed texts (libyaml's, and PyYAML's where it quotes nothing). Any
# other problem text may quote file content ("found character '@'..."), so it is not shown.
_YAML_PROBLEMS = frozenset({
    "block sequence entries are not allowed in this context",
    "could not find expected ':'",
    "did not find expected ',' or ']'",
    "did not find expected ',' or '}'",
    "did not find expected '-' indicator",
    "did not find expected <document start>",
    "did not find expected alphabetic or numeric character",
    "did not find expected comment or line break",
    "did not find expected hexdecimal number",
    "did not find expected key",
    "did not find expected node content",
    "exceeded maximum nesting depth",
    "found a tab character that violates indentation",
    "found character that cannot start any token",
    "found duplicate %TAG directive",
    "found duplicate %YAML directive",
    "found invalid Unicode character escape code",
    "found undefined tag handle",
    "found unexpected end of stream",
    "found unhashable key",
    "found unknown directive name",
    "found unknown escape character",
    "mapping values are not allowed here",
    "mapping values are not allowed in this context",
})
_ANCHORS = "YAML anchors and aliases are not supported in an encryption config"
_TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"

Path_ = tuple[Any, ...]  # a field position: ("resources", 0, "providers", 1, "aescbc")


# --------------------------------------------------------------------------------------------
# errors


def _safe_part(part: object) -> bool:
    return isinstance(part, int) or (isinstance(part, str) and bool(_SAFE_FIELD.fullmatch(part)))


def _fmt_path(path: Path_) -> str:
    """``resources[0].providers[1]``; a name that is not a plain identifier shows as ``<field>``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + (part if _safe_part(part) else "<field>")
    return out


def _printable(text: str) -> str:
    """``text`` with control characters escaped, so a message stays on one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class ConfigFileError(ConfigError):
    """A ConfigError that knows where: ``file``, field ``position``, ``line`` and ``reason``."""

    def __init__(
        self, file: str, position: str | None, reason: str, line: int | None = None, more: int = 0
    ) -> None:
        self.file = file
        self.position = position
        self.line = line
        self.reason = reason
        where = f"{_printable(file)}: "
        if position:
            where += position + (f" (line {line})" if line else "") + ": "
        elif line:
            where += f"line {line}: "
        tail = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
        super().__init__(f"{where}{reason}{tail}")


def config_error(
    source: str, position: str | None, reason: str, line: int | None = None, more: int = 0
) -> ConfigFileError:
    """``source: position (line N): reason`` (``more`` counts further problems found)."""
    return ConfigFileError(source, position, reason, line, more)


class _Problems:
    """Collects (position, line, reason) while walking one document."""

    def __init__(self, source: str, lines: dict[Path_, int]) -> None:
        self.source = source
        self.lines = lines
        self.items: list[tuple[str, int | None, str]] = []

    def add(self, path: Path_, reason: str, shown: Path_ | None = None) -> None:
        """A problem at ``path``, reported at ``shown`` (default ``path``)."""
        line = None
        for n in range(len(path), -1, -1):  # nearest enclosing field that has a line
            line = self.lines.get(tuple(path[:n]))
            if line is not None:
                break
        self.items.append((_fmt_path(path if shown is None else shown), line, reason))

    def raise_if_any(self) -> None:
        if self.items:
            position, line, reason = self.items[0]
            raise config_error(self.source, position, reason, line, len(self.items) - 1)


# --------------------------------------------------------------------------------------------
# text -> data (+ line numbers)


def _line_map(root: yaml.Node) -> tuple[dict[Path_, int], list[tuple[Path_, int]]]:
    """Field position -> 1-based line of its key (or list item), and duplicate keys found."""
    lines: dict[Path_, int] = {(): root.start_mark.line + 1}
    dups: list[tuple[Path_, int]] = []
    stack: list[tuple[Path_, yaml.Node]] = [((), root)]
    while stack:
        path, node = stack.pop()
        if len(path) > 32:  # nothing valid is this deep
            continue
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for knode, vnode in node.value:
                if not isinstance(knode, yaml.ScalarNode):
                    continue
                sub = (*path, knode.value)
                if knode.value in seen:
                    dups.append((sub, knode.start_mark.line + 1))
                seen.add(knode.value)
                lines.setdefault(sub, knode.start_mark.line + 1)
                stack.append((sub, vnode))
        elif isinstance(node, yaml.SequenceNode):
            for i, vnode in enumerate(node.value):
                sub = (*path, i)
                lines.setdefault(sub, vnode.start_mark.line + 1)
                stack.append((sub, vnode))
    return lines, dups


def _load_text(text: str, source: str, json_first: bool) -> tuple[Any, dict[Path_, int]]:
    """Parse one YAML (or JSON) document; never lets a parser quote file content.

    YAML is tried first because it gives line numbers (JSON is YAML); JSON that PyYAML cannot
    read (rare escapes) falls back to the json module. ``json_first`` skips YAML (big files).
    """
    _check_characters(text, source)
    looks_json = text.lstrip().startswith(("{", "["))
    lines: dict[Path_, int] = {}
    if json_first and looks_json:
        data = _load_json(text, source)
    elif len(text) > MAX_CONFIG_BYTES:  # an .rkestate may be bigger, but only as JSON
        raise config_error(source, None, f"too large for YAML ({_limit(MAX_CONFIG_BYTES)})")
    else:
        try:
            data, lines = _load_yaml(text, source)
        except ConfigFileError as exc:
            if not (looks_json and exc.reason.startswith("invalid YAML")):
                raise
            data = _load_json(text, source)
    _check_data(data, source)
    return data, lines


def _where(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of ``text[index]``."""
    start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - start + 1


def _check_characters(text: str, source: str) -> None:
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:
        line, column = _where(text, bad.start())
        reason = f"a control character or other character not allowed (column {column})"
        raise config_error(source, None, reason, line)


def _check_data(data: Any, source: str) -> None:
    """Nesting depth (JSON; YAML is checked while composing) and lone surrogates, iteratively."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, str):
            if _SURROGATE.search(obj):
                reason = "a string holds an invalid \\u escape (a lone surrogate)"
                raise config_error(source, None, reason)
        elif isinstance(obj, (dict, list)):
            if depth >= MAX_DEPTH:
                raise config_error(source, None, _TOO_DEEP)
            items = [*obj.keys(), *obj.values()] if isinstance(obj, dict) else obj
            stack.extend((item, depth + 1) for item in items)


def _load_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # exc.msg is a fixed text ("Expecting ',' delimiter"); exc.doc is not shown.
        reason = f"invalid JSON: {exc.msg} (column {exc.colno})"
        raise config_error(source, None, reason, exc.lineno) from None
    except RecursionError:
        raise config_error(source, None, _TOO_DEEP) from None
    except ValueError:  # an integer beyond int_max_str_digits
        raise config_error(source, None, "invalid JSON: a number is too long") from None


# libyaml's parser when present (10x faster, no recursion); the events are the same.
_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    try:
        loader = _YamlLoader(text)
        try:
            node = _compose(loader, source)
            if node is None:
                raise config_error(source, None, "empty file: expected an EncryptionConfiguration")
            lines, dups = _line_map(node)
            if dups:
                raise _duplicate(source, *dups[0])
            data = _construct(loader, node, source)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(source, exc) from None
    except (yaml.YAMLError, ValueError):  # PyYAML's scanner: chr() of a bad \U escape
        raise config_error(source, None, "invalid YAML: syntax error") from None
    return data, lines


def _construct(loader: Any, node: yaml.Node, source: str) -> Any:
    """Python values of the node tree (``SafeConstructor``: tags, ints, timestamps, ...)."""
    try:
        return loader.construct_document(node)
    except yaml.MarkedYAMLError:
        raise
    except Exception:  # noqa: BLE001 - int()/datetime()/indexing errors escape the constructors
        reason = "invalid YAML: a value cannot be read (a tag that does not fit its value?)"
        raise config_error(source, None, reason) from None


def _yaml_error(source: str, exc: yaml.MarkedYAMLError) -> ConfigFileError:
    """Line, column and a fixed reason; str(exc) would quote the offending line."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem if exc.problem in _YAML_PROBLEMS else None
    if isinstance(exc, yaml.constructor.ConstructorError):
        reason = f"invalid YAML: {problem or 'a value cannot be read'}"
    else:
        reason = f"invalid YAML: {problem or 'syntax error'}"
    if mark is None:
        return config_error(source, None, reason)
    return config_error(source, None, f"{reason} (column {mark.column + 1})", mark.line + 1)


def _duplicate(source: str, path: Path_, line: int) -> ConfigFileError:
    safe = 0
    while safe < len(path) and _safe_part(path[safe]):
        safe += 1
    if safe == len(path):
        return config_error(source, _fmt_path(path), "duplicate field", line)
    return config_error(source, _fmt_path(path[:safe]), "duplicate field (name not shown)", line)


def _compose(loader: Any, source: str) -> yaml.Node | None:
    """The single document's node tree, built from parser events with an explicit stack.

    Replaces PyYAML's recursive ``Composer``: anchors and aliases are refused (so nothing is
    ever expanded) and collections deeper than :data:`MAX_DEPTH` stop the parse.
    """
    loader.get_event()  # StreamStartEvent
    if loader.check_event(yaml.StreamEndEvent):
        return None
    loader.get_event()  # DocumentStartEvent
    root: yaml.Node | None = None
    # Open collections, each with the key node waiting for its value (mappings only).
    open_: list[tuple[yaml.CollectionNode, list[yaml.Node]]] = []
    while not loader.check_event(yaml.DocumentEndEvent):
        event = loader.get_event()
        if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            open_.pop()[0].end_mark = event.end_mark
            continue
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
            reason = f"{_ANCHORS} (column {mark.column + 1})"
            raise config_error(source, None, reason, mark.line + 1)
        node = _node(loader, event)
        if not open_:
            root = node
        elif isinstance(open_[-1][0], yaml.SequenceNode):
            open_[-1][0].value.append(node)
        elif not open_[-1][1]:
            open_[-1][1].append(node)
        else:
            open_[-1][0].value.append((open_[-1][1].pop(), node))
        if isinstance(node, yaml.CollectionNode):
            if len(open_) >= MAX_DEPTH:
                reason = f"{_TOO_DEEP} (column {mark.column + 1})"
                raise config_error(source, None, reason, mark.line + 1)
            open_.append((node, []))
    loader.get_event()  # DocumentEndEvent
    if not loader.check_event(yaml.StreamEndEvent):
        line = loader.peek_event().start_mark.line + 1
        raise config_error(source, None, "expected a single document, found another", line)
    return root


def _node(loader: Any, event: Any) -> yaml.Node:
    """``Composer.compose_*_node`` without the recursion: tag resolution as PyYAML does it."""
    tag = event.tag
    start: Any = event.start_mark  # yaml.Mark, or libyaml's own mark type
    end: Any = event.end_mark
    if isinstance(event, yaml.ScalarEvent):
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        return yaml.ScalarNode(tag, event.value, start, end, event.style)
    if isinstance(event, yaml.SequenceStartEvent):
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.SequenceNode, None, event.implicit)
        return yaml.SequenceNode(tag, [], start, None, event.flow_style)
    if tag is None or tag == "!":
        tag = loader.resolve(yaml.MappingNode, None, event.implicit)
    return yaml.MappingNode(tag, [], start, None, event.flow_style)


# --------------------------------------------------------------------------------------------
# Go-compatible scalars


def parse_duration(text: str) -> float:
    """Go ``time.ParseDuration`` -> seconds (``3s``, ``500ms``, ``1m30s``, ``1.5h``, ``0``).

    Raises ValueError for anything Go rejects (a bare number other than 0, unknown units).
    """
    s = text
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError("empty duration")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def _decode_secret(secret: str) -> bytes | None:
    """Go ``base64.StdEncoding.DecodeString``: padded standard alphabet; CR/LF are skipped."""
    cleaned = secret.replace("\r", "").replace("\n", "")
    if not _B64.fullmatch(cleaned):
        return None
    return base64.b64decode(cleaned)


# --------------------------------------------------------------------------------------------
# document -> EncryptionConfig


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "value of another type"


def _list_or_null(value: Any) -> bool:
    """Empty or missing (a wrong type was already reported as such)."""
    return value is None or isinstance(value, list)


class _Builder:
    """Walks one decoded document, records problems, builds the model when there are none."""

    def __init__(self, source: str, label: str, index: int, lines: dict[Path_, int]) -> None:
        self.p = _Problems(source, lines)
        self.label = label
        self.index = index
        self.kms_names: set[str] = set()

    # -- strict decoding helpers -------------------------------------------------------

    def fields(self, obj: Any, path: Path_, allowed: tuple[str, ...]) -> dict[str, Any] | None:
        if not isinstance(obj, dict):
            self.p.add(path, f"expected an object, got {_type_name(obj)}")
            return None
        for key in obj:
            if key in allowed:
                continue
            if isinstance(key, str) and _SAFE_FIELD.fullmatch(key):
                self.p.add((*path, key), f'unknown field "{key}"')
            else:  # reported at the enclosing object, with the line of the key itself
                self.p.add((*path, str(key)), "an unknown field (name not shown)", path)
        return obj

    def string(self, obj: dict[str, Any], key: str, path: Path_) -> str:
        value = obj.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            self.p.add((*path, key), f"expected a string, got {_type_name(value)}")
            return ""
        return value

    def list_of(self, obj: dict[str, Any], key: str, path: Path_) -> list[Any]:
        value = obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.p.add((*path, key), f"expected a list, got {_type_name(value)}")
            return []
        return value

    # -- the document ------------------------------------------------------------------

    def build(self, doc: Any, require_type_meta: bool) -> EncryptionConfig:
        top = self.fields(doc, (), ("apiVersion", "kind", "resources"))
        if top is None:
            self.p.raise_if_any()
            raise AssertionError("unreachable")
        self._type_meta(top, require_type_meta)
        rules = self._resources(top)
        self.p.raise_if_any()
        self._masking(rules)
        self.p.raise_if_any()
        return EncryptionConfig(path=self.label, index=self.index, rules=tuple(rules))

    def _type_meta(self, top: dict[str, Any], required: bool) -> None:
        api_version = self.string(top, "apiVersion", ())
        kind = self.string(top, "kind", ())
        if not required and not api_version and not kind:
            return
        if not kind:
            self.p.add(("kind",), "kind is required: expected EncryptionConfiguration")
        elif not api_version:
            self.p.add(
                ("apiVersion",), "apiVersion is required: expected apiserver.config.k8s.io/v1"
            )
        elif (api_version, kind) not in TYPE_METAS:
            self.p.add(
                ("kind",),
                "not an encryption config: expected apiVersion apiserver.config.k8s.io/v1 "
                "kind EncryptionConfiguration (or the legacy apiVersion v1 kind EncryptionConfig)",
            )

    def _resources(self, top: dict[str, Any]) -> list[Rule]:
        entries = self.list_of(top, "resources", ())
        if not entries:
            if _list_or_null(top.get("resources")):
                self.p.add(("resources",), "at least one resources is required")
            return []
        rules = []
        for i, entry in enumerate(entries):
            path: Path_ = ("resources", i)
            obj = self.fields(entry, path, ("resources", "providers"))
            if obj is None:
                continue
            rule = self._rule(obj, path)
            if rule is not None:
                rules.append(rule)
        return rules

    def _rule(self, obj: dict[str, Any], path: Path_) -> Rule | None:
        rpath = (*path, "resources")
        names = self.list_of(obj, "resources", path)
        selectors: list[str] = []
        for j, name in enumerate(names):
            if not isinstance(name, str):
                self.p.add((*rpath, j), f"expected a string, got {_type_name(name)}")
            else:
                selectors.append(name)
        if not names and _list_or_null(obj.get("resources")):
            self.p.add(rpath, f"at least one {_fmt_path(rpath)} is required")
        if len(selectors) == len(names):
            self._overlap(selectors, rpath)
            self._selector_names(selectors, rpath)
        ppath = (*path, "providers")
        items = self.list_of(obj, "providers", path)
        if not items and _list_or_null(obj.get("providers")):
            self.p.add(ppath, f"at least one {_fmt_path(ppath)} is required")
        providers = []
        for j, item in enumerate(items):
            entry = self._provider(item, (*ppath, j))
            if entry is not None:
                providers.append(entry)
        if len(selectors) != len(names) or len(providers) != len(items):
            return None
        return Rule(tuple(selectors), tuple(providers), _fmt_path(path))

    # -- resource selectors ------------------------------------------------------------

    def _overlap(self, selectors: list[str], path: Path_) -> None:
        """Duplicates and overlaps within one list, in linear time.

        ``validateResourceOverlap`` compares every pair: equal selectors are duplicates; two
        different ones overlap when one is ``*.*``, or they share a group and one of them is
        that group's ``*``. Per group that is: ``*`` plus any other resource of the group.
        """
        if len(selectors) < 2:
            return
        grs = [parse_group_resource(s) for s in selectors]
        distinct = set(grs)
        by_group: dict[str, set[str]] = {}
        for group, resource in distinct:
            by_group.setdefault(group, set()).add(resource)
        overlap = (("*", "*") in distinct and len(distinct) > 1) or any(
            "*" in resources and len(resources) > 1 for resources in by_group.values()
        )
        if len(distinct) < len(grs):
            self.p.add(path, _DUPLICATE)
        if overlap:
            self.p.add(path, _OVERLAP)

    def _selector_names(self, selectors: list[str], path: Path_) -> None:
        for j, res in enumerate(selectors):
            group, resource = parse_group_resource(res)
            reason = None
            if res.lower() != res:
                reason = _CAPITAL
            elif res == "*":
                reason = _STAR
            elif res in ("apiserveripinfo", "serviceipallocations", "servicenodeportallocations"):
                reason = _NON_REST
            elif group == "events.k8s.io":
                reason = _EVENTS
            elif group == "extensions":
                reason = _EXTENSIONS
            elif group == "*" and resource != "*":
                reason = _ACROSS
            if reason:
                self.p.add((*path, j), reason)

    def _masking(self, rules: list[Rule]) -> None:
        # getTransformerOverridesAndKMSPluginProbes: a later selector may not fall under an
        # earlier `<group>.*` or `*.*` rule (exact duplicates are appended, not errors).
        seen: set[tuple[str, str]] = set()
        for i, rule in enumerate(rules):
            for j, gr in enumerate(rule.group_resources):
                for mask in ((gr[0], "*"), ("*", "*")):
                    if mask in seen:
                        shown, earlier = _gr_yaml(gr), _gr_yaml(mask)
                        reason = f'resource "{shown}" is masked by earlier rule "{earlier}"'
                        self.p.add(("resources", i, "resources", j), reason)
                        return
                seen.add(gr)

    # -- providers ---------------------------------------------------------------------

    def _provider(self, item: Any, path: Path_) -> ProviderEntry | None:
        obj = self.fields(item, path, PROVIDER_KINDS)
        if obj is None:
            return None
        present = [k for k in PROVIDER_KINDS if obj.get(k) is not None]
        if not present:
            self.p.add(path, _NO_PROVIDER)
            return None
        if len(present) > 1:
            self.p.add(path, _MORE_THAN_ONE)
            return None
        kind = present[0]
        sub = (*path, kind)
        body = obj[kind]
        position = _fmt_path(sub)
        if kind == "identity":
            if self.fields(body, sub, ()) is None:
                return None
            return ProviderEntry("identity", position=position)
        if kind == "kms":
            kms = self._kms(body, sub)
            return ProviderEntry("kms", kms=kms, position=position) if kms else None
        keys = self._keys(kind, body, sub)
        return ProviderEntry(kind, keys=keys, position=position) if keys else None

    def _keys(self, kind: str, body: Any, path: Path_) -> tuple[StaticKey, ...]:
        obj = self.fields(body, path, ("keys",))
        if obj is None:
            return ()
        kpath = (*path, "keys")
        items = self.list_of(obj, "keys", path)
        if not items:
            if _list_or_null(obj.get("keys")):
                self.p.add(kpath, "at least one keys is required")
            return ()
        keys = []
        ok = True
        for i, item in enumerate(items):
            key = self._key(kind, item, (*kpath, i))
            if key is None:
                ok = False
            else:
                keys.append(key)
        return tuple(keys) if ok else ()

    def _key(self, kind: str, item: Any, path: Path_) -> StaticKey | None:
        obj = self.fields(item, path, ("name", "secret"))
        if obj is None:
            return None
        before = len(self.p.items)
        name = self.string(obj, "name", path)
        secret_text = self.string(obj, "secret", path)
        if len(self.p.items) != before:
            return None
        if not name:
            self.p.add((*path, "name"), "name is a mandatory field for a key")
        if not secret_text:
            self.p.add((*path, "secret"), "secret is a mandatory field for a key")
            return None
        secret = _decode_secret(secret_text)
        if secret is None:
            self.p.add((*path, "secret"), _BASE64)
            return None
        sizes = static_provider(kind).key_sizes
        if len(secret) not in sizes:
            self.p.add(
                (*path, "secret"),
                f"secret is not of the expected length, got {len(secret)}, "
                f"expected one of [{' '.join(map(str, sizes))}]",
            )
            return None
        if not name:
            return None
        return StaticKey(kind, name, secret, self.label, self.index, _fmt_path(path))

    def _kms(self, body: Any, path: Path_) -> KMSProvider | None:
        obj = self.fields(body, path, ("apiVersion", "name", "endpoint", "cachesize", "timeout"))
        if obj is None:
            return None
        before = len(self.p.items)
        api_version = self.string(obj, "apiVersion", path) or "v1"  # defaults.go
        name = self.string(obj, "name", path)
        endpoint = self.string(obj, "endpoint", path)
        timeout_s = DEFAULT_KMS_TIMEOUT_S
        raw_timeout = obj.get("timeout")
        if raw_timeout is not None:
            if not isinstance(raw_timeout, str):
                self.p.add((*path, "timeout"), 'expected a duration string such as "3s"')
            else:
                try:
                    timeout_s = parse_duration(raw_timeout)
                except ValueError:
                    self.p.add(
                        (*path, "timeout"),
                        "invalid duration (use a Go duration such as 3s, 500ms, 1m30s)",
                    )
        cachesize = obj.get("cachesize")
        if cachesize is not None and (
            isinstance(cachesize, bool)
            or not isinstance(cachesize, int)
            or not -(2**31) <= cachesize < 2**31
        ):
            self.p.add((*path, "cachesize"), "expected a 32-bit integer")
            cachesize = None
        if len(self.p.items) != before:
            return None
        if cachesize is None and api_version == "v1":
            cachesize = DEFAULT_KMS_CACHESIZE
        # validateKMSConfiguration order: name, timeout, endpoint, cachesize, apiVersion.
        if not name:
            self.p.add((*path, "name"), "name is a mandatory field for a provider")
        if api_version != "v1" and ":" in name:
            self.p.add((*path, "name"), f"invalid KMS provider name {name}, must not contain ':'")
        if api_version != "v1" and name in self.kms_names:
            self.p.add((*path, "name"), f"duplicate KMS provider name {name}, names must be unique")
        self.kms_names.add(name)
        if timeout_s <= 0:
            self.p.add((*path, "timeout"), "timeout should be a positive value")
        if not endpoint:
            self.p.add((*path, "endpoint"), "endpoint is a mandatory field for a kms")
        else:
            try:
                scheme = urlsplit(endpoint).scheme
            except ValueError:
                self.p.add((*path, "endpoint"), "invalid endpoint for kms provider")
            else:
                if scheme != "unix":
                    self.p.add(
                        (*path, "endpoint"),
                        f'unsupported scheme "{scheme}" for KMS provider, only unix is supported',
                    )
        if api_version != "v1" and cachesize is not None:
            self.p.add((*path, "cachesize"), "cachesize is not supported in v2")
        if api_version == "v1" and cachesize == 0:
            self.p.add(
                (*path, "cachesize"), "cachesize should be a positive value, or negative to disable"
            )
        if api_version not in ("v1", "v2"):
            self.p.add(
                (*path, "apiVersion"),
                f"unsupported apiVersion {api_version} for KMS provider, "
                "only v1 and v2 are supported",
            )
        if len(self.p.items) != before:
            return None
        position = _fmt_path(path)
        return KMSProvider(
            name, api_version, endpoint, timeout_s, cachesize, self.label, self.index, position
        )


def _gr_yaml(gr: tuple[str, str]) -> str:
    """``grYAMLString``: ``*.`` for the core wildcard, else ``resource.group`` / ``resource``."""
    group, resource = gr
    if group == "" and resource == "*":
        return "*."
    return f"{resource}.{group}" if group else resource


def parse_config_text(
    text: str,
    source: str,
    index: int = 0,
    label: str | None = None,
    *,
    json_first: bool = False,
    require_type_meta: bool = True,
) -> EncryptionConfig:
    """Parse and validate one EncryptionConfiguration document.

    ``source`` names the file in errors; ``label`` (default ``source``) is the config's
    ``path`` and every key's ``config``.

    Raises:
        ConfigFileError: the text is not a valid config, or breaks a bound (size, depth,
            anchors, control characters).
    """
    if len(text) > MAX_CONFIG_BYTES:
        reason = f"too large for an encryption config ({_limit(MAX_CONFIG_BYTES)})"
        raise config_error(source, None, reason)
    data, lines = _load_text(text, source, json_first)
    return parse_config_data(data, source, index, label, lines, require_type_meta=require_type_meta)


def parse_config_data(
    data: Any,
    source: str,
    index: int = 0,
    label: str | None = None,
    lines: dict[Path_, int] | None = None,
    *,
    require_type_meta: bool = True,
) -> EncryptionConfig:
    """Validate an already decoded document (see :func:`parse_config_text`)."""
    builder = _Builder(source, label or source, index, lines or {})
    return builder.build(data, require_type_meta)


# --------------------------------------------------------------------------------------------
# files


def _limit(size: int) -> str:
    return f"more than {size >> 20} MiB"


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(shown: str, mode: int) -> ConfigFileError:
    if stat.S_ISDIR(mode):
        return config_error(shown, None, "is a directory")
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
    return config_error(shown, None, f"is {kind}, not a regular file")


def read_text(path: Path, shown: str, limit: int = MAX_CONFIG_BYTES) -> str:
    """A config file's text, or a one-line ConfigError (missing, unreadable, binary, huge).

    Symlinks are followed, but only a regular file is read: a FIFO would block, a device may
    never end. The check is made before opening (opening a device can have effects) and again
    on the open descriptor, which is non-blocking so that a FIFO swapped in cannot hang us.
    """
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(shown, mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise _not_regular(shown, mode)
            raw = fh.read(limit + 1)
    except FileNotFoundError:
        raise config_error(shown, None, "no such file or directory") from None
    except IsADirectoryError:
        raise config_error(shown, None, "is a directory") from None
    except OSError as exc:
        raise config_error(shown, None, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > limit:
        what = "an RKE state file" if limit > MAX_CONFIG_BYTES else "an encryption config"
        raise config_error(shown, None, f"too large for {what} ({_limit(limit)})")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise config_error(shown, None, "not a text file (invalid UTF-8)") from None


def _is_rke_state(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and ("currentState" in data or "desiredState" in data)
        and not {"kind", "apiVersion", "resources"} & set(data)
    )


def _rke_configs(data: Any, shown: str, start_index: int) -> list[EncryptionConfig]:
    """Configs kept in an RKE ``FullState``: currentState first, then a differing desiredState."""
    if not isinstance(data, dict):
        raise config_error(shown, None, "not an RKE cluster state (expected a JSON object)")
    found: list[tuple[str, Any]] = []
    for section in ("currentState", "desiredState"):
        state = data.get(section)
        if not isinstance(state, dict):
            continue
        text = state.get("encryptionConfig")
        if isinstance(text, str) and text.strip():
            payload: Any = ("text", text)
        else:
            custom = _dig(state, "rkeConfig", "services", "kubeApi", "secretsEncryptionConfig")
            enabled = isinstance(custom, dict) and bool(custom.get("enabled"))
            if not enabled or not isinstance(custom.get("customConfig"), dict):
                continue
            payload = ("data", custom["customConfig"])
        if all(payload != p for _, p in found):
            found.append((section, payload))
    if not found:
        raise config_error(
            shown,
            None,
            "RKE state holds no encryption config (currentState.encryptionConfig and "
            "desiredState.encryptionConfig are empty; is secrets encryption enabled?)",
        )
    configs = []
    for n, (section, (kind, payload)) in enumerate(found):
        label = f"{shown}#{section}"
        if kind == "text":
            where = f"{shown} ({section}.encryptionConfig)"
            cfg = parse_config_text(payload, where, start_index + n, label)
        else:
            field_path = "rkeConfig.services.kubeApi.secretsEncryptionConfig.customConfig"
            where = f"{shown} ({section}.{field_path})"
            cfg = parse_config_data(payload, where, start_index + n, label, require_type_meta=False)
        configs.append(_with_file(cfg, shown))
    return configs


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _with_file(cfg: EncryptionConfig, file: str) -> EncryptionConfig:
    return EncryptionConfig(path=cfg.path, index=cfg.index, rules=cfg.rules, file=file)


def load_config_file(
    path: str | Path, start_index: int = 0, shown: str | None = None
) -> list[EncryptionConfig]:
    """Load one file: one config, or up to two from an RKE ``cluster.rkestate``.

    ``shown`` is how the file is named in labels and errors (default: the path as given).
    """
    p = Path(path)
    shown = shown if shown is not None else str(path)
    state = p.suffix.lower() == ".rkestate"
    text = read_text(p, shown, MAX_STATE_BYTES if state else MAX_CONFIG_BYTES)
    try:
        # YAML first for line numbers (JSON is YAML); a state file is big and JSON only.
        data, lines = _load_text(text, shown, json_first=state)
        if state or _is_rke_state(data):
            return _rke_configs(data, shown, start_index)
        return [parse_config_data(data, shown, start_index, shown, lines)]
    except RecursionError:  # not expected past the depth bounds; still a bad file, not a crash
        raise config_error(shown, None, _TOO_DEEP) from None


def load_config_bytes(data: bytes, origin: str, index: int = 0) -> EncryptionConfig:
    """One config that is not a file (K3s/RKE2 keep one inside every snapshot): ``origin`` names
    it in labels and errors (``<snapshot>#/bootstrap/<hash>``). Same bounds as a file.

    Raises:
        ConfigFileError: not UTF-8, too large, or not a valid config.
    """
    if len(data) > MAX_CONFIG_BYTES:
        raise config_error(origin, None, f"too large for an encryption config ({_limit(MAX_CONFIG_BYTES)})")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise config_error(origin, None, "not a text file (invalid UTF-8)") from None
    try:
        return parse_config_text(text, origin, index, origin)
    except RecursionError:
        raise config_error(origin, None, _TOO_DEEP) from None
