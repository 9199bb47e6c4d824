"""Moving KEKs between hosts: a passphrase-encrypted export file (``keyring export|import``).

File layout (text, two lines)::

    {"format":"kms-plugin-kek-export","version":1,"kdf":"scrypt","n":32768,"r":8,"p":1,
     "salt":"<b64 16>","cipher":"AES-256-GCM","nonce":"<b64 12>","keks":3}\\n
    <base64 of the AES-256-GCM ciphertext and tag>\\n

The key is ``scrypt(passphrase, salt, n, r, p)`` (32 bytes; n=2^15, r=8, p=1: 32 MiB and a
fraction of a second, the parameters OWASP lists for scrypt); the plaintext is
``{"keks": [<keyring KEK entries, state included>]}``. The first line, byte for byte, is the
AES-GCM associated data: a changed parameter, salt, nonce or count fails authentication like a
wrong passphrase. A fresh salt and nonce per export.

Errors: a file that is not in this format (truncated, bad header, bad base64, hostile scrypt
parameters) is :class:`~kms_plugin.errors.InputError` (exit 3); a failed authentication is
:class:`WrongPassphrase` (exit 2): a wrong passphrase and an altered ciphertext cannot be told
apart, the message says both.

The passphrase comes from ``--passphrase-file FILE`` or the ``KMS_PLUGIN_PASSPHRASE``
environment variable, never from the command line (``ps`` shows argv to every user).

References: pyca/cryptography ``Scrypt`` and ``AESGCM``; OWASP Password Storage Cheat Sheet
(scrypt parameters); age/ansible-vault (a versioned header bound to the ciphertext).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from kms_plugin.errors import ConfigError, InputError
from kms_plugin.keks.local import _parse_kek
from kms_plugin.keks.private_file import write_private

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from kms_plugin.keks.local import Kek

FORMAT = "kms-plugin-kek-export"
VERSION = 1
PASSPHRASE_ENV = "KMS_PLUGIN_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
SALT_SIZE, NONCE_SIZE = 16, 12
MIN_PASSPHRASE = 8
MAX_PASSPHRASE_FILE = 4096
MAX_EXPORT_BYTES = 4 << 20  # a keyring is at most 1 MiB; base64 and JSON add less than 2x
# What an import accepts from a file: a hostile header must not make scrypt take GiBs or hours.
_MAX_SCRYPT_MEMORY = 256 << 20  # 128 * n * r bytes
_MAX_N, _MAX_R, _MAX_P = 1 << 20, 32, 16


class WrongPassphrase(ConfigError):
    """The export file does not open with this passphrase (or its ciphertext was altered)."""


def read_passphrase(passphrase_file: Path | None, *, new: bool) -> bytes:
    """The passphrase from ``passphrase_file`` (one trailing newline dropped) or the environment.

    ``new``: it will protect a new export, so it must have at least :data:`MIN_PASSPHRASE`
    characters.

    Raises:
        ConfigError: none given, an unreadable, non-regular or group/other-readable file, an empty or short
            passphrase. Messages never contain the passphrase.
    """
    if passphrase_file is not None:
        source = f"--passphrase-file {passphrase_file}"
        try:
            # O_NONBLOCK: a FIFO with no writer would block open() for good (SIGTERM cannot
            # stop it); only regular files are read, as for the PIN file.
            fd = os.open(passphrase_file, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise ConfigError(f"{source}: cannot open: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{source}: not a regular file")
            if st.st_mode & 0o077:
                raise ConfigError(
                    f"{source}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others read it; run chmod 600"
                )
            raw = os.read(fd, MAX_PASSPHRASE_FILE + 1)
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
        finally:
            os.close(fd)
        if len(raw) > MAX_PASSPHRASE_FILE:
            raise ConfigError(f"{source}: longer than {MAX_PASSPHRASE_FILE} bytes")
        raw = raw.removesuffix(b"\n").removesuffix(b"\r")
    elif PASSPHRASE_ENV in os.environ:
        source = f"${PASSPHRASE_ENV}"
        raw = os.environb[PASSPHRASE_ENV.encode()]
    else:
        raise ConfigError(f"give --passphrase-file FILE or set {PASSPHRASE_ENV} (never on the command line)")
    if not raw:
        raise ConfigError(f"{source}: the passphrase is empty")
    if new and len(raw.decode("utf-8", "replace")) < MIN_PASSPHRASE:
        raise ConfigError(f"{source}: the passphrase must have at least {MIN_PASSPHRASE} characters")
    return raw


def _derive(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def seal_export(keks: Sequence[Kek], passphrase: bytes) -> bytes:
    """The export file bytes for ``keks`` under ``passphrase``."""
    salt, nonce = os.urandom(SALT_SIZE), os.urandom(NONCE_SIZE)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "kdf": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": base64.b64encode(salt).decode(),
        "cipher": "AES-256-GCM",
        "nonce": base64.b64encode(nonce).decode(),
        "keks": len(keks),
    }
    line = json.dumps(header, separators=(",", ":")).encode()
    plaintext = json.dumps({"keks": [k.to_json() for k in keks]}).encode()
    key = _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    sealed = AESGCM(key).encrypt(nonce, plaintext, line)
    return line + b"\n" + base64.b64encode(sealed) + b"\n"


def write_export(out: Path, keks: Sequence[Kek], passphrase: bytes) -> None:
    """Write the export atomically, 0600; refuses an existing ``out`` (a symlink too).

    Raises:
        ConfigError: ``out`` exists or cannot be written.
    """
    write_private(out, seal_export(keks, passphrase), replace=False, what="export")


def _damaged(source: str, why: str) -> InputError:
    return InputError(f"export {source}: not a kms-plugin KEK export ({why})")


def _header(line: bytes, source: str) -> dict[str, Any]:
    try:
        head = json.loads(line)
    except (ValueError, RecursionError):
        raise _damaged(source, "unreadable header") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise _damaged(source, "wrong header")
    if head.get("version") != VERSION:
        raise _damaged(source, f"unsupported version {str(head.get('version'))[:20]!r}")
    if head.get("kdf") != "scrypt" or head.get("cipher") != "AES-256-GCM":
        raise _damaged(source, "unsupported kdf or cipher")
    n, r, p = head.get("n"), head.get("r"), head.get("p")
    if not all(type(v) is int and v > 0 for v in (n, r, p)):
        raise _damaged(source, "bad scrypt parameters")
    assert isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
    if n & (n - 1) or n < 2 or n > _MAX_N or r > _MAX_R or p > _MAX_P or 128 * n * r > _MAX_SCRYPT_MEMORY:
        raise _damaged(source, "scrypt parameters out of bounds")
    return head


def _b64(value: Any, size: int | None, source: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, (str, bytes)) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or (size is not None and len(raw) != size):
        raise _damaged(source, f"bad {what}")
    return raw


def open_export(data: bytes, passphrase: bytes, source: str) -> list[Kek]:
    """The KEKs of an export file's ``data``, states as exported.

    Raises:
        InputError: not an export file, or damaged outside the ciphertext (exit 3).
        WrongPassphrase: authentication failed: wrong passphrase or altered ciphertext (exit 2).
    """
    if len(data) > MAX_EXPORT_BYTES:
        raise _damaged(source, f"larger than {MAX_EXPORT_BYTES} bytes")
    line, sep, rest = data.partition(b"\n")
    body = rest.removesuffix(b"\n")
    if not sep or not body or b"\n" in body:
        raise _damaged(source, "truncated or not two lines")
    head = _header(line, source)
    salt = _b64(head.get("salt"), SALT_SIZE, source, "salt")
    nonce = _b64(head.get("nonce"), NONCE_SIZE, source, "nonce")
    sealed = _b64(body, None, source, "ciphertext")
    key = _derive(passphrase, salt, head["n"], head["r"], head["p"])
    try:
        plaintext = AESGCM(key).decrypt(nonce, sealed, line)
    except InvalidTag:
        raise WrongPassphrase(
            f"export {source}: wrong passphrase, or the file was altered (authentication failed)"
        ) from None
    except ValueError:
        raise _damaged(source, "bad ciphertext") from None
    doc = json.loads(plaintext)
    entries = doc.get("keks") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or len(entries) != head.get("keks"):
        raise _damaged(source, "KEK list does not match the header")
    try:
        keks = [_parse_kek(e, i, f"export {source}") for i, e in enumerate(entries)]
    except ConfigError as exc:
        raise InputError(str(exc)) from None
    ids = [k.id for k in keks]
    if len(set(ids)) != len(ids):
        raise _damaged(source, "duplicate KEK ids")
    return keks


def read_export(path: Path, passphrase: bytes) -> list[Kek]:
    """:func:`open_export` of the file at ``path`` (read bounded; FIFOs and devices refused).

    Raises:
        InputError: missing, unreadable, not a regular file, or not an export.
        WrongPassphrase: see :func:`open_export`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise InputError(f"export {path}: cannot open: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"export {path}: not a regular file")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(MAX_EXPORT_BYTES + 1)
    except OSError as exc:
        raise InputError(f"export {path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    return open_export(data, passphrase, str(path))
