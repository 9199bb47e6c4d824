"""The local keyring backend: AES-256 KEKs in a versioned JSON file, exactly one active.

File shape::

    {"version": 1, "keks": [{"id": "3f9c0a1b2c3d4e5f", "created": "2026-05-09T07:35:25.123456Z",
                             "state": "active", "key": "<base64 of 32 bytes>"}]}

:class:`Keyring` is an immutable, validated snapshot usable offline (``snapshot-tools check
--keyring``): ``Keyring.load(path)``, ``.wrap``, ``.unwrap``, ``.active_key_id``,
``.knows_key_id``, ``.key_id_for``. :class:`LocalKeyringBackend` serves one to the plugin and
re-reads the file when a stat shows it changed.

Writers (:func:`save_keyring`, :func:`rotate_keyring`) hold an exclusive ``flock`` on a sidecar
``<keyring>.lock`` from read to atomic rename, so concurrent rotations never lose a KEK. A keyring
path that is a symlink is followed: the target is replaced (the symlink stays) and the lock and
temp file sit beside the target, so every path to one keyring shares one lock.

References: ``staging/src/k8s.io/kms/pkg/hierarchy`` (local KEK idea); aws-encryption-provider
``pkg/plugin`` (backend shape).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_plugin.errors import ConfigError, InvalidCiphertext, UnknownKeyId
from kms_plugin.keks import format as wire
from kms_plugin.keks.base import BackendStatus, Wrapped
from kms_plugin.keks.private_file import write_private

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

log = logging.getLogger("kms_plugin.keyring")

KEYRING_VERSION = 1
ACTIVE = "active"
DECRYPT_ONLY = "decrypt-only"
STATES = (ACTIVE, DECRYPT_ONLY)
# A KEK entry is ~190 bytes as written (indent=2), so 1 MiB holds ~5,500 KEKs: a daily rotation
# for 15 years without pruning. Anything larger is not a keyring; the cap also bounds what a
# reload reads and parses on the request path (and so its memory and time).
MAX_KEYRING_BYTES = 1 << 20
# Creation years a keyring may state: no KEK predates the epoch, and outside 1000-9999 the
# canonical time would not round-trip (short years) or the UTC conversion overflows.
_MIN_YEAR, _MAX_YEAR = 1970, 9999
LOCK_SUFFIX = ".lock"
_KEK_FIELDS = {"id", "created", "state", "key"}


def _canonical_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def key_id_for(kek_id: str, created: datetime) -> str:
    """The public key_id of a KEK: a hash of its identity (id and creation), never of the key."""
    identity = f"{kek_id}\x00{_canonical_time(created)}".encode()
    return "sha256:" + hashlib.sha256(b"kms-plugin-kek:" + identity).hexdigest()


@dataclass(frozen=True)
class Kek:
    """One key-encryption key. The key bytes never show in ``repr``."""

    id: str
    created: datetime
    state: str
    key: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        return key_id_for(self.id, self.created)

    def age_seconds(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.created.timestamp()

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "created": _canonical_time(self.created),
            "state": self.state,
            "key": base64.b64encode(self.key).decode("ascii"),
        }


def new_kek(existing_ids: Iterable[str] = (), now: datetime | None = None) -> Kek:
    """A fresh active KEK with a random 64-bit id not in ``existing_ids``."""
    taken = set(existing_ids)
    kek_id = secrets.token_hex(8)
    while kek_id in taken:
        kek_id = secrets.token_hex(8)
    when = now or datetime.now(UTC)
    return Kek(kek_id, when, ACTIVE, AESGCM.generate_key(bit_length=256))


class Keyring:
    """A validated, immutable set of KEKs with exactly one active."""

    def __init__(self, keks: Iterable[Kek], source: str = "<keyring>") -> None:
        self.keks: tuple[Kek, ...] = tuple(keks)
        self.source = source
        _validate(self.keks, source)
        self.active: Kek = next(k for k in self.keks if k.state == ACTIVE)
        self._by_id = {k.id: k for k in self.keks}
        self._by_key_id = {k.key_id: k for k in self.keks}
        # AESGCM objects hold an expanded key schedule; build them once.
        self._aead = {k.id: AESGCM(k.key) for k in self.keks}
        # Per-call constants of the write path, computed once per keyring.
        self._header = wire.header_for(self.active.id)
        self.max_plaintext = wire.MAX_CIPHERTEXT - len(self._header) - wire.NONCE_SIZE - wire.TAG_SIZE

    def __repr__(self) -> str:
        ids = ", ".join(f"{k.id}:{k.state}" for k in self.keks)
        return f"Keyring(source={self.source!r}, keks=[{ids}])"

    # -- offline API (also used by snapshot-tools check --keyring) ------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read and validate a keyring file; refuses files group/other may read or write.

        Raises:
            ConfigError: unreadable, unsafe, malformed or inconsistent file (one-line reason).
        """
        return load_keyring(path)[0]

    @property
    def active_key_id(self) -> str:
        return self.active.key_id

    def key_id_for(self, kek_id: str) -> str:
        """The key_id of a KEK this keyring holds, by KEK id."""
        kek = self._by_id.get(kek_id)
        if kek is None:
            raise UnknownKeyId(f"KEK id {kek_id!r} is not in keyring {self.source}")
        return kek.key_id

    def knows_key_id(self, key_id: str) -> bool:
        return key_id in self._by_key_id

    def wrap(self, plaintext: bytes) -> Wrapped:
        """Wrap under the active KEK; returns ``(ciphertext, key_id, annotations)``."""
        limit = self.max_plaintext
        if not plaintext:
            raise ValueError("plaintext is empty")
        if len(plaintext) > limit:
            raise ValueError(f"plaintext is {len(plaintext)} bytes; at most {limit} fit in 1 KiB")
        ciphertext = wire.seal_with_header(self._aead[self.active.id], self._header, plaintext)
        return Wrapped(ciphertext, self.active.key_id, {})

    def unwrap(
        self,
        ciphertext: bytes,
        key_id: str | None = None,
        annotations: Mapping[str, bytes] | None = None,
    ) -> bytes:
        """Unwrap by the KEK the header names; check ``key_id`` against it when given.

        Raises:
            UnknownKeyId: ``key_id`` or the header's KEK is not in this keyring.
            InvalidCiphertext: malformed, tampered or mismatched ciphertext, or annotations.
        """
        if key_id is not None and key_id not in self._by_key_id:
            raise UnknownKeyId(f"key_id {key_id} is not in keyring {self.source}")
        if annotations:
            raise InvalidCiphertext(
                "unexpected annotations "
                f"{sorted(annotations)!r}: the local keyring writes none"
            )
        parsed = wire.parse(ciphertext)
        kek = self._by_id.get(parsed.kek_id)
        if kek is None:
            raise UnknownKeyId(
                f"ciphertext names KEK id {parsed.kek_id} which keyring {self.source} does not hold"
            )
        if key_id is not None and kek.key_id != key_id:
            raise InvalidCiphertext(
                f"key_id {key_id} disagrees with KEK {kek.id} named in the ciphertext "
                f"(its key_id is {kek.key_id})"
            )
        return wire.open_parsed(self._aead[kek.id], parsed)

    # -- changes ---------------------------------------------------------------------------

    @classmethod
    def generate(cls, now: datetime | None = None) -> Keyring:
        return cls([new_kek(now=now)])

    def rotated(self, now: datetime | None = None) -> Keyring:
        """A new keyring: a fresh active KEK; the previous active one becomes decrypt-only."""
        fresh = new_kek((k.id for k in self.keks), now)
        demoted = [
            Kek(k.id, k.created, DECRYPT_ONLY, k.key) if k.state == ACTIVE else k for k in self.keks
        ]
        return Keyring([*demoted, fresh], self.source)

    def to_json_bytes(self) -> bytes:
        doc = {"version": KEYRING_VERSION, "keks": [k.to_json() for k in self.keks]}
        return (json.dumps(doc, indent=2) + "\n").encode()

    def describe(self, now: float | None = None) -> list[dict[str, Any]]:
        """Per-KEK facts safe to print: id, state, creation, age, key_id; never the key."""
        return [
            {
                "id": k.id,
                "state": k.state,
                "created": _canonical_time(k.created),
                "age_seconds": int(k.age_seconds(now)),
                "key_id": k.key_id,
            }
            for k in self.keks
        ]


def _validate(keks: tuple[Kek, ...], source: str) -> None:
    if not keks:
        raise ConfigError(f"keyring {source}: holds no KEKs")
    seen: set[str] = set()
    for kek in keks:
        if kek.id in seen:
            raise ConfigError(f"keyring {source}: duplicate KEK id {kek.id!r}")
        seen.add(kek.id)
    active = [k.id for k in keks if k.state == ACTIVE]
    if not active:
        raise ConfigError(f"keyring {source}: no active KEK (exactly one must be 'active')")
    if len(active) > 1:
        raise ConfigError(
            f"keyring {source}: {len(active)} active KEKs ({', '.join(active)}); exactly one allowed"
        )


def _brief(value: Any) -> str:
    """A raw JSON value for a one-line message: containers by kind, long scalars cut short."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_created(value: Any) -> datetime | None:
    """An aware UTC creation time, or None if ``value`` is not one we can also write back."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            return None
        when = when.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return when if _MIN_YEAR <= when.year <= _MAX_YEAR else None


def _parse_kek(entry: Any, index: int, source: str) -> Kek:
    where = f"keyring {source}: keks[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object")
    missing = _KEK_FIELDS - entry.keys()
    extra = entry.keys() - _KEK_FIELDS
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(sorted(missing))}")
    if extra:
        raise ConfigError(f"{where} has unknown field(s) {', '.join(sorted(extra))}")
    kek_id, created, state, key = (entry[f] for f in ("id", "created", "state", "key"))
    if not isinstance(kek_id, str) or not wire.KEK_ID_RE.fullmatch(kek_id):
        raise ConfigError(f"{where}: id must match {wire.KEK_ID_RE.pattern}")
    where = f"keyring {source}: KEK {kek_id}"
    if not isinstance(state, str) or state not in STATES:
        raise ConfigError(f"{where}: state must be one of {', '.join(STATES)}, not {_brief(state)}")
    when = _parse_created(created)
    if when is None:
        raise ConfigError(
            f"{where}: created must be an RFC 3339 time with a zone, "
            f"in years {_MIN_YEAR}-{_MAX_YEAR}"
        )
    try:
        raw = base64.b64decode(key, validate=True) if isinstance(key, str) else b""
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: key is not valid base64") from None
    if len(raw) != wire.KEY_SIZE:
        # Say the length only: never echo key material.
        raise ConfigError(f"{where}: key must be {wire.KEY_SIZE} bytes (AES-256), got {len(raw)}")
    return Kek(kek_id, when, state, raw)


def _decode_json(data: bytes, source: str) -> Any:
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"keyring {source}: malformed JSON at line {exc.lineno} column {exc.colno}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"keyring {source}: malformed JSON (not UTF-8)") from None
    except RecursionError:
        # json's C scanner recurses per nesting level; a keyring nests three deep.
        raise ConfigError(f"keyring {source}: malformed JSON (nested too deeply)") from None
    except ValueError as exc:  # e.g. a number over sys.get_int_max_str_digits() digits
        raise ConfigError(f"keyring {source}: malformed JSON ({_brief(str(exc))})") from None


def parse_keyring(data: bytes, source: str) -> Keyring:
    """Validate keyring JSON ``data`` (from ``source``, used in messages).

    Raises:
        ConfigError: anything but a valid keyring: oversized, not UTF-8, malformed or too deeply
            nested JSON, wrong types or values. One line; never key material.
    """
    if len(data) > MAX_KEYRING_BYTES:
        raise ConfigError(f"keyring {source}: larger than {MAX_KEYRING_BYTES} bytes")
    doc = _decode_json(data, source)
    try:
        return _parse_doc(doc, source)
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        # _parse_doc checks every type it reads; this backstop keeps whatever slipped through a
        # keyring error (exit 2, or "reload failed" while serving), never an internal one.
        raise ConfigError(f"keyring {source}: unreadable ({type(exc).__name__})") from None


def _parse_doc(doc: Any, source: str) -> Keyring:
    if not isinstance(doc, dict):
        raise ConfigError(f"keyring {source}: top level must be an object")
    version = doc.get("version")
    if type(version) is not int or version != KEYRING_VERSION:
        raise ConfigError(
            f"keyring {source}: unsupported version {_brief(version)} (expected {KEYRING_VERSION})"
        )
    keks = doc.get("keks")
    if not isinstance(keks, list):
        raise ConfigError(f"keyring {source}: 'keks' must be a list")
    return Keyring((_parse_kek(e, i, source) for i, e in enumerate(keks)), source)


def stat_signature(st: os.stat_result) -> tuple[int, ...]:
    """What tells us a keyring file changed: inode, size, mtime, ctime (chmod too), mode."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def load_keyring(path: str | os.PathLike[str]) -> tuple[Keyring, tuple[int, ...]]:
    """Load and validate a keyring file; returns it with the stat signature it was read at.

    Raises:
        ConfigError: not a readable regular file of at most :data:`MAX_KEYRING_BYTES`, unsafe
            mode, or not a valid keyring (:func:`parse_keyring`).
    """
    source = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; non-regular files are refused.
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"keyring {source}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"keyring {source}: not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"keyring {source}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others "
                "read or write it; run chmod 600"
            )
        data = _read_bounded(fd, source, st.st_size)
    finally:
        os.close(fd)
    return parse_keyring(data, source), stat_signature(st)


def _read_bounded(fd: int, source: str, size: int) -> bytes:
    """At most :data:`MAX_KEYRING_BYTES` from ``fd``, also if the file grows while we read."""
    too_big = f"keyring {source}: larger than {MAX_KEYRING_BYTES} bytes"
    if size > MAX_KEYRING_BYTES:
        raise ConfigError(too_big)
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = os.read(fd, MAX_KEYRING_BYTES + 1 - total)
        except OSError as exc:
            raise ConfigError(f"keyring {source}: cannot read: {exc.strerror}") from None
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > MAX_KEYRING_BYTES:
            raise ConfigError(too_big)
        chunks.append(chunk)


def _resolve(path: str | os.PathLike[str]) -> Path:
    """The file a keyring path names: a symlink is followed to its (maybe missing) target."""
    given = Path(path)
    return Path(os.path.realpath(given)) if given.is_symlink() else given


@contextlib.contextmanager
def keyring_lock(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the exclusive writer lock of the keyring ``path`` names; yields that file's path.

    The lock is ``flock`` on ``<file>.lock`` beside the symlink-resolved file: created 0600, not
    followed if it is a symlink, and never deleted (unlinking it would let two writers lock two
    inodes of one name). Readers need no lock: writers replace the keyring by rename. Blocks
    until the holder is done; a writer holds it for one read, fsync and rename.

    Raises:
        ConfigError: ``path`` names something other than a regular file; the lock file cannot be
            opened, is not a regular file, or cannot be locked.
    """
    target = _resolve(path)
    if target.exists() and not target.is_file():
        # A directory or device is no keyring: do not leave a lock (or log) beside it.
        raise ConfigError(f"keyring {path}: not a regular file")
    lock_path = target.with_name(target.name + LOCK_SUFFIX)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(lock_path, flags, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"keyring {path}: cannot open lock file {lock_path}: {exc.strerror}"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"keyring {path}: lock file {lock_path} is not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise ConfigError(f"keyring {path}: cannot lock {lock_path}: {exc.strerror}") from None
        yield target
    finally:
        os.close(fd)  # releases the lock


def save_keyring(path: str | os.PathLike[str], keyring: Keyring, *, replace: bool) -> None:
    """Write ``keyring`` atomically with mode 0600, under :func:`keyring_lock`.

    A symlink at ``path`` stays; with ``replace`` its target is replaced.

    Raises:
        ConfigError: ``path`` exists (or is a symlink) and ``replace`` is false, or the write fails.
    """
    given = Path(path)
    if not replace and (given.exists() or given.is_symlink()):
        raise ConfigError(f"keyring {given}: already exists (use --force to overwrite)")
    with keyring_lock(given) as target:
        _write_keyring(target, keyring, replace=replace)


def rotate_keyring(
    path: str | os.PathLike[str], now: datetime | None = None
) -> tuple[Keyring, Keyring]:
    """Add a fresh active KEK to the keyring file ``path``; the active one becomes decrypt-only.

    Read, rotation and atomic replace happen under one :func:`keyring_lock`, so concurrent
    rotations each add their KEK and none is lost. Returns ``(before, after)``.

    Raises:
        ConfigError: the file is not a valid keyring, or the lock or the write fails.
    """
    with keyring_lock(path) as target:
        old = Keyring.load(target)
        new = old.rotated(now)
        _write_keyring(target, new, replace=True)
    return old, new


def _write_keyring(target: Path, keyring: Keyring, *, replace: bool) -> None:
    """Temp file beside ``target``, 0600, fsync, then rename (or link, to never clobber)."""
    write_private(target, keyring.to_json_bytes(), replace=replace, what="keyring", exists="use --force to overwrite")


class LocalKeyringBackend:
    """Serves a keyring file; re-reads it when a stat shows a change.

    A reload that finds a bad file keeps serving the last good keyring (so reads and writes go
    on) and reports unhealthy with the reason until the file is fixed: a restart would refuse to
    start, so the operator must hear about it now. Such problems are user-caused, so /livez stays
    up.
    """

    name = "local"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        on_reload: Callable[[str, Keyring | None, str], None] | None = None,
        retry_interval: float = 1.0,
    ) -> None:
        self.path = os.fspath(path)
        self._keyring, self._sig = load_keyring(self.path)
        self._lock = threading.Lock()
        self._error: str | None = None
        self._failed_sig: tuple[int, ...] | None = None
        self._failed_at = 0.0
        self._retry_interval = retry_interval
        self._on_reload = on_reload

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    def refresh(self) -> Keyring:
        """Stat the file (cheap) and reload it if it changed; returns the keyring to use."""
        try:
            sig: tuple[int, ...] | None = stat_signature(os.stat(self.path))
        except OSError:
            sig = None
        if sig == self._sig:
            return self._keyring
        if (
            self._error is not None
            and sig == self._failed_sig
            and time.monotonic() - self._failed_at < self._retry_interval
        ):
            return self._keyring
        with self._lock:
            if sig != self._sig:
                self._reload()
        return self._keyring

    def _reload(self) -> None:
        try:
            keyring, sig = load_keyring(self.path)
        except ConfigError as exc:
            try:
                self._failed_sig = stat_signature(os.stat(self.path))
            except OSError:
                self._failed_sig = None
            self._failed_at = time.monotonic()
            first = self._error != str(exc)
            self._error = str(exc)
            if first:
                log.warning("keyring reload failed, serving the previous keyring: %s", exc)
            if self._on_reload:
                self._on_reload("error", None, str(exc))
            return
        changed = keyring.active_key_id != self._keyring.active_key_id
        self._keyring, self._sig, self._error = keyring, sig, None
        log.info(
            "keyring reloaded: %d KEK(s), active %s, key_id %s%s",
            len(keyring.keks),
            keyring.active.id,
            keyring.active_key_id,
            " (rotated)" if changed else "",
        )
        if self._on_reload:
            self._on_reload("ok", keyring, "")

    def status(self) -> BackendStatus:
        keyring = self.refresh()
        if self._error is not None:
            return BackendStatus(
                keyring.active_key_id, False, f"keyring reload failed: {self._error}", True
            )
        return BackendStatus(keyring.active_key_id, True)

    def wrap(self, plaintext: bytes) -> Wrapped:
        return self.refresh().wrap(plaintext)

    def unwrap(
        self, ciphertext: bytes, key_id: str | None, annotations: Mapping[str, bytes]
    ) -> bytes:
        if key_id is not None and not key_id:
            raise UnknownKeyId("key_id is empty")
        return self.refresh().unwrap(ciphertext, key_id, annotations)

    def max_plaintext(self) -> int:
        return self._keyring.max_plaintext
