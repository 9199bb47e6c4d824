"""EncryptionConfigurations written by tests (JSON, which every config reader takes as YAML too).

``write_config(path, rule(["secrets"], static("aescbc", ("k1", key)), IDENTITY))`` writes one
file; :class:`Target` is the NEW config of a ``reencrypt`` run, with fresh key material.
"""

from __future__ import annotations

import base64
import json
import os
from typing import TYPE_CHECKING, Any

from tests.support.kms import make_keyring

if TYPE_CHECKING:
    from pathlib import Path

IDENTITY: dict[str, Any] = {"identity": {}}


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def static(provider: str, *keys: tuple[str, bytes]) -> dict[str, Any]:
    """A static provider entry (``aescbc``, ``aesgcm``, ``secretbox``) with (name, key) pairs."""
    return {provider: {"keys": [{"name": name, "secret": b64(key)} for name, key in keys]}}


def kms(name: str, endpoint: str, *, api_version: str = "v2", timeout: str = "3s") -> dict[str, Any]:
    """A ``kms`` provider entry."""
    return {"kms": {"apiVersion": api_version, "name": name, "endpoint": endpoint, "timeout": timeout}}


def rule(resources: list[str], *providers: dict[str, Any]) -> dict[str, Any]:
    """One ``resources[]`` entry."""
    return {"resources": resources, "providers": list(providers)}


def encryption_config(*rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": list(rules),
    }


def write_config(path: Path, *rules: dict[str, Any]) -> Path:
    """An EncryptionConfiguration of ``rules`` at ``path`` (mode 0600, like a real one)."""
    path.write_text(json.dumps(encryption_config(*rules)))
    os.chmod(path, 0o600)
    return path


NEW_KMS = "newkms"  # the KMS provider name of a kmsv2 Target (served from its keyring)


class Target:
    """A NEW config written by the test, with random key material and the flags it needs."""

    def __init__(self, kind: str, directory: Path, resources: list[str]) -> None:
        self.kind = kind
        self.flags: list[str] = []
        self.secrets: list[bytes] = []
        if kind == "identity":
            provider = IDENTITY
        elif kind == "kmsv2":
            keyring = directory / "new-keyring.json"
            make_keyring(keyring)
            self.flags = ["--keyring", f"{NEW_KMS}={keyring}"]
            self.secrets = keyring_secrets(keyring)
            # Never dialled: the keyring serves it.
            provider = kms(NEW_KMS, "unix:///nonexistent/newkms.sock")
        else:
            key = os.urandom(16 if kind == "aesgcm" else 32)
            self.secrets = [key]
            provider = static(kind, (f"{kind}-new", key))
        self.path = write_config(directory / f"new-{kind}.json", rule(resources, provider))

    @property
    def keyring(self) -> str:
        """The keyring file of a kmsv2 target."""
        return self.flags[1].split("=", 1)[1]

    @property
    def to_label(self) -> str:
        return {"identity": "identity", "kmsv2": f"kms-v2/{NEW_KMS}"}.get(self.kind, f"{self.kind}/{self.kind}-new")


def keyring_secrets(path: Path) -> list[bytes]:
    """Every base64 string of a keyring file that decodes to 16+ bytes: its KEK material."""
    out: list[bytes] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            try:
                raw = base64.b64decode(node, validate=True)
            except ValueError:
                return
            if len(raw) >= 16:
                out.append(raw)

    walk(json.loads(path.read_text()))
    assert out, "no key material found in the keyring file"
    return out
