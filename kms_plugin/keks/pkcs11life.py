"""PKCS#11 key family changes with their audit trail: init, rotate, retire, restore, purge.

A non-extractable key cannot be archived outside its token, so retiring keeps the object and
takes it out of use inside the token (:mod:`.pkcs11format`, "retired keys"):

* ``retire``: ``K-<n>`` -> ``K-<n>.retired`` (CKA_LABEL), then CKA_ENCRYPT and CKA_DECRYPT
  cleared. The family scan no longer lists it (the plugin's next probe drops it; a Decrypt that
  needs it fails with INVALID_ARGUMENT naming ``restore-key``); a process still holding its
  handle is refused by the token itself (CKA_DECRYPT false). The current key is never retired.
* ``restore``: CKA_ENCRYPT/CKA_DECRYPT set again, then the label back to ``K-<n>``: its key_id
  (a hash over serial, CKA_ID and that label) is the one the stored values name.
* ``purge``: C_DestroyObject on a retired key, for good.

Where a token refuses to change CKA_ENCRYPT/CKA_DECRYPT the relabel alone retires (the line in
the audit log says ``usage_cleared: false``).

Every change holds the family lock (``flock`` on ``<audit log>.lock``) from the key listing to
the change, and appends one line to the audit log (:class:`~kms_plugin.keks.audit.AuditLog`,
subject ``token``) before the lock goes: time, action, token label and serial, key label,
CKA_ID (hex), key_id, who. Never the PIN or material.

References: PKCS#11 v2.40 sections 4.4 (CKA_LABEL, CKA_ENCRYPT and CKA_DECRYPT are modifiable),
5.7 (C_SetAttributeValue, C_DestroyObject); :mod:`.lifecycle` (the keyring counterpart).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11

from kms_plugin.errors import ConfigError, Error
from kms_plugin.keks import pkcs11format as fmt
from kms_plugin.keks.audit import AuditLog
from kms_plugin.keks.pkcs11 import NewKey, Pkcs11Backend, new_generation
from kms_plugin.keks.pkcs11pool import classify

if TYPE_CHECKING:
    from collections.abc import Iterator

    from kms_plugin.keks.pkcs11pool import Pkcs11Settings, Slot

AUDIT_ENV = "KMS_PLUGIN_PKCS11_AUDIT_LOG"
DEFAULT_AUDIT_DIR = Path("/var/lib/kms-plugin")
LOCK_SUFFIX = ".lock"


def default_audit_log(token_label: str) -> Path:
    """``/var/lib/kms-plugin/pkcs11-<token label>.audit.log`` (odd characters as ``_``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", token_label).lstrip(".") or "token"
    return DEFAULT_AUDIT_DIR / f"pkcs11-{safe}.audit.log"


def audit_log_path(given: str | None, token_label: str) -> Path:
    """``--audit-log``, else ``$KMS_PLUGIN_PKCS11_AUDIT_LOG``, else :func:`default_audit_log`."""
    value = given or os.environ.get(AUDIT_ENV) or ""
    return Path(value) if value else default_audit_log(token_label)


@contextlib.contextmanager
def family_lock(audit_log: Path) -> Iterator[AuditLog]:
    """Hold the family's writer lock and its open audit log.

    The lock is ``flock`` on ``<audit log>.lock``, created 0600, never followed if a symlink,
    never deleted; blocks until the holder is done. The default directory is created 0700.

    Raises:
        ConfigError: the log is not a regular file (a symlink, a directory, a FIFO); the lock or
            the log cannot be opened or locked, or is unsafe.
    """
    if audit_log.parent == DEFAULT_AUDIT_DIR and not DEFAULT_AUDIT_DIR.exists():
        try:
            DEFAULT_AUDIT_DIR.mkdir(mode=0o700)
        except OSError as exc:
            raise ConfigError(f"audit log {audit_log}: cannot create its directory ({exc.strerror}); "
                              "give --audit-log FILE") from None  # fmt: skip
    try:
        st = os.lstat(audit_log)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"audit log {audit_log}: cannot open: {exc.strerror}") from None
    else:
        if not stat.S_ISREG(st.st_mode):
            # Refused before the lock is made, so nothing is left beside a directory or device.
            raise ConfigError(f"audit log {audit_log}: not a regular file (give --audit-log FILE)")
    lock_path = audit_log.with_name(audit_log.name + LOCK_SUFFIX)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(lock_path, flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"audit log lock {lock_path}: cannot open: {exc.strerror} (give --audit-log FILE)") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"audit log lock {lock_path}: not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise ConfigError(f"audit log lock {lock_path}: cannot lock: {exc.strerror}") from None
        with AuditLog(audit_log, path=audit_log, subject="audit_log") as audit:
            yield audit
    finally:
        os.close(fd)


def _record(settings: Pkcs11Settings, serial: str, ref: fmt.KeyRef) -> dict[str, Any]:
    return {
        "token": settings.token_label,
        "token_serial": serial,
        "key_family": settings.key_label,
        "key_label": ref.label,
        "cka_id": ref.cka_id.hex(),
        "key_id": ref.key_id,
    }


# -- init and rotate -------------------------------------------------------------------------------


def create_generation(settings: Pkcs11Settings, audit_log: Path, *, first: bool) -> NewKey:
    """:func:`~kms_plugin.keks.pkcs11.new_generation` under the family lock, with an audit line."""
    with family_lock(audit_log) as audit:
        made = new_generation(settings, first=first)
        audit.append(
            "init-key" if first else "rotate-key",
            [made.new.label],
            **_record(settings, made.serial, made.new),
            demoted=made.old.label if made.old else None,
        )
    return made


# -- the family as it is now -------------------------------------------------------------------------


class Family(NamedTuple):
    """The generations in the token: live (oldest first), retired, and the token serial."""

    live: list[fmt.KeyRef]
    retired: list[fmt.KeyRef]
    serial: str

    @property
    def current(self) -> fmt.KeyRef | None:
        return fmt.pick_current(self.live)

    def labels(self) -> str:
        names = [r.label for r in self.live] + [r.label + fmt.RETIRED_SUFFIX for r in self.retired]
        return ", ".join(names) or "no key"


def _open(settings: Pkcs11Settings, *, rw: bool) -> Pkcs11Backend:
    backend = Pkcs11Backend(settings, rw=rw)
    backend.pool.load()
    settings.pin.read()
    return backend


def _family(backend: Pkcs11Backend) -> Family:
    try:
        live, retired = backend.scan_all()
    except Error as exc:
        raise ConfigError(str(exc)) from None
    return Family(live, retired, backend.pool.serial)


def read_family(settings: Pkcs11Settings) -> Family:
    """The family as the token holds it now.

    Raises:
        ConfigError: module, PIN or token problems.
    """
    backend = _open(settings, rw=False)
    try:
        return _family(backend)
    finally:
        backend.close()


def retirable(family: Family, label: str) -> fmt.KeyRef:
    """The live generation ``label`` if it may be retired (held, and not current).

    Raises:
        ConfigError: not a live key of the family, or the current one.
    """
    ref = next((r for r in family.live if r.label == label), None)
    if ref is None:
        if any(r.label == label for r in family.retired):
            raise ConfigError(f"key {label} is retired already (kms-plugin pkcs11 restore-key {label} to undo)")
        raise ConfigError(f"no live key {label!r} in the family (the token holds {family.labels()})")
    if ref == family.current:
        raise ConfigError(f"key {label} is the current key; rotate-key first, re-encrypt, then retire it")
    return ref


def _object(backend: Pkcs11Backend, slot: Slot, ref: fmt.KeyRef, label: str) -> Any:
    query = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.ID: ref.cka_id, Attribute.LABEL: label}
    found = backend._call(lambda: list(slot.session.get_objects(query)))
    if len(found) != 1:
        raise ConfigError(f"key object {label!r} changed while it was being changed; list-keys and try again")
    return found[0]


def _set_usage(backend: Pkcs11Backend, key: Any, allowed: bool) -> bool:
    """Set CKA_ENCRYPT and CKA_DECRYPT; False when the token refuses to change them."""
    try:
        key[Attribute.ENCRYPT] = allowed
        key[Attribute.DECRYPT] = allowed
    except (p11.AttributeReadOnly, p11.AttributeValueInvalid, p11.AttributeTypeInvalid):
        return False
    except p11.PKCS11Error as exc:
        raise classify(exc, backend.settings.token_label) from None
    return True


# -- retire, restore, purge ----------------------------------------------------------------------------


def retire_key(
    settings: Pkcs11Settings, audit_log: Path, label: str, proven: fmt.KeyRef, proof: dict[str, Any]
) -> fmt.KeyRef:
    """Retire live generation ``label``, proven unused as ``proven``; returns the current key.

    Raises:
        ConfigError: the key changed, became current or vanished since the proof; token problems.
    """
    with family_lock(audit_log) as audit:
        backend = _open(settings, rw=True)
        try:
            family = _family(backend)
            ref = retirable(family, label)
            if ref != proven:
                raise ConfigError(f"key {label} changed since it was proven unused; run retire-key again")
            base = settings.key_label
            failure: Error | None = None
            with backend.pool.session() as slot:
                key = _object(backend, slot, ref, ref.label)
                backend._call(lambda: key.__setitem__(Attribute.LABEL, fmt.retired_label(base, ref.generation)))
                try:
                    cleared = _set_usage(backend, key, False)
                except Error as exc:  # relabelled already: the audit line must still be written
                    cleared, failure = False, exc
            current = family.current
            assert current is not None  # retirable() refused the current key
            audit.append(
                "retire-key", [label], **_record(settings, family.serial, ref),
                retired_label=fmt.retired_label(base, ref.generation), usage_cleared=cleared,
                current=current.label, proof=proof,
            )  # fmt: skip
            if failure is not None:
                raise ConfigError(
                    f"key {label} is relabelled {fmt.retired_label(base, ref.generation)} but its "
                    f"encrypt/decrypt flags were not cleared ({failure}); retired by label only"
                )
            return current
        finally:
            backend.close()


def restore_key(settings: Pkcs11Settings, audit_log: Path, label: str) -> fmt.KeyRef:
    """Give retired generation ``label`` back to the family (decrypt-only: never current again).

    Raises:
        ConfigError: no such retired key, or a live key already carries the label.
    """
    with family_lock(audit_log) as audit:
        backend = _open(settings, rw=True)
        try:
            family = _family(backend)
            ref = next((r for r in family.retired if r.label == label), None)
            if ref is None:
                raise ConfigError(f"no retired key {label!r} (the token holds {family.labels()})")
            if any(r.label == label for r in family.live):
                raise ConfigError(f"a live key is labelled {label!r} already; nothing restored")
            with backend.pool.session() as slot:
                key = _object(backend, slot, ref, fmt.retired_label(settings.key_label, ref.generation))
                restored = _set_usage(backend, key, True)
                backend._call(lambda: key.__setitem__(Attribute.LABEL, label))
            audit.append("restore-key", [label], **_record(settings, family.serial, ref), usage_restored=restored)
            return ref
        finally:
            backend.close()


def purge_key(settings: Pkcs11Settings, audit_log: Path, label: str) -> fmt.KeyRef:
    """Destroy retired generation ``label`` (C_DestroyObject): values under it are lost for good.

    Raises:
        ConfigError: ``label`` is not a retired key (a live key must be retired first).
    """
    with family_lock(audit_log) as audit:
        backend = _open(settings, rw=True)
        try:
            family = _family(backend)
            ref = next((r for r in family.retired if r.label == label), None)
            if ref is None:
                live = any(r.label == label for r in family.live)
                hint = "retire-key it first" if live else f"the token holds {family.labels()}"
                raise ConfigError(f"no retired key {label!r} to purge ({hint}); nothing destroyed")
            with backend.pool.session() as slot:
                key = _object(backend, slot, ref, fmt.retired_label(settings.key_label, ref.generation))
                backend._call(key.destroy)
            audit.append("purge-key", [label], **_record(settings, family.serial, ref))
            return ref
        finally:
            backend.close()


def demoted_at(audit_log: Path, family: Family, ref: fmt.KeyRef) -> float | None:
    """When ``ref`` stopped being current: the audit time of the next generation's creation.

    None when the audit log is missing or does not record it (a key made before the log).
    """
    import json
    from datetime import datetime

    later = [r.generation for r in family.live + family.retired if r.generation > ref.generation]
    if not later:
        return None
    successor = fmt.generation_label(ref.label.rsplit("-", 1)[0], min(later))
    try:
        with open(audit_log, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(record, dict)
            and record.get("action") in ("init-key", "rotate-key")
            and record.get("key_label") == successor
            and record.get("token_serial") == family.serial
        ):
            try:
                return datetime.strptime(str(record["time"]), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
            except (KeyError, ValueError):
                return None
    return None
