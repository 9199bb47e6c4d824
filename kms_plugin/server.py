"""The composition root of ``kms-plugin serve``: socket lifecycle, gRPC server, signals, drain.

* A stale socket file (connect refused: its process died) is replaced; a socket with a live
  listener, or a path that is not a socket, is never touched (:class:`ConfigError`, exit 2).
* The socket is bound under umask 0177 and then given ``--socket-mode``, so it is never more
  open than asked, and removed on exit if it is still ours (same inode).
* An abstract socket (``unix:///@name``) has no file mode: any process in the network namespace
  can call Encrypt/Decrypt. ``serve`` refuses it unless ``--allow-abstract-socket`` is given, and
  warns at start when it is.
* The soft RLIMIT_NOFILE is raised to the hard limit at start (Go does the same for every
  program): descriptors are the resource that idle health clients used to exhaust.
* SIGTERM/SIGINT: ``/readyz`` turns 503, the server stops accepting calls and in-flight ones get
  up to ``--drain-timeout`` seconds to finish; then exit 0.

References: aws-encryption-provider ``cmd/server/main.go`` and ``pkg/server/server.go``; grpc
``examples/python/uds``; STYLE.md item 10.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import signal
import socket
import stat
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from kms_plugin.endpoint import UnixEndpoint, parse_unix_endpoint
from kms_plugin.errors import EXIT_OK, ConfigError
from kms_plugin.health import HealthMonitor, HealthServer, parse_health_addr
from kms_plugin.keks.hierarchy import DEFAULT_CACHE_SIZE, DEFAULT_MAX_AGE, DEFAULT_MAX_USES
from kms_plugin.keks.local import LocalKeyringBackend
from kms_plugin.metrics import PluginMetrics
from kms_plugin.proto import kms_v1beta1_pb2_grpc, kms_v2_pb2_grpc
from kms_plugin.service import (
    DEFAULT_ANNOTATION_DOMAIN,
    KMSService,
    Servicer,
    check_annotation_domain,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from kms_plugin.keks.awsclient import AwsSettings
    from kms_plugin.keks.base import KEKBackend
    from kms_plugin.keks.pkcs11pool import Pkcs11Settings

log = logging.getLogger("kms_plugin.server")

DEFAULT_HEALTH_ADDR = "127.0.0.1:8787"
_SERVER_OPTIONS = [
    # Requests are a 32-byte seed plus at most 32 KiB of annotations; bound what we accept.
    ("grpc.max_receive_message_length", 256 * 1024),
    ("grpc.max_send_message_length", 64 * 1024),
]


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``serve`` needs, built and validated by the CLI."""

    listen: str
    keyring: Path | None = None  # exactly one of keyring and aws
    aws: AwsSettings | None = None
    pkcs11: Pkcs11Settings | None = None  # or this instead of both
    local_kek: bool | None = None  # None: on for a remote KMS (aws, pkcs11), off for a keyring
    local_kek_max_uses: int = DEFAULT_MAX_USES
    local_kek_max_age: float = DEFAULT_MAX_AGE
    local_kek_cache_size: int = DEFAULT_CACHE_SIZE
    health_addr: str = DEFAULT_HEALTH_ADDR
    socket_mode: int = 0o600
    enable_v1: bool = False
    annotation_domain: str = DEFAULT_ANNOTATION_DOMAIN
    drain_timeout: float = 10.0
    max_workers: int = 4
    probe_interval: float = 10.0
    allow_abstract_socket: bool = False  # checked by serve(); PluginServer itself only warns


def check_serving_endpoint(ep: UnixEndpoint, allow_abstract: bool) -> None:
    """Refuse to serve on an abstract socket unless explicitly allowed.

    Raises:
        ConfigError: ``ep`` is abstract and ``allow_abstract`` is false.
    """
    if ep.abstract and not allow_abstract:
        raise ConfigError(
            f"--listen {ep.display} is an abstract socket: it has no file mode, so any process in "
            "this network namespace could call Encrypt/Decrypt; use a socket path "
            "(unix:///run/kms-plugin/kms.sock) or pass --allow-abstract-socket to accept that"
        )


def raise_nofile_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd and most runtimes start at 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)


def prepare_socket(ep: UnixEndpoint) -> None:
    """Make ``ep`` bindable: remove a stale socket file, refuse a live or foreign one."""
    if ep.abstract:
        if _listening("\0" + ep.path):
            raise ConfigError(f"abstract socket @{ep.path} already has a live listener; not stealing it")
        return
    parent = Path(ep.path).parent
    if not parent.is_dir():
        raise ConfigError(f"socket directory {parent} does not exist")
    try:
        st = os.lstat(ep.path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{ep.path} exists and is not a socket; refusing to replace it")
    if _listening(ep.path):
        raise ConfigError(
            f"socket {ep.path} has a live listener (another plugin running?); not stealing it"
        )
    log.info("removing stale socket %s (connection refused)", ep.path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ep.path)


def _listening(address: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except TimeoutError:
            return True  # a listener with a full backlog is still alive
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise ConfigError(f"cannot probe socket {address.lstrip(chr(0))}: {exc.strerror}") from None
        return True


def build_backend(
    config: ServeConfig,
    domain: str,
    metrics: PluginMetrics,
    on_reload: Callable[[str, Any, str], None] | None = None,
) -> tuple[KEKBackend, KEKBackend]:
    """The backend serving KMS v2 and the one serving v1 (the remote, never a local KEK).

    Raises:
        ConfigError: conflicting flags, or a key AWS says does not exist or cannot encrypt.
    """
    if [config.keyring, config.aws, config.pkcs11].count(None) != 2:
        raise ConfigError("give exactly one of --keyring, --aws-key-id and --pkcs11-module")
    remote: Any
    if config.pkcs11 is not None:
        from kms_plugin.keks.pkcs11 import Pkcs11Backend

        remote = Pkcs11Backend(config.pkcs11, on_call=metrics.remote_call)
        remote.start()
    elif config.aws is not None:
        from kms_plugin.keks.aws import AwsKmsBackend
        from kms_plugin.keks.awsclient import AwsKms

        remote = AwsKmsBackend(AwsKms(config.aws, on_call=metrics.remote_call))
        remote.start()
    else:
        assert config.keyring is not None
        remote = LocalKeyringBackend(config.keyring, on_reload=on_reload)
        metrics.set_keyring(remote.keyring)
    remote_kms = config.aws is not None or config.pkcs11 is not None
    local_kek = config.local_kek if config.local_kek is not None else remote_kms
    if not local_kek:
        return remote, remote
    from kms_plugin.keks.hierarchy import LocalKekHierarchy

    try:
        hierarchy = LocalKekHierarchy(
            remote,
            domain,
            max_uses=config.local_kek_max_uses,
            max_age=config.local_kek_max_age,
            cache_size=config.local_kek_cache_size,
        )
    except ValueError as exc:
        raise ConfigError(f"--local-kek-*: {exc}") from None
    return hierarchy, remote


class PluginServer:
    """One plugin instance: backend, service, gRPC server on the socket, health HTTP server."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.endpoint = parse_unix_endpoint(config.listen)
        self.metrics = PluginMetrics()
        domain = check_annotation_domain(config.annotation_domain)
        health_addr = parse_health_addr(config.health_addr)
        self.backend, v1_backend = build_backend(config, domain, self.metrics, self._reloaded)
        self.monitor = HealthMonitor(
            self.backend,
            interval=config.probe_interval,
            on_probe=None if config.aws is None and config.pkcs11 is None else self._probed,
        )
        self.service = KMSService(self.backend, self.metrics, self.monitor, domain, v1_backend)
        self.health: HealthServer | None = None
        if health_addr is not None:
            self.health = HealthServer(health_addr, self.monitor, self.metrics)
        self._inode: int | None = None
        self._server: grpc.Server | None = None

    def _probed(self, _probe: Any) -> None:
        key_id = self.backend.status().key_id
        if key_id:
            self.metrics.set_key_id(key_id, "aws" if self.config.aws is not None else "pkcs11")

    def _reloaded(self, result: str, keyring: Any, _reason: str) -> None:
        self.metrics.reloads.labels(result).inc()
        if keyring is not None:
            self.metrics.set_keyring(keyring)

    # -- start ---------------------------------------------------------------------------

    def start(self) -> None:
        prepare_socket(self.endpoint)
        # Calls waiting on a remote KMS must not starve Status of threads.
        workers = self.config.max_workers + (
            self.config.aws.max_in_flight if self.config.aws is not None else 0
        ) + (self.config.pkcs11.max_sessions if self.config.pkcs11 is not None else 0)
        server = grpc.server(
            futures.ThreadPoolExecutor(workers, thread_name_prefix="kms-rpc"),
            options=_SERVER_OPTIONS,
        )
        self._server = server
        kms_v2_pb2_grpc.add_KeyManagementServiceServicer_to_server(Servicer(self.service, "v2"), server)
        if self.config.enable_v1:
            kms_v1beta1_pb2_grpc.add_KeyManagementServiceServicer_to_server(Servicer(self.service, "v1beta1"), server)
        self._bind(server)
        server.start()
        self.monitor.start()
        if self.health is not None:
            self.health.start()
        if self.endpoint.abstract:
            log.warning(
                "serving on abstract socket %s (--allow-abstract-socket): it has no file mode; "
                "any process in this network namespace can call Encrypt/Decrypt",
                self.endpoint.display,
            )
        log.info(
            "serving KMS v2%s on %s (sync server), backend %s, key_id %s%s",
            " and v1beta1" if self.config.enable_v1 else "",
            self.endpoint.display,
            self.backend.name,
            self.backend.status().key_id or "-",
            f"; health on http://{self.health.host}:{self.health.port}" if self.health else "",
        )

    def _bind(self, server: grpc.Server) -> None:
        ep = self.endpoint
        # umask 0177 while binding: the socket never exists with a wider mode than 0600.
        old = os.umask(0o177)
        try:
            server.add_insecure_port(ep.grpc_target)
        except RuntimeError:
            raise ConfigError(f"cannot bind {ep.display}") from None
        finally:
            os.umask(old)
        if not ep.abstract:
            os.chmod(ep.path, self.config.socket_mode)
            self._inode = os.stat(ep.path).st_ino

    # -- stop ----------------------------------------------------------------------------

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight calls finish within ``grace`` s, remove the socket."""
        grace = self.config.drain_timeout if grace is None else grace
        self.monitor.draining = True
        if self._server is not None:
            self._server.stop(grace).wait(grace + 5)
        self.monitor.stop()
        if self.health is not None:
            self.health.stop()
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()
        self._remove_socket()

    def _remove_socket(self) -> None:
        if self.endpoint.abstract or self._inode is None:
            return
        try:
            if os.lstat(self.endpoint.path).st_ino == self._inode:
                os.unlink(self.endpoint.path)
        except FileNotFoundError:
            pass


def serve(config: ServeConfig) -> int:
    """Run until SIGTERM/SIGINT, then drain; returns the exit code (``EXIT_OK``)."""
    check_serving_endpoint(parse_unix_endpoint(config.listen), config.allow_abstract_socket)
    raise_nofile_limit()
    return run_until_stopped(lambda: PluginServer(config))


def run_until_stopped(make_server: Callable[[], PluginServer]) -> int:
    """Build and start a server, serve until SIGTERM/SIGINT, then drain; returns ``EXIT_OK``.

    The handlers are in place before ``make_server`` runs, so a signal during start-up also
    ends in a clean stop.
    """
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = make_server()
        server.start()
        while not stop.wait(3600):
            pass
        log.info(
            "%s received: draining for up to %gs",
            signal.Signals(received[0]).name,
            server.config.drain_timeout,
        )
        server.stop()
        log.info("stopped")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return EXIT_OK
