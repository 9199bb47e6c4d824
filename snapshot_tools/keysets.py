"""A history of encryption configs turned into candidate keys.

``load_keyset(paths)`` reads every path in order. A path is a file or a directory; for a
directory, every regular file in it (not recursive) whose name ends in ``.yaml``, ``.yml``,
``.json`` or ``.rkestate`` is read, sorted by name. K3s/RKE2's ``encryption-state.json`` is
skipped there: it sits next to ``encryption-config.json`` in ``server/cred`` and is not JSON.
An RKE ``cluster.rkestate`` may yield two configs (currentState, then desiredState; see
:mod:`snapshot_tools.config`).

The **first config loaded is the current one** - the first file of the first path (for a
directory, the first file by name). It decides what is "current" vs "stale" (DESIGN.md "Keys and
verdicts"); every later config only adds keys that can still read old data.

The same key name may carry different material in different configs: every distinct
(provider, name, material) is kept as a candidate, in config order; identical material under the
same name is listed once (first occurrence).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import yaml

from snapshot_tools.config import (
    EncryptionConfig,
    KMSProvider,
    ProviderEntry,
    Rule,
    StaticKey,
    config_error,
    load_config_bytes,
    load_config_file,
)
from snapshot_tools.errors import ConfigError
from snapshot_tools.providers import STATIC_NAMES
from snapshot_tools.resources import unknown_resource_names

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "CONFIG_SUFFIXES",
    "ConfigBytes",
    "EncryptionConfig",
    "KMSProvider",
    "KeySet",
    "ProviderEntry",
    "Rule",
    "StaticKey",
    "config_files",
    "load_keyset",
]

CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".rkestate")
_SKIPPED_IN_DIRS = {"encryption-state.json"}  # K3s/RKE2 stage marker, "<stage>-<sha256>"


class ConfigBytes(NamedTuple):
    """A config that is not a file: its bytes, and the origin that names it in reports (the one
    K3s/RKE2 keep inside a snapshot: ``<snapshot>#/bootstrap/<hash>``)."""

    origin: str
    data: bytes


@dataclass(eq=False)
class KeySet:
    """Every config given, first = current, with lookups the resolver needs."""

    configs: list[EncryptionConfig]
    notes: list[str] = field(default_factory=list)  # files skipped in directories, which is current
    _static: dict[tuple[str, str], list[StaticKey]] = field(
        default_factory=dict, init=False, repr=False
    )
    _names: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False)
    _kms: list[KMSProvider] = field(default_factory=list, init=False, repr=False)
    _all: list[StaticKey | KMSProvider] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.configs:
            raise ConfigError("no encryption config given")
        seen_static: set[tuple[str, str, bytes]] = set()
        seen_kms: set[tuple[str, str]] = set()
        seen_kms_full: set[tuple[str, str, str, float, int | None]] = set()
        for config in self.configs:
            for rule in config.rules:
                for entry in rule.providers:
                    if entry.kind in STATIC_NAMES:
                        for key in entry.keys:
                            ident = (key.provider, key.name, key.secret)
                            if ident in seen_static:
                                continue
                            seen_static.add(ident)
                            same_name = self._static.setdefault((key.provider, key.name), [])
                            if not same_name:  # a new name (a dict lookup, not a list scan)
                                self._names.setdefault(key.provider, []).append(key.name)
                            same_name.append(key)
                            self._all.append(key)
                    elif entry.kind == "kms" and entry.kms is not None:
                        kms = entry.kms
                        full = (
                            kms.api_version, kms.name, kms.endpoint, kms.timeout_s, kms.cachesize
                        )
                        if full not in seen_kms_full:
                            seen_kms_full.add(full)
                            self._kms.append(kms)
                        if (kms.api_version, kms.name) not in seen_kms:
                            seen_kms.add((kms.api_version, kms.name))
                            self._all.append(kms)

    @property
    def current(self) -> EncryptionConfig:
        """The first config loaded: what a restored apiserver would run with."""
        return self.configs[0]

    # -- static keys ---------------------------------------------------------------------

    def static_candidates(self, provider: str, name: str) -> list[StaticKey]:
        """Every distinct key material named ``name`` for ``provider``, in config order.

        The same objects are returned on every call (callers cache by identity).
        """
        return list(self._static.get((provider, name), ()))

    def static_names(self, provider: str) -> list[str]:
        """Distinct key names of ``provider`` in config order (for prefix matching: names may
        contain ``:`` or be prefixes of one another)."""
        return list(self._names.get(provider, ()))

    # -- KMS -----------------------------------------------------------------------------

    def kms_providers(self, name: str) -> list[KMSProvider]:
        """Every distinct KMS provider entry called ``name`` (v1 and v2), in config order."""
        return [k for k in self._kms if k.name == name]

    def kms_provider(self, name: str, version: str | None = None) -> KMSProvider | None:
        """The first KMS provider called ``name`` (optionally of API ``version`` v1/v2)."""
        for kms in self._kms:
            if kms.name == name and (version is None or kms.api_version == version):
                return kms
        return None

    def kms_names(self, version: str) -> list[str]:
        """Distinct names of KMS providers of API ``version`` (``v1``/``v2``), config order."""
        out: list[str] = []
        for kms in self._kms:
            if kms.api_version == version and kms.name not in out:
                out.append(kms.name)
        return out

    def kms_provider_names(self) -> list[str]:
        """Distinct names of every KMS provider (v1 and v2), config order."""
        return list(dict.fromkeys(kms.name for kms in self._kms))

    def resource_names(self) -> list[str]:
        """Every name the configs' ``resources:`` lists use, once each, config order."""
        return list(dict.fromkeys(r for c in self.configs for rule in c.rules for r in rule.resources))

    def unknown_resources(self) -> list[tuple[str, str]]:
        """``(config path, name)`` for each name of a config's ``resources:`` lists that matches
        no resource (``secret``): such a rule covers nothing (:func:`unknown_resource_names`)."""
        return [
            (c.path, name)
            for c in self.configs
            for name in unknown_resource_names(r for rule in c.rules for r in rule.resources)
        ]

    def kms_all(self) -> list[KMSProvider]:
        """One KMS provider per name (the first seen), for building unwrappers."""
        out: list[KMSProvider] = []
        names: set[str] = set()
        for kms in self._kms:
            if kms.name not in names:
                names.add(kms.name)
                out.append(kms)
        return out

    # -- report helpers ------------------------------------------------------------------

    def all_keys(self) -> list[StaticKey | KMSProvider]:
        """Each distinct static key (provider, name, material) and each KMS provider
        (API version, name) once, in config order - the report's key table."""
        return list(self._all)

    def active_identities(self) -> set[tuple[str, str, str]]:
        """``(form, name, fingerprint)`` of what the current config writes with: the first
        provider of each rule and, for static providers, its first key."""
        out: set[tuple[str, str, str]] = set()
        for rule in self.current.rules:
            if set(rule.resources) <= set(unknown_resource_names(rule.resources)):
                continue  # names only resources that do not exist: writes nothing
            first = rule.providers[0]
            if first.kind in STATIC_NAMES:
                key = first.keys[0]
                out.add((key.provider, key.name, key.fingerprint))
            elif first.kind == "kms" and first.kms is not None:
                out.add((first.kms.provider, first.kms.name, first.kms.fingerprint))
        return out

    def covered(self, group: str, resource: str) -> bool:
        """Whether any config given has a rule for the resource."""
        return any(c.covers(group, resource) for c in self.configs)


def config_files(path: str | Path) -> list[Path]:
    """The files a path stands for: itself, or a directory's config files sorted by name."""
    p = Path(path)
    shown = str(path)
    if not p.exists():
        raise config_error(shown, None, "no such file or directory")
    if not p.is_dir():
        return [p]
    try:
        entries = sorted(p.iterdir(), key=lambda e: e.name)
    except OSError as exc:
        raise config_error(shown, None, f"cannot list directory: {exc.strerror or exc}") from None
    files = [
        e
        for e in entries
        if e.suffix.lower() in CONFIG_SUFFIXES and e.name not in _SKIPPED_IN_DIRS and e.is_file()
    ]
    if not files:
        raise config_error(
            shown, None, f"directory holds no config files ({', '.join(CONFIG_SUFFIXES)})"
        )
    return files


def load_keyset(
    paths: Sequence[str | Path], embedded: Sequence[ConfigBytes] = (), extra_notes: Sequence[str] = ()
) -> KeySet:
    """Load every config under ``paths`` (files or directories, in order); first = current.

    ``embedded`` configs (from bytes, e.g. a K3s snapshot's own) come after the paths' configs:
    history when paths are given, the current config when not. ``extra_notes`` join the notes.

    Raises ConfigError (exit code 2) for a missing path, an unreadable or invalid file.
    """
    if not paths and not embedded:
        raise ConfigError("no encryption config given")
    configs: list[EncryptionConfig] = []
    notes = list(extra_notes)
    for path in paths:
        loaded_files: list[str] = []
        for file in config_files(path):
            shown = str(path) if file == Path(path) else str(Path(path) / file.name)
            try:
                loaded = load_config_file(file, start_index=len(configs), shown=shown)
            except ConfigError:
                if file == Path(path) or _may_be_config(file):
                    raise  # named on the command line, or a config that is broken: fatal
                notes.append(f"{shown}: skipped, not an encryption config")
                continue
            if not configs and file != Path(path):
                notes.append(f"current config: {shown}, the first config file by name in {path}")
            configs.extend(loaded)
            loaded_files.append(file.name)
        _check_history_order(str(path), loaded_files)
    configs.extend(load_config_bytes(item.data, item.origin, len(configs)) for item in embedded)
    return KeySet(configs, notes)


# A directory's configs are history, current first: their order must be in their names.
_ORDERED_NAME = re.compile(r"^[0-9]+[-_.]")


def _check_history_order(directory: str, names: list[str]) -> None:
    """Refuse a directory of several configs whose names do not say their order.

    Which of two configs is current cannot be known from their contents, and sorting
    ``new.yaml`` before ``old.yaml`` by accident would judge every object against the wrong
    config: such a directory needs numbered names (``10-current.yaml``, ``20-previous.yaml``).
    """
    if len(names) < 2 or all(_ORDERED_NAME.match(n) for n in names):
        return
    unordered = ", ".join(n for n in names if not _ORDERED_NAME.match(n))
    raise ConfigError(
        f"{directory}: {len(names)} encryption configs whose order their names do not give ({unordered}); "
        "name them so that they sort current first (10-current.yaml, 20-previous.yaml, ...) "
        "or give one --config per file, current first"
    )


_CONFIG_KINDS = ("EncryptionConfiguration", "EncryptionConfig")


def _may_be_config(file: Path) -> bool:
    """Whether a directory's file that failed to load is a broken config (fatal) rather than some
    other document (a Kubernetes manifest, a kustomization): only a YAML/JSON mapping whose
    ``kind`` is another kind is skipped; anything unparsable counts as a broken config."""
    try:
        data = yaml.safe_load(file.read_text("utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return True
    if not isinstance(data, dict):
        return True
    kind = data.get("kind")
    return not isinstance(kind, str) or kind in _CONFIG_KINDS
