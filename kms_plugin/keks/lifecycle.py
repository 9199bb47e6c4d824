"""Keyring changes with their audit trail: init, rotate, retire, restore, purge, import.

Every change holds the keyring's writer lock (:func:`~kms_plugin.keks.local.keyring_lock`) from
the read to the atomic rename, opens the audit log (:mod:`.audit`) before it changes anything and
appends its line before it lets the lock go. Once the lock is held, a stop signal waits until
the change and its audit line are written (:func:`~kms_plugin.stop_signals.stop_signals_held`:
a few milliseconds of file work), then stops the command (128 + N), so a SIGTERM cannot leave a
change without its line; waiting for the lock stays interruptible.

Retired KEKs are kept in the archive (:mod:`.archive`, sealed under the active KEK) until purged.
Every retire re-seals the whole archive under the current active KEK, so the archive never
depends on a KEK that is being retired; an entry that no KEK of the keyring opens stops the
change.

The proof that a KEK is unused is not made here (``kms_plugin`` does not read snapshots): the
caller proves it with ``snapshot_tools.kek_usage`` against the keyring it read, and
:func:`retire` checks, under the lock, that the KEK is still the one proven and still not active.

References: ``kms_plugin.keks.local`` (``keyring_lock``, ``rotate_keyring``); issue 14 item 2.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from kms_plugin.errors import ConfigError, Error
from kms_plugin.keks.archive import Archived, archive_path, open_entry, read_archive, seal, write_archive
from kms_plugin.keks.audit import AuditLog
from kms_plugin.keks.local import (
    ACTIVE,
    DECRYPT_ONLY,
    Kek,
    Keyring,
    _canonical_time,
    _write_keyring,
    keyring_lock,
)
from kms_plugin.stop_signals import stop_signals_held

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence


class ImportResult(NamedTuple):
    """What an import did: ids added and skipped (already held), the KEK made active, the result."""

    added: list[str]
    skipped: list[str]
    activated: str | None
    keyring: Keyring


def _now() -> str:
    return _canonical_time(datetime.now(UTC))


def _require_keyring(path: str | os.PathLike[str]) -> None:
    """Refuse a missing keyring before its lock and audit log are created beside it."""
    try:
        os.stat(path)
    except OSError as exc:
        raise ConfigError(f"keyring {os.fspath(path)}: cannot open: {exc.strerror}") from None


# -- init and rotate -------------------------------------------------------------------------


def init_keyring(path: str | os.PathLike[str], *, force: bool) -> Keyring:
    """Create a keyring with one fresh active KEK (replace an existing one only with ``force``).

    Raises:
        ConfigError: the file exists and ``force`` is false; the lock, log or write fails.
    """
    given = Path(path)
    if not force and (given.exists() or given.is_symlink()):
        raise ConfigError(f"keyring {given}: already exists (use --force to overwrite)")
    keyring = Keyring.generate()
    with keyring_lock(given) as target, AuditLog(target) as audit, stop_signals_held():
        replaced = target.exists()
        _write_keyring(target, keyring, replace=force)
        audit.append("init", [keyring.active.id], active=keyring.active.id, replaced=replaced)
    return keyring


def rotate(path: str | os.PathLike[str]) -> tuple[Keyring, Keyring]:
    """:func:`~kms_plugin.keks.local.rotate_keyring` with an audit line; returns (before, after)."""
    _require_keyring(path)
    with keyring_lock(path) as target, AuditLog(target) as audit, stop_signals_held():
        old = Keyring.load(target)
        new = old.rotated()
        _write_keyring(target, new, replace=True)
        audit.append("rotate", [new.active.id, old.active.id], active=new.active.id, demoted=old.active.id)
    return old, new


def _kek(keyring: Keyring, kek_id: str) -> Kek:
    for kek in keyring.keks:
        if kek.id == kek_id:
            return kek
    ids = ", ".join(k.id for k in keyring.keks)
    raise ConfigError(f"keyring {keyring.source}: no KEK {kek_id!r} (it holds {ids})")


def retirable(keyring: Keyring, kek_id: str) -> Kek:
    """The KEK ``kek_id`` if it may be retired (held, and not the active one).

    Raises:
        ConfigError: not in the keyring, or the active KEK.
    """
    kek = _kek(keyring, kek_id)
    if kek.state == ACTIVE:
        raise ConfigError(
            f"KEK {kek_id} is the active KEK of {keyring.source}; rotate first, re-encrypt, then retire it"
        )
    return kek


# -- retire, restore, purge ----------------------------------------------------------------------


def retire(
    path: str | os.PathLike[str], kek_id: str, proven: Kek, proof: Mapping[str, Any]
) -> Keyring:
    """Move KEK ``kek_id`` from the keyring into its archive; returns the trimmed keyring.

    ``proven`` is the KEK as read by the caller that proved no stored value needs it; ``proof``
    (sources, revisions, value counts: no material) goes into the audit line.

    Raises:
        ConfigError: the KEK is gone, became active or changed since the proof.
        InputError: the archive is damaged or does not open with this keyring.
    """
    _require_keyring(path)
    with keyring_lock(path) as target, AuditLog(target) as audit, stop_signals_held():
        keyring = Keyring.load(target)
        kek = retirable(keyring, kek_id)
        if kek != proven:
            raise ConfigError(f"KEK {kek_id} changed since it was proven unused; run retire again")
        entries = read_archive(target)
        if any(e.id == kek_id for e in entries):
            raise ConfigError(f"KEK {kek_id} is already in the archive {archive_path(target)}")
        kept = [open_entry(e, keyring, archive_path(target)) for e in entries]
        trimmed = Keyring([k for k in keyring.keks if k.id != kek_id], keyring.source)
        now = _now()
        resealed = [seal(k, trimmed, e.retired) for k, e in zip(kept, entries, strict=True)]
        # Archive first: a failure between the two writes leaves the KEK in both, never in neither.
        write_archive(target, [*resealed, seal(kek, trimmed, now)])
        _write_keyring(target, trimmed, replace=True)
        audit.append("retire", [kek_id], active=trimmed.active.id, archive=str(archive_path(target)), proof=proof)
    return trimmed


def restore(path: str | os.PathLike[str], kek_id: str) -> Keyring:
    """Put an archived KEK back into the keyring, decrypt-only; returns the new keyring.

    Raises:
        ConfigError: no such archived KEK, or the keyring already holds that id.
        InputError: the archive is damaged or does not open with this keyring.
    """
    _require_keyring(path)
    with keyring_lock(path) as target, AuditLog(target) as audit, stop_signals_held():
        keyring = Keyring.load(target)
        entries = read_archive(target)
        entry = next((e for e in entries if e.id == kek_id), None)
        if entry is None:
            raise ConfigError(f"archive {archive_path(target)} holds no KEK {kek_id!r}{_listing(entries)}")
        if any(k.id == kek_id for k in keyring.keks):
            raise ConfigError(f"keyring {target} already holds a KEK {kek_id!r}")
        kek = open_entry(entry, keyring, archive_path(target))
        restored = Keyring([*keyring.keks, Kek(kek.id, kek.created, DECRYPT_ONLY, kek.key)], keyring.source)
        _write_keyring(target, restored, replace=True)
        write_archive(target, [e for e in entries if e.id != kek_id])
        audit.append("restore", [kek_id], active=restored.active.id)
    return restored


def _listing(entries: Iterable[Archived]) -> str:
    ids = [e.id for e in entries]
    return f" (it holds {', '.join(ids)})" if ids else " (it is empty)"


def purge(path: str | os.PathLike[str], kek_ids: Sequence[str], *, everything: bool) -> list[str]:
    """Destroy archived KEKs for good: ``kek_ids``, or all with ``everything``; returns the ids.

    Raises:
        ConfigError: an id the archive does not hold (nothing is purged then), or nothing named.
    """
    with keyring_lock(path) as target, AuditLog(target) as audit, stop_signals_held():
        entries = read_archive(target)
        held = {e.id for e in entries}
        if everything:
            gone = sorted(held)
        else:
            unknown = [i for i in kek_ids if i not in held]
            if unknown:
                raise ConfigError(
                    f"archive {archive_path(target)} holds no KEK {unknown[0]!r}{_listing(entries)}; nothing purged"
                )
            gone = sorted(set(kek_ids))
        if not gone:
            raise ConfigError(f"archive {archive_path(target)}: nothing to purge{_listing(entries)}")
        write_archive(target, [e for e in entries if e.id not in gone])
        audit.append("purge", gone)
    return gone


# -- import ------------------------------------------------------------------------------------


def _merge(
    existing: Sequence[Kek], keks: Sequence[Kek], activate: str | None, target: Path
) -> tuple[list[Kek], list[str], list[str]]:
    """``existing`` plus the new ``keks`` (decrypt-only; ``activate`` active): (KEKs, added, skipped).

    Raises:
        ConfigError: an id ``existing`` holds with another creation time or key.
    """
    by_id = {k.id: k for k in existing}
    added, skipped = [], []
    for kek in keks:
        have = by_id.get(kek.id)
        if have is None:
            added.append(kek.id)
            by_id[kek.id] = Kek(kek.id, kek.created, DECRYPT_ONLY, kek.key)
        elif have.key == kek.key and have.created == kek.created:
            skipped.append(kek.id)
        else:
            raise ConfigError(
                f"KEK id {kek.id} is already in keyring {target} with different material; nothing imported"
            )
    merged = list(by_id.values())
    if activate is not None:
        merged = [Kek(k.id, k.created, ACTIVE if k.id == activate else DECRYPT_ONLY, k.key) for k in merged]
    return merged, added, skipped


def import_keks(
    path: str | os.PathLike[str], keks: Sequence[Kek], *, activate: str | None, source: str
) -> ImportResult:
    """Add ``keks`` to the keyring (created if missing, when ``activate`` names its active KEK).

    Imported KEKs are decrypt-only, except ``activate``, which becomes the active KEK (the
    previous active one decrypt-only). A KEK the keyring already holds with the same creation
    and material is skipped; the same id with anything different refuses the whole import.

    Raises:
        ConfigError: a conflicting id, ``activate`` not among ``keks``, no keyring and no
            ``activate``; the lock, log or write fails.
    """
    ids = [k.id for k in keks]
    if activate is not None and activate not in ids:
        raise ConfigError(f"--activate {activate!r}: the export holds {', '.join(ids)}")
    with keyring_lock(path) as target, AuditLog(target) as audit, stop_signals_held():
        existing: tuple[Kek, ...] = ()
        if target.exists() or target.is_symlink():
            existing = Keyring.load(target).keks
        elif activate is None:
            raise ConfigError(f"keyring {target} does not exist; run keyring init, or pass --activate ID")
        merged, added, skipped = _merge(existing, keks, activate, target)
        try:
            keyring = Keyring(merged, str(target))
        except Error as exc:
            raise ConfigError(str(exc)) from None
        _write_keyring(target, keyring, replace=True)
        audit.append(
            "import", added, skipped=skipped, activated=activate, active=keyring.active.id, source=source
        )
    return ImportResult(added, skipped, activate, keyring)
