"""Parse the ``unix://`` endpoints kube-apiserver accepts for KMS plugins.

``unix:///var/run/kms.sock`` names a socket file; a path starting with ``/@`` names a Linux
abstract socket (``unix:///@kms`` -> ``@kms``). Everything else is refused, as upstream does.

References: ``staging/src/k8s.io/kms/pkg/util/util.go`` ``ParseEndpoint``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from kms_plugin.errors import ConfigError

# sun_path is 108 bytes including the terminating NUL on Linux.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class UnixEndpoint:
    """A parsed endpoint: a filesystem path, or an abstract name (without the ``@``)."""

    path: str
    abstract: bool

    @property
    def grpc_target(self) -> str:
        """The target string grpc-core understands for this socket."""
        return f"unix-abstract:{self.path}" if self.abstract else f"unix:{self.path}"

    @property
    def display(self) -> str:
        return f"unix:///@{self.path}" if self.abstract else f"unix://{self.path}"


def parse_unix_endpoint(endpoint: str) -> UnixEndpoint:
    """Split ``endpoint`` into a socket path or abstract name.

    Raises:
        ConfigError: empty endpoint, a scheme other than ``unix``, a host part, or a bad path.
    """
    if not endpoint:
        raise ConfigError("KMS endpoint is empty; expected unix:///path/to/socket or unix:///@name")
    parts = urlsplit(endpoint)
    if parts.scheme != "unix":
        raise ConfigError(
            f"KMS endpoint {endpoint!r} must use the unix scheme "
            "(unix:///path/to/socket or unix:///@name)"
        )
    if parts.netloc:
        raise ConfigError(
            f"KMS endpoint {endpoint!r} has a host part {parts.netloc!r}; "
            "use three slashes: unix:///path/to/socket"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"KMS endpoint {endpoint!r} must not carry a query or fragment")
    path = parts.path
    if path.startswith("/@"):
        name = path[2:]
        if not name:
            raise ConfigError(f"KMS endpoint {endpoint!r} names an empty abstract socket")
        if len(name.encode()) + 1 > MAX_SOCKET_PATH:
            raise ConfigError(f"KMS endpoint {endpoint!r}: abstract name is too long")
        return UnixEndpoint(name, abstract=True)
    if not path.startswith("/") or path == "/":
        raise ConfigError(f"KMS endpoint {endpoint!r} must name an absolute socket path")
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"KMS endpoint {endpoint!r}: socket path is {len(path.encode())} bytes, "
            f"the limit is {MAX_SOCKET_PATH}"
        )
    return UnixEndpoint(path, abstract=False)
