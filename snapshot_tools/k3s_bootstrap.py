"""K3s/RKE2 bootstrap data: the encryption config every snapshot carries, sealed with the token.

K3s (and RKE2, which builds the same packages) keeps its bootstrap files - cluster CAs, the
service-account key, ``server/cred/encryption-config.json`` and ``encryption-state.json`` - in
the datastore under ``/bootstrap/<hash>``, encrypted with the server token, so a restored
snapshot carries them. This module finds those records, opens the one the token names (the token
normalised by :mod:`snapshot_tools.k3s_token`), decrypts the value and returns the files as data,
and adds the embedded config to a command's key set; it writes nothing and prints nothing. The
``keys`` report is :mod:`snapshot_tools.k3s_keys`.

* The key is ``/bootstrap/`` + the first 12 hex characters of sha256(passphrase); the passphrase
  is the *normalised* token (only its password part). Old releases also left the empty-token key
  (``/bootstrap/e3b0c44298fc``, passphrase ``""``) and the key of the token exactly as given; a
  reader tries the three in that order. A zero-length value is a lock a starting server writes
  before the data, not ciphertext.
* Value: ``"<salt: 16 hex chars>:" + base64(nonce[12] || AES-256-GCM ciphertext || tag[16])``,
  key = PBKDF2-HMAC-SHA1(passphrase, the 16 *ASCII* salt bytes, 4096 rounds, 32 bytes), no AAD.
* Plaintext: JSON ``{"<Field>": {"Timestamp": ..., "Content": "<base64>"}}`` (current) or
  ``{"<Field>": "<base64>"}`` (legacy, before timestamps). ``EncryptionConfig`` is the config
  file; ``EncryptionHash`` (early releases: ``EncryptionState``) the state ``<stage>-<sha256>``.

Nothing here ever puts a token, a passphrase or file content into a message or a ``repr``.

References: ``spec/k3s-rke2-bootstrap.md``; k3s-io/k3s ``pkg/cluster/encrypt.go`` (``storageKey``,
``keyHash``, ``encrypt``/``decrypt``), ``pkg/cluster/storage.go`` (``migrateTokens``, the lock
of ``storageBootstrap``), ``pkg/util/token.go`` (``ShortHash``, ``NormalizeToken``),
``pkg/clientaccess/token.go`` (``parseToken``), ``pkg/bootstrap/bootstrap.go`` (``File``),
``pkg/secretsencrypt/config.go`` (stages).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from snapshot_tools.errors import BootstrapError, ConfigError, InvalidCiphertext, TokenError
from snapshot_tools.inputs import opened
from snapshot_tools.k3s_token import normalize_token, short_hash
from snapshot_tools.keysets import ConfigBytes, load_keyset
from snapshot_tools.sources import open_record_source

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from contextlib import ExitStack
    from pathlib import Path

    from snapshot_tools.inputs import S3Options, SnapshotInput
    from snapshot_tools.keysets import KeySet
    from snapshot_tools.live_etcd import EtcdTarget
    from snapshot_tools.snapshot import Record
    from snapshot_tools.unwrap import KeyAccess

__all__ = [
    "BOOTSTRAP_PREFIX",
    "BootstrapData",
    "BootstrapFile",
    "BootstrapRecord",
    "Embedded",
    "EncryptionState",
    "bootstrap_record",
    "decrypt_value",
    "embedded_configs",
    "find_bootstrap",
    "keyset_for",
    "list_bootstrap",
    "parse_plaintext",
    "parse_state",
    "prepare_keyset",
    "read_bootstrap",
]

BOOTSTRAP_PREFIX = b"/bootstrap/"
KDF_ITERATIONS = 4096
KEY_SIZE = 32
SALT_LENGTH = 16  # token.Random(8), hex-encoded; PBKDF2 takes the hex text
NONCE_SIZE = 12
TAG_SIZE = 16
STATE_FIELDS = ("EncryptionHash", "EncryptionState")  # the latter in early secrets-encrypt releases
CONFIG_FIELD = "EncryptionConfig"
# Stages written to encryption-state.json (pkg/secretsencrypt/config.go); others only annotate.
_STATE = re.compile(r"([a-z_]+)-([0-9a-f]{64})")


# -- records --------------------------------------------------------------------------------------


class _Latest(Protocol):
    """Anything with a latest view: a :class:`~snapshot_tools.sources.RecordSource` or a Snapshot."""

    def latest(self, prefix: bytes = b"") -> Iterator[Record]: ...


@dataclass(frozen=True)
class BootstrapRecord:
    """One live ``/bootstrap/*`` key. ``token_hash`` is the 12-hex suffix: which token it needs."""

    key: str
    token_hash: str
    size: int
    revision: int
    value: bytes = field(repr=False, compare=False)

    @property
    def lock(self) -> bool:
        """A zero-length value: the lock a first server writes before the data, not data."""
        return self.size == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "token_hash": self.token_hash,
            "size": self.size,
            "revision": self.revision,
            "kind": "lock" if self.lock else "data",
        }


def list_bootstrap(source: _Latest) -> list[BootstrapRecord]:
    """Every live ``/bootstrap/*`` record of the keyspace (at the etcd root, not under a prefix)."""
    return [bootstrap_record(rec) for rec in source.latest(BOOTSTRAP_PREFIX)]


def bootstrap_record(rec: Record) -> BootstrapRecord:
    """A live record whose key starts with :data:`BOOTSTRAP_PREFIX`, as a bootstrap record."""
    key = rec.key.decode("utf-8", "backslashreplace")
    return BootstrapRecord(key, key[len(BOOTSTRAP_PREFIX) :], len(rec.value), rec.mod_revision, rec.value)


# -- the value -----------------------------------------------------------------------------------


def _corrupt(record: str, reason: str) -> BootstrapError:
    return BootstrapError(f"bootstrap record {record} is damaged: {reason}")


def decrypt_value(passphrase: str, value: bytes, record: str = "/bootstrap") -> bytes:
    """The plaintext of a bootstrap value (``pkg/cluster/encrypt.go`` ``decrypt``).

    Raises:
        BootstrapError: the value is not ``salt:base64`` of at least a nonce and a tag.
        InvalidCiphertext: the GCM tag does not verify (wrong passphrase or tampered value).
    """
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise _corrupt(record, "not ASCII text") from None
    salt, sep, b64 = text.partition(":")
    if not sep:
        raise _corrupt(record, "invalid cipher text, not : delimited")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise _corrupt(record, "the cipher text is not base64") from None
    if len(blob) < NONCE_SIZE + TAG_SIZE:
        raise _corrupt(record, f"the cipher text is {len(blob)} bytes, shorter than a nonce and a tag")
    key = hashlib.pbkdf2_hmac("sha1", passphrase.encode(), salt.encode("ascii"), KDF_ITERATIONS, KEY_SIZE)
    try:
        return AESGCM(key).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], None)
    except InvalidTag:
        raise InvalidCiphertext("bootstrap data does not decrypt with this passphrase") from None


@dataclass(frozen=True)
class BootstrapFile:
    """One bootstrap file: its field name, stored mtime (RFC 3339 text; ``None`` in the legacy
    format) and content. ``content`` never shows in ``repr``."""

    name: str
    timestamp: str | None
    content: bytes = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """Name, timestamp and size only: contents are keys and certificates."""
        return {"name": self.name, "timestamp": self.timestamp, "size": len(self.content)}


class Plaintext(NamedTuple):
    """The decoded bootstrap document: ``current`` or ``legacy`` format, files by field name."""

    format: str
    files: dict[str, BootstrapFile]


def _b64(text: Any, record: str, name: str) -> bytes:
    if text is None:  # Go marshals a nil []byte as null
        return b""
    if not isinstance(text, str):
        raise _corrupt(record, f"bootstrap file {name}: content is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _corrupt(record, f"bootstrap file {name}: content is not base64") from None


def parse_plaintext(data: bytes, record: str = "/bootstrap") -> Plaintext:
    """Decode the plaintext JSON: ``map[string]File`` (current) or ``map[string][]byte`` (legacy).

    Raises:
        BootstrapError: not a JSON object of either shape.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _corrupt(record, "the decrypted data is not JSON") from None
    if not isinstance(doc, dict):
        raise _corrupt(record, "the decrypted data is not a JSON object")
    names = [str(k) for k in doc]
    if all(isinstance(v, str) or v is None for v in doc.values()) and doc:
        files = {n: BootstrapFile(n, None, _b64(v, record, n)) for n, v in zip(names, doc.values(), strict=True)}
        return Plaintext("legacy", files)
    files = {}
    for n, v in zip(names, doc.values(), strict=True):
        if not isinstance(v, dict) or not set(v) <= {"Timestamp", "Content"}:
            raise _corrupt(record, f"bootstrap file {_safe_name(n)}: not a {{Timestamp, Content}} object")
        stamp = v.get("Timestamp")
        if stamp is not None and not isinstance(stamp, str):
            raise _corrupt(record, f"bootstrap file {_safe_name(n)}: Timestamp is not a string")
        files[n] = BootstrapFile(n, stamp, _b64(v.get("Content"), record, _safe_name(n)))
    return Plaintext("current", files)


_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{0,40}")


def _safe_name(name: str) -> str:
    return name if _FIELD_NAME.fullmatch(name) else "<field>"


class EncryptionState(NamedTuple):
    """``encryption-state.json``: the secrets-encrypt stage and the config hash it was written for.

    ``stage``/``hash`` are ``None`` when the content is not ``<stage>-<sha256 hex>``; ``matches``
    says whether ``hash`` equals sha256 of the embedded config bytes (``None``: nothing to compare).
    """

    field: str
    stage: str | None
    hash: str | None
    matches: bool | None

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "stage": self.stage, "hash": self.hash, "matches_config": self.matches}


def parse_state(field_name: str, content: bytes, config: bytes | None) -> EncryptionState:
    """Read a state file's content against the config bytes it should describe."""
    m = _STATE.fullmatch(content.decode("ascii", "replace").strip())
    if m is None:
        return EncryptionState(field_name, None, None, None)
    stage, digest = m.group(1), m.group(2)
    matches = None if config is None else hashlib.sha256(config).hexdigest() == digest
    return EncryptionState(field_name, stage, digest, matches)


# -- finding and opening the record ---------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapData:
    """The bootstrap data a token opened, and what else the snapshot holds under ``/bootstrap``.

    ``origin`` (``<snapshot>#/bootstrap/<hash>``) names the embedded config in reports;
    ``variant`` says which key opened it: ``token`` (the normalised token, as K3s
    writes today), ``empty-token`` or ``unnormalised-token`` (old releases).
    """

    record: BootstrapRecord
    origin: str
    variant: str
    format: str
    files: dict[str, BootstrapFile] = field(repr=False)
    others: tuple[BootstrapRecord, ...] = ()
    damaged: tuple[str, ...] = ()  # records under a candidate key that failed to decrypt

    @property
    def encryption_config(self) -> bytes | None:
        """``server/cred/encryption-config.json`` exactly as embedded (None: encryption is off)."""
        f = self.files.get(CONFIG_FIELD)
        return f.content if f is not None else None

    @property
    def state(self) -> EncryptionState | None:
        for name in STATE_FIELDS:
            f = self.files.get(name)
            if f is not None:
                return parse_state(name, f.content, self.encryption_config)
        return None

    def notes(self) -> list[str]:
        """What a user should know: other bootstrap keys, a state that does not match."""
        out = []
        if self.variant != "token":
            out.append(f"{self.origin}: opened with the {self.variant} key of an older K3s release")
        for rec in self.others:
            if any(rec.key in d for d in self.damaged):
                continue  # said below, with the reason
            what = "a lock (empty value)" if rec.lock else f"data for the token whose hash is {rec.token_hash}"
            out.append(f"the snapshot also holds {rec.key}: {what}; not used")
        out.extend(self.damaged)
        st = self.state
        if st is not None and st.matches is False:
            out.append(
                f"{self.origin}: the secrets-encrypt state ({st.stage}) was written for another config "
                "(its hash does not match the embedded config: a snapshot taken during rotate-keys?)"
            )
        return out


def find_bootstrap(records: Iterable[BootstrapRecord], token: str, name: str) -> BootstrapData:
    """Open the bootstrap record ``token`` unlocks among ``records`` of snapshot ``name``.

    Tries the normalised token's key, then the empty-token key, then the token as given.

    Raises:
        TokenError: a malformed token, or no record the token opens (names the hash it needs).
        BootstrapError: no ``/bootstrap`` record, only a lock, or a damaged record.
    """
    records = list(records)
    if not records:
        raise BootstrapError(
            f"{name}: no /bootstrap/* record (not a K3s/RKE2 snapshot, or the first server never "
            "finished starting); --k3s-token needs one"
        )
    password = normalize_token(token)
    by_hash = {r.token_hash: r for r in records}
    tried: set[str] = set()
    damaged: list[str] = []
    for passphrase, variant in ((password, "token"), ("", "empty-token"), (token, "unnormalised-token")):
        h = short_hash(passphrase)
        rec = by_hash.get(h)
        if h in tried or rec is None or rec.lock:
            tried.add(h)
            continue
        tried.add(h)
        try:
            plain = parse_plaintext(decrypt_value(passphrase, rec.value, rec.key), rec.key)
        except InvalidCiphertext:
            damaged.append(
                f"bootstrap record {rec.key} is damaged: it does not decrypt with the passphrase "
                "whose hash it carries"
            )
            continue
        except BootstrapError as exc:
            damaged.append(str(exc))
            continue
        others = tuple(r for r in records if r is not rec)
        return BootstrapData(rec, f"{name}#{rec.key}", variant, plain.format, plain.files, others, tuple(damaged))
    if damaged:
        raise BootstrapError(damaged[0])
    data = [r for r in records if not r.lock]
    if not data:
        raise BootstrapError(
            f"{name}: {', '.join(r.key for r in records)} holds only a lock (an empty value a starting "
            "server writes before the data), no bootstrap data"
        )
    needed = " or ".join(r.token_hash for r in data)
    raise TokenError(
        f"the K3s token given does not open the bootstrap data of {name}: it needs the token whose "
        f"hash is {needed} (the token given hashes to {short_hash(password)})"
    )


def read_bootstrap(source: _Latest, token: str, name: str) -> BootstrapData:
    """:func:`find_bootstrap` over the ``/bootstrap/*`` records of ``source``."""
    return find_bootstrap(list_bootstrap(source), token, name)


# -- keys for the key set -------------------------------------------------------------------------


class Embedded(NamedTuple):
    """Configs found inside a snapshot, and notes for the report."""

    configs: tuple[ConfigBytes, ...] = ()
    notes: tuple[str, ...] = ()


def embedded_configs(
    snapshot: str | SnapshotInput, token: str | None, *, have_configs: bool, etcd: EtcdTarget | None = None
) -> Embedded:
    """The EncryptionConfiguration K3s/RKE2 keep in ``snapshot``'s bootstrap data, if a token is given.

    ``have_configs``: whether the user also gave ``--config`` (then a cluster without secrets
    encryption is a note, not an error). ``etcd``: read a running etcd instead of ``snapshot``.

    Raises:
        TokenError, BootstrapError: as :func:`find_bootstrap`.
        ConfigError: the bootstrap data holds no encryption config and no ``--config`` was given.
    """
    if token is None:
        return Embedded()
    with open_record_source(snapshot, etcd) as source:
        data = read_bootstrap(source, token, source.name)
    notes = data.notes()
    config = data.encryption_config
    if config is None:
        why = f"{data.origin}: the bootstrap data holds no EncryptionConfig (secrets encryption is off on this cluster)"
        if not have_configs:
            raise ConfigError(f"{why}; give --config")
        return Embedded((), (*notes, why))
    return Embedded((ConfigBytes(data.origin, config),), tuple(notes))


def keyset_for(
    paths: Sequence[str | Path], snapshot: str | SnapshotInput, access: KeyAccess, etcd: EtcdTarget | None = None
) -> KeySet:
    """The key set of a command: the configs under ``paths`` (first = current), then the config
    the snapshot carries when ``access`` has a K3s token (the current one when ``paths`` is empty).

    Raises:
        ConfigError, TokenError: as :func:`~snapshot_tools.keysets.load_keyset` and
            :func:`embedded_configs`; BootstrapError: a snapshot without usable bootstrap data.
    """
    embedded = embedded_configs(snapshot, access.k3s_token, have_configs=bool(paths), etcd=etcd)
    return load_keyset(paths, embedded.configs, embedded.notes)


class Prepared(NamedTuple):
    """A command's key set and its snapshot, opened already when the keys came from inside it."""

    keyset: KeySet
    snapshot: str | SnapshotInput


def prepare_keyset(
    paths: Sequence[str | Path],
    snapshot: str | SnapshotInput,
    access: KeyAccess,
    stack: ExitStack,
    s3: S3Options | None = None,
    *,
    progress: bool = False,
) -> Prepared:
    """:func:`keyset_for` for a snapshot: with a K3s token the keys are inside it, so a ``.zip``,
    ``.gz`` or ``s3://`` snapshot is unpacked or downloaded first, once, and kept open on
    ``stack`` for the read that follows; without one a bad config fails before any download."""
    if access.k3s_token is not None:
        snapshot = stack.enter_context(opened(snapshot, s3, progress=progress))
    return Prepared(keyset_for(paths, snapshot, access), snapshot)
