"""The KMS plugin's service on a ``grpc.aio`` server, for ``python -m bench.plugin --flavour aio`` only.

``kms-plugin serve`` runs the thread-pool server; this compares the same :class:`KMSService`
(a local keyring, no health server) behind asyncio handlers that run the backend calls inline on
the event loop. Until SIGTERM/SIGINT:

    python -m bench.plugin_aio --listen unix:///tmp/p.sock --keyring k.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc

from kms_plugin.endpoint import parse_unix_endpoint
from kms_plugin.errors import RpcFailure
from kms_plugin.keks.local import LocalKeyringBackend
from kms_plugin.metrics import PluginMetrics
from kms_plugin.proto import kms_v2_pb2_grpc
from kms_plugin.server import prepare_socket
from kms_plugin.service import KMSService, methods


def _async_handler(service: KMSService, method: str, fn: Any) -> Any:
    async def handler(request: Any, context: Any) -> Any:
        try:
            return service.run("v2", method, fn, request)
        except RpcFailure as f:
            await context.abort(f.code, f.message)

    return handler


class AioServicer(kms_v2_pb2_grpc.KeyManagementServiceServicer):
    def __init__(self, service: KMSService) -> None:
        for name, fn in methods(service, "v2").items():
            setattr(self, name, _async_handler(service, name, fn))


async def serve(listen: str, keyring: Path) -> None:
    endpoint = parse_unix_endpoint(listen)
    prepare_socket(endpoint)
    service = KMSService(LocalKeyringBackend(keyring), PluginMetrics())
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 256 * 1024)])
    kms_v2_pb2_grpc.add_KeyManagementServiceServicer_to_server(AioServicer(service), server)
    old = os.umask(0o177)
    try:
        server.add_insecure_port(endpoint.grpc_target)
    finally:
        os.umask(old)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(5)
    if not endpoint.abstract:
        Path(endpoint.path).unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.plugin_aio", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--keyring", required=True, type=Path)
    args = ap.parse_args()
    asyncio.run(serve(args.listen, args.keyring))
    return 0


if __name__ == "__main__":
    sys.exit(main())
