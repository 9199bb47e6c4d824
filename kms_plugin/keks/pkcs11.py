"""The PKCS#11 backend: an AES-256 key held in an HSM token wraps seeds (or local KEKs) with AES-GCM.

* The key family ``--pkcs11-key-label K`` is every AES secret key object labelled ``K-<n>``;
  the highest n is current (naming, key_id and wire format: :mod:`kms_plugin.keks.pkcs11format`).
  Older generations stay usable for Decrypt as long as their objects exist.
* Rotation without restart: :meth:`probe` (every ``--probe-interval``) re-reads the token's key
  list, so a key made by ``kms-plugin pkcs11 rotate-key`` becomes current within one interval
  (Status, then Encrypt, report its key_id); a Decrypt naming a key the list does not hold re-reads
  it at once (at most once a second), so values written by another plugin instance that already
  rotated are read without waiting.
* :meth:`status` never touches the token: it returns the verdict of the last probe (re-read of
  the key list plus a CKM_AES_GCM round trip). A removed token, a wrong PIN or a missing key
  are user-caused (``/livez`` stays up; ``/healthz`` and Status say why).
* Retired keys (``K-<n>.retired``, :mod:`kms_plugin.keks.pkcs11life`) are dropped from the key
  list at the next scan; a Decrypt needing one fails with :class:`UnknownKeyId` naming
  ``restore-key`` (also when a cached handle meets the token's refusal, CKA_DECRYPT being
  cleared), and :meth:`offers` tells the local-KEK hierarchy to forget local KEKs under it.
* Sessions: :mod:`kms_plugin.keks.pkcs11pool`.

References: aws-encryption-provider ``pkg/plugin/plugin_v2.go``; :mod:`kms_plugin.keks.aws` (the
same probe/status split).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from kms_plugin.errors import (
    BackendThrottled,
    ConfigError,
    Error,
    InvalidCiphertext,
    KeyUnavailable,
    UnknownKeyId,
)
from kms_plugin.keks import pkcs11format as fmt
from kms_plugin.keks.base import BackendStatus, Wrapped
from kms_plugin.keks.pkcs11pool import SessionPool, classify, is_gone

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from kms_plugin.keks.pkcs11pool import Pkcs11Settings, Slot

log = logging.getLogger("kms_plugin.pkcs11")
T = TypeVar("T")

RESCAN_MIN_INTERVAL = 1.0
# Failures of a decrypt that are answers about the ciphertext (SoftHSM reports a failed GCM tag
# as CKR_GENERAL_ERROR: told apart from a dead token by looking the key up again).
_BAD_CIPHERTEXT = (p11.EncryptedDataInvalid, p11.EncryptedDataLenRange, p11.DataInvalid, p11.DataLenRange)


def _retired_message(label: str) -> str:
    return (
        f"the value was wrapped by PKCS#11 key {label}, which is retired "
        f"(kms-plugin pkcs11 restore-key {label} brings it back)"
    )


def _gcm(nonce: bytes, aad: bytes) -> GCMParams:
    return GCMParams(nonce, aad, fmt.TAG_BITS)


class Pkcs11Backend:
    """A :class:`~kms_plugin.keks.base.KEKBackend` over one key family in one PKCS#11 token."""

    name = "pkcs11"

    def __init__(
        self, settings: Pkcs11Settings, *, rw: bool = False, on_call: Callable[[str, str], None] | None = None
    ) -> None:
        fmt.check_base_label(settings.key_label)
        self.settings = settings
        self._on_call = on_call  # (operation, outcome) of every wrap/unwrap in the token: metrics
        self.pool = SessionPool(settings, rw=rw)
        self._lock = threading.Lock()
        self._by_ref: dict[bytes, fmt.KeyRef] = {}
        self._retired: dict[bytes, fmt.KeyRef] = {}  # generations relabelled K-<n>.retired
        self._retired_ids: frozenset[str] = frozenset()
        self._current: fmt.KeyRef | None = None
        self._scanned_at = float("-inf")
        self._scan_ok = False
        self._status = BackendStatus("", False, "pkcs11: not probed yet", True)

    # -- key list ----------------------------------------------------------------------------

    def start(self) -> None:
        """Load the module and read the PIN once (either failing is a ConfigError, exit 2), then probe.

        A missing token, a wrong PIN or no key start anyway, unhealthy: the probe picks them up
        when they are fixed.
        """
        self.pool.load()
        self.settings.pin.read()  # no PIN at all, or an unsafe PIN file: refuse to start (exit 2)
        self.probe()

    def scan(self) -> list[fmt.KeyRef]:
        """Every generation of the family in the token, oldest first.

        Raises:
            KeyUnavailable: the token is gone, or two objects carry one label.
        """
        return self.scan_all()[0]

    def scan_all(self) -> tuple[list[fmt.KeyRef], list[fmt.KeyRef]]:
        """(live generations, retired generations), oldest first.

        A retired generation's KeyRef carries its family label ``K-<n>`` (its key_id is over that).

        Raises:
            KeyUnavailable: the token is gone, or two objects carry one label.
        """
        base = self.settings.key_label
        refs: list[fmt.KeyRef] = []
        retired: list[fmt.KeyRef] = []
        with self.pool.session() as slot:
            found = self._call(lambda: list(slot.session.get_objects(
                {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES}
            )))
            for obj in found:
                label = str(obj.label or "")
                n = fmt.generation_of(base, label)
                into = refs
                if n is None:
                    n, into = fmt.retired_generation_of(base, label), retired
                    label = fmt.generation_label(base, n) if n is not None else label
                if n is None:
                    continue
                cka_id = bytes(self._attr(obj, Attribute.ID) or b"")
                into.append(fmt.KeyRef(label, n, cka_id, fmt.key_id_for(self.pool.serial, cka_id, label)))
        labels = [r.label for r in refs + retired]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise KeyUnavailable(f"pkcs11: token has several key objects labelled {dup[0]!r}; remove all but one")
        return sorted(refs, key=lambda r: r.generation), sorted(retired, key=lambda r: r.generation)

    def refresh(self) -> fmt.KeyRef:
        """Re-read the key list; the current generation.

        Raises:
            KeyUnavailable: no key of the family (or the token/PIN problem behind it).
        """
        try:
            refs, retired = self.scan_all()
        except Error:
            with self._lock:
                self._scan_ok, self._scanned_at = False, time.monotonic()
            raise
        current = fmt.pick_current(refs)
        with self._lock:
            old = self._current
            # Keys seen once stay known: a token that answers an empty list (SoftHSM whose store
            # vanished) must not turn its values into "wrong key"; a deleted key then fails as
            # unavailable when its object is looked up. A retired key is dropped at once.
            self._retired = {r.ref: r for r in retired}
            self._retired_ids = frozenset(r.key_id for r in retired)
            live = {r.ref: r for r in refs}
            kept = {ref: r for ref, r in self._by_ref.items() if ref not in self._retired}
            self._by_ref = {**kept, **live}
            self._current = current
            self._scan_ok, self._scanned_at = current is not None, time.monotonic()
        if current is None:
            # SoftHSM answers an empty search when its token store vanished: reconnect next time
            # so a removed token shows as such.
            self.pool.mark_broken()
            raise KeyUnavailable(
                f"pkcs11: token {self.settings.token_label!r} holds no key labelled "
                f"{self.settings.key_label}-<n> (removed? else kms-plugin pkcs11 init-key)"
            )
        if old is not None and old.key_id != current.key_id:
            log.info("pkcs11 key rotated: %s -> %s (key_id %s)", old.label, current.label, current.key_id)
        return current

    def offers(self, key_id: str) -> bool:
        """False for a retired key's key_id: the hierarchy then drops local KEKs it cached under it."""
        return key_id not in self._retired_ids

    def keys(self) -> list[fmt.KeyRef]:
        with self._lock:
            return sorted(self._by_ref.values(), key=lambda r: r.generation)

    def current_key_id(self) -> str | None:
        """The key_id Status reports (offline readers: the token is read on first use)."""
        if self._current is None:
            self.refresh()
        return self._current.key_id if self._current else None

    # -- health ------------------------------------------------------------------------------

    def probe(self) -> BackendStatus:
        """Re-read the key list and run a round trip; cache the verdict. Never raises."""
        try:
            current = self.refresh()
            seed = os.urandom(32)
            ok = self.unwrap(self.wrap(seed).ciphertext, current.key_id, {}) == seed
            reason = "ok" if ok else "pkcs11: round trip returned a different value"
            status = BackendStatus(current.key_id, ok, reason, False)
        except Error as exc:
            last = self._current
            user = isinstance(exc, (KeyUnavailable, BackendThrottled, ConfigError))
            status = BackendStatus(last.key_id if last else "", False, str(exc), user)
        if (status.healthy, status.reason) != (self._status.healthy, self._status.reason):
            level = logging.INFO if status.healthy else logging.WARNING
            log.log(level, "PKCS#11 health: %s (key_id %s)", status.reason, status.key_id or "-")
        self._status = status
        return status

    def status(self) -> BackendStatus:
        return self._status

    def max_plaintext(self) -> int:
        return fmt.MAX_PLAINTEXT

    def close(self) -> None:
        self.pool.close()

    # -- wrap / unwrap -----------------------------------------------------------------------

    def wrap(self, plaintext: bytes) -> Wrapped:
        return self._counted("Encrypt", lambda: self._wrap(plaintext))

    def unwrap(
        self, ciphertext: bytes, key_id: str | None, annotations: Mapping[str, bytes]
    ) -> bytes:
        return self._counted("Decrypt", lambda: self._unwrap(ciphertext, key_id, annotations))

    def _counted(self, operation: str, fn: Callable[[], T]) -> T:
        if self._on_call is None:
            return fn()
        try:
            result = fn()
        except Error as exc:
            self._on_call(operation, type(exc).__name__)
            raise
        self._on_call(operation, "ok")
        return result

    def _wrap(self, plaintext: bytes) -> Wrapped:
        current = self._current
        if current is None:
            raise KeyUnavailable(self._status.reason if not self._status.healthy else "pkcs11: no current key")
        if not plaintext or len(plaintext) > fmt.MAX_PLAINTEXT:
            raise ValueError(f"plaintext must be 1..{fmt.MAX_PLAINTEXT} bytes")
        header = fmt.header(current.ref)
        nonce = os.urandom(fmt.NONCE_SIZE)
        with self.pool.session() as slot:
            key = self._key(slot, current)
            body = self._call(lambda: key.encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=_gcm(nonce, header)
            ))
        return Wrapped(header + nonce + bytes(body), current.key_id, {})

    def _unwrap(
        self, ciphertext: bytes, key_id: str | None, annotations: Mapping[str, bytes]
    ) -> bytes:
        if annotations:
            raise InvalidCiphertext(f"unexpected annotations {sorted(annotations)!r}: the PKCS#11 backend writes none")
        sealed = fmt.parse(ciphertext)
        ref = self._find(sealed.ref)
        if key_id is not None and key_id != ref.key_id:
            raise UnknownKeyId(f"key_id {key_id[:80]!r} is not the one of the key that wrapped the value")
        with self.pool.session() as slot:
            key = self._key(slot, ref)
            try:
                return bytes(key.decrypt(
                    sealed.body, mechanism=Mechanism.AES_GCM, mechanism_param=_gcm(sealed.nonce, sealed.header)
                ))
            except _BAD_CIPHERTEXT:
                raise InvalidCiphertext("ciphertext failed authentication under its PKCS#11 key") from None
            except p11.GeneralError:
                if self._still_there(slot, ref):
                    raise InvalidCiphertext("ciphertext failed authentication under its PKCS#11 key") from None
                self.pool.mark_broken()
                raise KeyUnavailable(f"pkcs11: token {self.settings.token_label!r} stopped answering") from None
            except p11.PKCS11Error as exc:
                # Retired since this process last listed the keys (CKA_DECRYPT cleared: SoftHSM
                # answers CKR_KEY_FUNCTION_NOT_PERMITTED as a bare PKCS11Error).
                slot.keys.pop(ref.cka_id, None)
                now = self._label_now(slot, ref)
                if now is not None and now != ref.label:
                    with self._lock:
                        self._by_ref.pop(ref.ref, None)
                    raise UnknownKeyId(_retired_message(ref.label)) from None
                if is_gone(exc):
                    self.pool.mark_broken()
                raise classify(exc, self.settings.token_label) from None

    def _find(self, ref: bytes) -> fmt.KeyRef:
        with self._lock:
            found = self._by_ref.get(ref)
            stale = time.monotonic() - self._scanned_at >= RESCAN_MIN_INTERVAL
        if found is None and stale:
            self.refresh()  # a key made since the last probe (another instance rotated)
            with self._lock:
                found = self._by_ref.get(ref)
        with self._lock:
            retired = self._retired.get(ref)
        if found is None and retired is not None:
            raise UnknownKeyId(_retired_message(retired.label))
        if found is None and not self._scan_ok:
            # The token did not answer its key list: nothing can be said about the value.
            raise KeyUnavailable(self._status.reason if not self._status.healthy else "pkcs11: key list unreadable")
        if found is None:
            raise UnknownKeyId(
                f"the value was wrapped by a key not in family {self.settings.key_label!r} of this token"
            )
        return found

    def _key(self, slot: Slot, ref: fmt.KeyRef) -> Any:
        key = slot.keys.get(ref.cka_id)
        if key is None:
            found = self._call(lambda: list(slot.session.get_objects(
                {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.ID: ref.cka_id, Attribute.LABEL: ref.label}
            )))
            if len(found) != 1:
                raise KeyUnavailable(f"pkcs11: key {ref.label!r} is no longer in token {self.settings.token_label!r}")
            key = slot.keys[ref.cka_id] = found[0]
        return key

    def _still_there(self, slot: Slot, ref: fmt.KeyRef) -> bool:
        try:
            query = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.ID: ref.cka_id}
            return bool(list(slot.session.get_objects(query)))
        except p11.PKCS11Error:
            return False

    def _label_now(self, slot: Slot, ref: fmt.KeyRef) -> str | None:
        """The label the object of ``ref`` carries now (None: gone, or the token cannot say)."""
        try:
            query = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.ID: ref.cka_id}
            found = list(slot.session.get_objects(query))
            return str(found[0].label or "") if len(found) == 1 else None
        except p11.PKCS11Error:
            return None

    def _attr(self, obj: Any, attribute: Attribute) -> Any:
        return self._call(lambda: obj[attribute])

    def _call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` with python-pkcs11 failures classified once; token-gone ones break the pool."""
        try:
            return fn()
        except p11.PKCS11Error as exc:
            if is_gone(exc):
                self.pool.mark_broken()
            raise classify(exc, self.settings.token_label) from None


# -- key management (kms-plugin pkcs11 init-key / rotate-key / list-keys) -------------------------


class NewKey(NamedTuple):
    """What :func:`new_generation` made: the previous current key (or None), the new one, the token serial."""

    old: fmt.KeyRef | None
    new: fmt.KeyRef
    serial: str


def new_generation(settings: Pkcs11Settings, *, first: bool) -> NewKey:
    """Make key ``K-<n+1>`` in the token (``first``: refuse if the family exists; else require it).

    The key is generated in the token: AES-256, sensitive, never extractable, encrypt/decrypt only.
    Callers that may race (two rotations) hold the family lock (:mod:`.pkcs11life`).

    Raises:
        ConfigError: init on an existing family, rotate without one, or a token/PIN problem.
    """
    backend = Pkcs11Backend(settings, rw=True)
    try:
        backend.pool.load()
        try:
            refs, retired = backend.scan_all()
        except Error as exc:
            raise ConfigError(str(exc)) from None
        old = fmt.pick_current(refs)
        label = settings.key_label
        if first and old is not None:
            raise ConfigError(f"token already holds {old.label}; use kms-plugin pkcs11 rotate-key")
        if not first and old is None:
            raise ConfigError(f"token holds no key {label}-<n>; use kms-plugin pkcs11 init-key")
        # Past every retired generation too: a label is never reused (restore-key needs it free).
        n = max((r.generation for r in refs + retired), default=0) + 1
        new_label = fmt.generation_label(label, n)
        cka_id = os.urandom(fmt.CKA_ID_SIZE)
        with backend.pool.session() as slot:
            backend._call(lambda: slot.session.generate_key(
                KeyType.AES, 256, id=cka_id, label=new_label, store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.PRIVATE: True,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                },
            ))
        try:
            new = backend.refresh()
        except Error as exc:
            raise ConfigError(f"{new_label} was made but cannot be read back: {exc}") from None
        if new.label != new_label:
            raise ConfigError(f"{new_label} was made but {new.label} is current (a concurrent rotation?)")
        return NewKey(old, new, backend.pool.serial)
    finally:
        backend.close()


def describe_keys(settings: Pkcs11Settings) -> list[dict[str, Any]]:
    """One row per generation: label, generation, key_id, current, sensitive/extractable flags."""
    backend = Pkcs11Backend(settings)
    try:
        backend.pool.load()
        try:
            refs = backend.scan()
        except Error as exc:
            raise ConfigError(str(exc)) from None
        current = fmt.pick_current(refs)
        rows = []
        with backend.pool.session() as slot:
            for ref in refs:
                key = backend._key(slot, ref)
                flags = (bool(backend._attr(key, Attribute.SENSITIVE)), bool(backend._attr(key, Attribute.EXTRACTABLE)))
                rows.append({
                    "label": ref.label,
                    "generation": ref.generation,
                    "key_id": ref.key_id,
                    "current": ref is current,
                    "sensitive": flags[0],
                    "extractable": flags[1],
                })
        return rows
    finally:
        backend.close()
