"""TLS for a test etcd: a CA, a server certificate for 127.0.0.1 and a client certificate, made
with ``cryptography``, and an :class:`~tests.support.etcd.EtcdServer` that serves https with
client-certificate authentication.

References: etcd ``--cert-file``, ``--key-file``, ``--client-cert-auth``, ``--trusted-ca-file``
(docs op-guide/security.md).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.etcd import EtcdHarnessError, EtcdServer

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pki:
    """PEM files of one test CA and the certificates it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def _cert(
    subject: str,
    key: EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_pki(directory: Path, name: str = "test") -> Pki:
    """A CA named ``name``, a server certificate for 127.0.0.1 and a client certificate, in
    ``directory`` as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert(f"{name} etcd CA", ca_key, None, ca_key, ca=True)
    server_key, client_key = _key(), _key()
    return Pki(
        ca=_write_cert(ca, directory / f"{name}-ca.pem"),
        server_cert=_write_cert(_cert("etcd", server_key, ca, ca_key, server=True), directory / f"{name}-server.pem"),
        server_key=_write_key(server_key, directory / f"{name}-server-key.pem"),
        client_cert=_write_cert(_cert("root", client_key, ca, ca_key), directory / f"{name}-client.pem"),
        client_key=_write_key(client_key, directory / f"{name}-client-key.pem"),
    )


class TlsEtcdServer(EtcdServer):
    """An :class:`EtcdServer` whose client URL is https and requires a client certificate."""

    def __init__(self, pki: Pki, *args: Any, **kwargs: Any) -> None:
        self.pki = pki
        super().__init__(*args, **kwargs)

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}:{self.client_port}"

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            "--cert-file", str(self.pki.server_cert),
            "--key-file", str(self.pki.server_key),
            "--client-cert-auth",
            "--trusted-ca-file", str(self.pki.ca),
        ]  # fmt: skip

    def _wait_healthy(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        ctx.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self._proc is not None
            rc = self._proc.poll()
            if rc is not None:
                raise EtcdHarnessError(f"etcd exited with rc {rc} during startup: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.endpoint + "/health", timeout=2, context=ctx) as resp:  # noqa: S310
                    if json.loads(resp.read()).get("health") in ("true", True):
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise EtcdHarnessError(f"etcd not healthy after {self.startup_timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.05)
