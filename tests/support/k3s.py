"""K3s/RKE2 bootstrap records written by the test code, from the recipe in
``spec/k3s-rke2-bootstrap.md`` (sections 2, 3 and 7), independently of the reader in
``snapshot_tools.k3s_bootstrap``.

``seal`` is ``pkg/cluster/encrypt.go`` ``encrypt``: PBKDF2-HMAC-SHA1 over the 16 ASCII hex salt
characters (4096 rounds, 32 bytes), AES-256-GCM with a 12-byte nonce prepended, no AAD, stored
as ``"<salt>:" + base64``. ``bootstrap_json`` writes the current (``{"Timestamp", "Content"}``)
or the legacy (``map[string][]byte``) plaintext the way Go's encoder does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CA_HASH = "ab" * 32  # a K10 token's CA hash part
TIMESTAMP = "2024-05-01T10:00:00.123456789Z"  # Go RFC3339Nano


def key_hash(passphrase: str) -> str:
    """``keyHash``: 12 hex characters of sha256(passphrase)."""
    return hashlib.sha256(passphrase.encode()).hexdigest()[:12]


def bootstrap_key(passphrase: str) -> str:
    return "/bootstrap/" + key_hash(passphrase)


def full_token(password: str) -> str:
    """The secure token format K3s writes to ``server/token``."""
    return f"K10{CA_HASH}::server:{password}"


def seal(passphrase: str, plaintext: bytes, salt: str | None = None, nonce: bytes | None = None) -> bytes:
    """The stored value for ``plaintext`` sealed with ``passphrase``."""
    salt = salt if salt is not None else os.urandom(8).hex()
    nonce = nonce if nonce is not None else os.urandom(12)
    key = hashlib.pbkdf2_hmac("sha1", passphrase.encode(), salt.encode("ascii"), 4096, 32)
    blob = nonce + AESGCM(key).encrypt(nonce, plaintext, None)
    return f"{salt}:{base64.b64encode(blob).decode('ascii')}".encode("ascii")


def k3s_config(*providers: dict[str, Any]) -> bytes:
    """``encryption-config.json`` as K3s writes it: compact JSON of one ``secrets`` rule."""
    doc = {
        "kind": "EncryptionConfiguration",
        "apiVersion": "apiserver.config.k8s.io/v1",
        "resources": [{"resources": ["secrets"], "providers": list(providers)}],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def aescbc(*keys: tuple[str, bytes]) -> dict[str, Any]:
    return {"aescbc": {"keys": [{"name": n, "secret": base64.b64encode(k).decode()} for n, k in keys]}}


def secretbox(*keys: tuple[str, bytes]) -> dict[str, Any]:
    return {"secretbox": {"keys": [{"name": n, "secret": base64.b64encode(k).decode()} for n, k in keys]}}


IDENTITY: dict[str, Any] = {"identity": {}}


def state_for(config: bytes, stage: str = "start") -> bytes:
    """``encryption-state.json``: ``<stage>-<sha256 hex of the config>``, no newline."""
    return f"{stage}-{hashlib.sha256(config).hexdigest()}".encode()


def bootstrap_files(config: bytes | None, stage: str | None = "start", password: str = "pw") -> dict[str, bytes]:
    """A plausible file set: CAs, the passwd file (it holds the server password), the config."""
    files = {
        "ServerCA": b"-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n",
        "ServerCAKey": b"-----BEGIN EC PRIVATE KEY-----\nMHc...\n-----END EC PRIVATE KEY-----\n",
        "ServiceKey": b"-----BEGIN RSA PRIVATE KEY-----\nMIIE...\n-----END RSA PRIVATE KEY-----\n",
        "PasswdFile": f"{password},server,server,k3s:server\n".encode(),
    }
    if config is not None:
        files["EncryptionConfig"] = config
        if stage is not None:
            files["EncryptionHash"] = state_for(config, stage)
    return files


def bootstrap_json(files: dict[str, bytes], *, legacy: bool = False) -> bytes:
    """The plaintext: Go's ``json.NewEncoder(w).Encode`` of the map (sorted keys, trailing newline)."""
    if legacy:
        doc: dict[str, Any] = {n: base64.b64encode(c).decode() for n, c in files.items()}
    else:
        doc = {n: {"Timestamp": TIMESTAMP, "Content": base64.b64encode(c).decode()} for n, c in files.items()}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def bootstrap_record(passphrase: str, files: dict[str, bytes], *, legacy: bool = False) -> tuple[str, bytes]:
    """``(etcd key, value)`` of a bootstrap record sealed with ``passphrase``."""
    return bootstrap_key(passphrase), seal(passphrase, bootstrap_json(files, legacy=legacy))
