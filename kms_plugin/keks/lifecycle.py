"""Keyring changes with their audit trail: init, rotate, retire, restore, purge, import.

Every change holds the keyring's writer lock (:func:`~kms_plugin.keks.local.keyring_lock`) from
the read to the atomic rename, opens the audit log (:mod:`.audit`) before it changes anything and
appends its line before it lets the lock go.

Retired KEKs are kept in ``<keyring>.retired`` (0600, beside the symlink-resolved keyring) until
purged. Each entry is the KEK's keyring entry sealed in the keyring's wrapped format under the
**active KEK** of the keyring (AES-256-GCM; the header names the sealing KEK). Why not a
passphrase: retiring is routine and runs where the keyring is; the archive is exactly as safe as
the keyring file beside it, and worthless without it; off-host copies are what ``keyring export``
(passphrase) is for. Every retire re-seals the whole archive under the current active KEK, so
the archive never depends on a KEK that is being retired; an entry that no KEK of the keyring
opens stops the change.

The proof that a KEK is unused is not made here (``kms_plugin`` does not read snapshots): the
caller proves it with ``snapshot_tools.kek_usage`` against the keyring it read, and
:func:`retire` checks, under the lock, that the KEK is still the one proven and still not active.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from kms_plugin.errors import ConfigError, Error, InputError, InvalidCiphertext, UnknownKeyId
from kms_plugin.keks.audit import AuditLog
from kms_plugin.keks.local import (
    ACTIVE,
    DECRYPT_ONLY,
    Kek,
    Keyring,
    _canonical_time,
    _parse_kek,
    _write_keyring,
    keyring_lock,
)
from kms_plugin.keks.private_file import write_private

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

ARCHIVE_SUFFIX = ".retired"
ARCHIVE_FORMAT = "kms-plugin-retired-keks"
ARCHIVE_VERSION = 1
MAX_ARCHIVE_BYTES = 4 << 20


def archive_path(keyring_file: Path) -> Path:
    """The retired-KEK archive of the (symlink-resolved) keyring file ``keyring_file``."""
    return keyring_file.with_name(keyring_file.name + ARCHIVE_SUFFIX)


class Archived(NamedTuple):
    """One archive entry as stored: ids and times in the clear, the KEK sealed."""

    id: str
    created: str
    retired: str
    sealed_by: str
    sealed: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "created": self.created,
            "retired": self.retired,
            "sealed_by": self.sealed_by,
            "sealed": base64.b64encode(self.sealed).decode(),
        }


class ImportResult(NamedTuple):
    added: list[str]
    skipped: list[str]
    activated: str | None
    keyring: Keyring


def _now() -> str:
    return _canonical_time(datetime.now(UTC))


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
    with keyring_lock(given) as target, AuditLog(target) as audit:
        replaced = target.exists()
        _write_keyring(target, keyring, replace=force)
        audit.append("init", [keyring.active.id], active=keyring.active.id, replaced=replaced)
    return keyring


def rotate(path: str | os.PathLike[str]) -> tuple[Keyring, Keyring]:
    """:func:`~kms_plugin.keks.local.rotate_keyring` with an audit line; returns (before, after)."""
    with keyring_lock(path) as target, AuditLog(target) as audit:
        old = Keyring.load(target)
        new = old.rotated()
        _write_keyring(target, new, replace=True)
        audit.append("rotate", [new.active.id, old.active.id], active=new.active.id, demoted=old.active.id)
    return old, new


# -- the archive -------------------------------------------------------------------------------


def _archive_error(path: Path, why: str) -> InputError:
    return InputError(f"retired-KEK archive {path}: {why}")


def read_archive(keyring_file: Path) -> list[Archived]:
    """The entries of the archive beside ``keyring_file`` ([] when there is none); not opened.

    Raises:
        InputError: unreadable, unsafe mode, or damaged.
    """
    path = archive_path(keyring_file)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise _archive_error(path, f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _archive_error(path, "not a regular file")
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise _archive_error(path, f"mode {mode:04o} lets group or others read it; run chmod 600")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(MAX_ARCHIVE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_ARCHIVE_BYTES:
        raise _archive_error(path, f"larger than {MAX_ARCHIVE_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise _archive_error(path, "malformed JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != ARCHIVE_FORMAT or doc.get("version") != ARCHIVE_VERSION:
        raise _archive_error(path, "not a retired-KEK archive of this version")
    entries = doc.get("keks")
    if not isinstance(entries, list):
        raise _archive_error(path, "'keks' must be a list")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not all(isinstance(e.get(f), str) for f in Archived._fields):
            raise _archive_error(path, f"keks[{i}] is malformed")
        try:
            sealed = base64.b64decode(e["sealed"], validate=True)
        except (binascii.Error, ValueError):
            raise _archive_error(path, f"keks[{i}]: sealed is not base64") from None
        out.append(Archived(e["id"], e["created"], e["retired"], e["sealed_by"], sealed))
    return out


def _open_entry(entry: Archived, keyring: Keyring, path: Path) -> Kek:
    """The KEK sealed in ``entry``; its id and creation must match the clear fields."""
    try:
        plain = keyring.unwrap(entry.sealed)
    except (UnknownKeyId, InvalidCiphertext) as exc:
        raise _archive_error(path, f"KEK {entry.id} does not open with this keyring ({exc})") from None
    try:
        kek = _parse_kek(json.loads(plain), 0, str(path))
    except (ValueError, ConfigError):
        raise _archive_error(path, f"KEK {entry.id} is damaged") from None
    if kek.id != entry.id or _canonical_time(kek.created) != entry.created:
        raise _archive_error(path, f"KEK {entry.id}: sealed identity differs from the listed one")
    return kek


def _seal(kek: Kek, keyring: Keyring, retired: str) -> Archived:
    wrapped = keyring.wrap(json.dumps(kek.to_json()).encode())
    return Archived(kek.id, _canonical_time(kek.created), retired, keyring.active.id, wrapped.ciphertext)


def _write_archive(keyring_file: Path, entries: Sequence[Archived]) -> None:
    doc = {"format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION, "keks": [e.to_json() for e in entries]}
    write_private(
        archive_path(keyring_file), (json.dumps(doc, indent=2) + "\n").encode(), replace=True, what="archive"
    )


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
    with keyring_lock(path) as target, AuditLog(target) as audit:
        keyring = Keyring.load(target)
        kek = retirable(keyring, kek_id)
        if kek != proven:
            raise ConfigError(f"KEK {kek_id} changed since it was proven unused; run retire again")
        entries = read_archive(target)
        if any(e.id == kek_id for e in entries):
            raise ConfigError(f"KEK {kek_id} is already in the archive {archive_path(target)}")
        kept = [_open_entry(e, keyring, archive_path(target)) for e in entries]
        trimmed = Keyring([k for k in keyring.keks if k.id != kek_id], keyring.source)
        now = _now()
        resealed = [_seal(k, trimmed, e.retired) for k, e in zip(kept, entries, strict=True)]
        # Archive first: a failure between the two writes leaves the KEK in both, never in neither.
        _write_archive(target, [*resealed, _seal(kek, trimmed, now)])
        _write_keyring(target, trimmed, replace=True)
        audit.append("retire", [kek_id], active=trimmed.active.id, archive=str(archive_path(target)), proof=proof)
    return trimmed


def restore(path: str | os.PathLike[str], kek_id: str) -> Keyring:
    """Put an archived KEK back into the keyring, decrypt-only; returns the new keyring.

    Raises:
        ConfigError: no such archived KEK, or the keyring already holds that id.
        InputError: the archive is damaged or does not open with this keyring.
    """
    with keyring_lock(path) as target, AuditLog(target) as audit:
        keyring = Keyring.load(target)
        entries = read_archive(target)
        entry = next((e for e in entries if e.id == kek_id), None)
        if entry is None:
            raise ConfigError(f"archive {archive_path(target)} holds no KEK {kek_id!r}{_listing(entries)}")
        if any(k.id == kek_id for k in keyring.keks):
            raise ConfigError(f"keyring {target} already holds a KEK {kek_id!r}")
        kek = _open_entry(entry, keyring, archive_path(target))
        restored = Keyring([*keyring.keks, Kek(kek.id, kek.created, DECRYPT_ONLY, kek.key)], keyring.source)
        _write_keyring(target, restored, replace=True)
        _write_archive(target, [e for e in entries if e.id != kek_id])
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
    with keyring_lock(path) as target, AuditLog(target) as audit:
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
        _write_archive(target, [e for e in entries if e.id not in gone])
        audit.append("purge", gone)
    return gone


# -- import ------------------------------------------------------------------------------------


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
    with keyring_lock(path) as target, AuditLog(target) as audit:
        existing: tuple[Kek, ...] = ()
        if target.exists() or target.is_symlink():
            existing = Keyring.load(target).keks
        elif activate is None:
            raise ConfigError(f"keyring {target} does not exist; run keyring init, or pass --activate ID")
        by_id = {k.id: k for k in existing}
        added, skipped = [], []
        for kek in keks:
            have = by_id.get(kek.id)
            if have is None:
                added.append(kek.id)
            elif have.key == kek.key and have.created == kek.created:
                skipped.append(kek.id)
            else:
                raise ConfigError(
                    f"KEK id {kek.id} is already in keyring {target} with different material; nothing imported"
                )
        merged = {k.id: k for k in existing}
        for kek in keks:
            if kek.id in added:
                merged[kek.id] = Kek(kek.id, kek.created, DECRYPT_ONLY, kek.key)
        if activate is not None:
            merged = {
                i: Kek(k.id, k.created, ACTIVE if i == activate else DECRYPT_ONLY, k.key) for i, k in merged.items()
            }
        try:
            keyring = Keyring(merged.values(), str(target))
        except Error as exc:
            raise ConfigError(str(exc)) from None
        _write_keyring(target, keyring, replace=True)
        audit.append(
            "import", added, skipped=skipped, activated=activate, active=keyring.active.id, source=source
        )
    return ImportResult(added, skipped, activate, keyring)
