"""What ``snapshot-tools keys`` reports: the encryption config a K3s/RKE2 snapshot carries in its
bootstrap data, as a key table (names and fingerprints, never material), the secrets-encrypt
stage and the bootstrap files; and the one way to get the config's bytes out (``--export``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from snapshot_tools.atomic_file import AtomicFile
from snapshot_tools.config import load_config_bytes
from snapshot_tools.errors import BootstrapError
from snapshot_tools.k3s_bootstrap import BootstrapData, EncryptionState, read_bootstrap
from snapshot_tools.sources import open_record_source

if TYPE_CHECKING:
    from collections.abc import Sequence

    from snapshot_tools.config_model import EncryptionConfig
    from snapshot_tools.inputs import S3Options

__all__ = ["KeyRow", "KeysReport", "export_config", "key_rows", "keys_report"]


class KeyRow(NamedTuple):
    """One provider key of the embedded config: names and a fingerprint, never material.

    ``active``: the key the config writes with (its rule's first provider, that provider's first
    key; ``identity`` first means secrets encryption is disabled).
    """

    resources: tuple[str, ...]
    provider: str
    name: str | None
    fingerprint: str | None
    active: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "resources": list(self.resources),
            "provider": self.provider,
            "name": self.name,
            "fingerprint": self.fingerprint,
            "active": self.active,
        }


def key_rows(config: EncryptionConfig) -> list[KeyRow]:
    """The key table of a config, in provider order (the fingerprint is the check report's)."""
    rows: list[KeyRow] = []
    for rule in config.rules:
        first = True
        for entry in rule.providers:
            if entry.kind == "identity":
                rows.append(KeyRow(rule.resources, "identity", None, None, first))
                first = False
            elif entry.kms is not None:
                rows.append(KeyRow(rule.resources, entry.kms.provider, entry.kms.name, entry.kms.fingerprint, first))
                first = False
            for key in entry.keys:
                rows.append(KeyRow(rule.resources, key.provider, key.name, key.fingerprint, first))
                first = False
    return rows


@dataclass(frozen=True)
class KeysReport:
    """What ``snapshot-tools keys`` shows: the bootstrap record, the embedded key table, the
    secrets-encrypt stage and the files present (names, timestamps, sizes)."""

    snapshot: str
    data: BootstrapData
    keys: tuple[KeyRow, ...]
    config_sha256: str | None

    @property
    def state(self) -> EncryptionState | None:
        return self.data.state

    def to_json(self) -> dict[str, Any]:
        config = self.data.encryption_config
        state = self.state
        return {
            "snapshot": self.snapshot,
            "bootstrap": {**self.data.record.to_json(), "variant": self.data.variant, "format": self.data.format},
            "config": None
            if config is None
            else {"origin": self.data.origin, "size": len(config), "sha256": self.config_sha256},
            "keys": [k.to_json() for k in self.keys],
            "encryption_state": None if state is None else state.to_json(),
            "files": [f.to_json() for f in self.data.files.values()],
            "other_bootstrap_keys": [r.to_json() for r in self.data.others],
            "notes": self.data.notes(),
        }


def keys_report(
    snapshot: str, token: str, s3: S3Options | None = None, *, progress: bool = False
) -> KeysReport:
    """Open ``snapshot``'s bootstrap data with ``token`` and describe the keys it carries.

    Raises:
        TokenError, BootstrapError: as :func:`find_bootstrap`.
        ConfigError: the embedded config is not a valid EncryptionConfiguration.
    """
    with open_record_source(snapshot, None, s3, progress=progress) as source:
        data = read_bootstrap(source, token, source.name)
    config = data.encryption_config
    if config is None:
        return KeysReport(snapshot, data, (), None)
    parsed = load_config_bytes(config, data.origin)
    return KeysReport(snapshot, data, tuple(key_rows(parsed)), hashlib.sha256(config).hexdigest())


def export_config(report: KeysReport, target: str, *, force: bool, inputs: Sequence[str] = ()) -> None:
    """Write the embedded config bytes exactly as embedded to ``target`` (0600, atomic);
    ``inputs``: files besides the snapshot it may not replace (the token file).

    Raises:
        OutputError: as :class:`~snapshot_tools.atomic_file.AtomicFile` (existing file without
            ``force``, a symlink, device or FIFO, the snapshot itself).
        BootstrapError: the bootstrap data holds no encryption config.
    """
    config = report.data.encryption_config
    if config is None:
        raise BootstrapError(f"{report.data.origin}: no EncryptionConfig to export (secrets encryption is off)")
    with AtomicFile(target, force=force, inputs=[report.snapshot, *inputs]) as out:
        assert out.file is not None
        out.file.write(config)
        out.commit()
