"""The retired-KEK archive: ``<keyring>.retired`` beside the (symlink-resolved) keyring, 0600.

Shape::

    {"format": "kms-plugin-retired-keks", "version": 1,
     "keks": [{"id": ..., "created": ..., "retired": ..., "sealed_by": "<KEK id>",
               "sealed": "<base64 of the keyring's wrapped format>"}]}

Each entry is the KEK's keyring entry (JSON) sealed with :meth:`Keyring.wrap` under the active
KEK of the keyring (AES-256-GCM, the header naming the sealing KEK as AAD); ids and times are in
the clear for listing and checked against the sealed copy on opening. Why not a passphrase:
retiring is routine and runs where the keyring is; the archive is exactly as safe as the keyring
beside it and worthless without it; off-host copies are what ``keyring export`` (passphrase) is
for. Callers re-seal every entry under the current active KEK on each retire
(:mod:`.lifecycle`), so the archive never depends on a KEK that left.

References: ``kms_plugin.keks.format`` (the sealing format); aws-encryption-provider keeps no
archive: this is ours.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from typing import TYPE_CHECKING, NamedTuple

from kms_plugin.errors import ConfigError, InputError, InvalidCiphertext, UnknownKeyId
from kms_plugin.keks.format import KEK_ID_RE
from kms_plugin.keks.local import Kek, Keyring, _canonical_time, _parse_kek
from kms_plugin.keks.private_file import write_private

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

ARCHIVE_SUFFIX = ".retired"
ARCHIVE_FORMAT = "kms-plugin-retired-keks"
ARCHIVE_VERSION = 1
MAX_ARCHIVE_BYTES = 4 << 20
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")  # _canonical_time


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


def archive_error(path: Path, why: str) -> InputError:
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
        raise archive_error(path, f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise archive_error(path, "not a regular file")
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise archive_error(path, f"mode {mode:04o} lets group or others read it; run chmod 600")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(MAX_ARCHIVE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_ARCHIVE_BYTES:
        raise archive_error(path, f"larger than {MAX_ARCHIVE_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise archive_error(path, "malformed JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != ARCHIVE_FORMAT or doc.get("version") != ARCHIVE_VERSION:
        raise archive_error(path, "not a retired-KEK archive of this version")
    entries = doc.get("keks")
    if not isinstance(entries, list):
        raise archive_error(path, "'keks' must be a list")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not all(isinstance(e.get(f), str) for f in Archived._fields):
            raise archive_error(path, f"keks[{i}] is malformed")
        # The clear fields are listed on a terminal before anything is opened: only ids and
        # times as we write them, never arbitrary text (escape sequences).
        if not (KEK_ID_RE.fullmatch(e["id"]) and KEK_ID_RE.fullmatch(e["sealed_by"])):
            raise archive_error(path, f"keks[{i}]: id or sealed_by is not a KEK id")
        if not (_TIME_RE.fullmatch(e["created"]) and _TIME_RE.fullmatch(e["retired"])):
            raise archive_error(path, f"keks[{i}]: created or retired is not a UTC time as written")
        try:
            sealed = base64.b64decode(e["sealed"], validate=True)
        except (binascii.Error, ValueError):
            raise archive_error(path, f"keks[{i}]: sealed is not base64") from None
        out.append(Archived(e["id"], e["created"], e["retired"], e["sealed_by"], sealed))
    return out


def open_entry(entry: Archived, keyring: Keyring, path: Path) -> Kek:
    """The KEK sealed in ``entry``; its id and creation must match the clear fields."""
    try:
        plain = keyring.unwrap(entry.sealed)
    except (UnknownKeyId, InvalidCiphertext) as exc:
        raise archive_error(path, f"KEK {entry.id} does not open with this keyring ({exc})") from None
    try:
        kek = _parse_kek(json.loads(plain), 0, str(path))
    except (ValueError, ConfigError):
        raise archive_error(path, f"KEK {entry.id} is damaged") from None
    if kek.id != entry.id or _canonical_time(kek.created) != entry.created:
        raise archive_error(path, f"KEK {entry.id}: sealed identity differs from the listed one")
    return kek


def seal(kek: Kek, keyring: Keyring, retired: str) -> Archived:
    wrapped = keyring.wrap(json.dumps(kek.to_json()).encode())
    return Archived(kek.id, _canonical_time(kek.created), retired, keyring.active.id, wrapped.ciphertext)


def write_archive(keyring_file: Path, entries: Sequence[Archived]) -> None:
    doc = {"format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION, "keks": [e.to_json() for e in entries]}
    write_private(
        archive_path(keyring_file), (json.dumps(doc, indent=2) + "\n").encode(), replace=True, what="archive"
    )
