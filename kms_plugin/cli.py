"""``kms-plugin``: serve the KMS v2 plugin, manage keyring files, query a running plugin.

Thin: each command parses options, calls one library function, renders the result.
Errors from :mod:`kms_plugin.errors` become one line on stderr and an exit code
(``cli_runner.run_app``): 0 ok, 1 unhealthy, 2 usage/config, 4 plugin unreachable.

References: pip ``Command._main``; Typer ``add_typer`` (STYLE.md 8).
"""

from __future__ import annotations

import json
import os
import sys
import time
from enum import StrEnum
from pathlib import Path  # noqa: TC003 - Typer reads the annotations at run time
from typing import TYPE_CHECKING

import typer

from kms_plugin import cli_pkcs11
from kms_plugin.api import aws_settings
from kms_plugin.cli_runner import add_version_option, run_app
from kms_plugin.errors import (
    EXIT_FINDINGS,
    ConfigError,
    Error,
    InvalidCiphertext,
    PluginError,
    exit_code_for,
)
from kms_plugin.keyring_cli import register as register_lifecycle
from kms_plugin.pkcs11_lifecycle_cli import register as register_pkcs11_lifecycle
from kms_plugin.terminal import printable

if TYPE_CHECKING:
    from kms_plugin.client import KMSv2Client

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="A KMS v2 plugin for kube-apiserver: a local keyring of AES-256 KEKs or an AWS KMS key.",
)
keyring_app = typer.Typer(
    no_args_is_help=True, pretty_exceptions_show_locals=False, help="Manage keyring files."
)
app.add_typer(keyring_app, name="keyring")
app.add_typer(cli_pkcs11.app, name="pkcs11")
add_version_option(app, "kms-plugin")


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class Output(StrEnum):
    table = "table"
    json = "json"


def _mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise ConfigError(f"--socket-mode {text!r} is not an octal mode such as 0600") from None
    if mode & ~0o777:
        raise ConfigError(f"--socket-mode {text!r} must be within 0777")
    return mode


@app.command()
def serve(
    listen: str = typer.Option(..., help="unix:///path/to/socket or unix:///@abstract-name"),
    allow_abstract_socket: bool = typer.Option(
        False,
        "--allow-abstract-socket",
        help="Serve on unix:///@name although an abstract socket has no file mode: any process "
        "in the network namespace can call Encrypt/Decrypt.",
    ),
    keyring: Path | None = typer.Option(None, help="Keyring JSON file (mode 0600)."),
    aws_key_id: str | None = typer.Option(
        None, help="AWS KMS key: ARN, key id, alias/NAME or alias ARN (instead of --keyring)."
    ),
    aws_region: str | None = typer.Option(None, help="AWS region (default: chain, or the ARN's)."),
    aws_endpoint_url: str | None = typer.Option(None, help="AWS KMS endpoint URL (VPC, tests)."),
    aws_encryption_context: str = typer.Option(
        "", help="Static encryption context k=v[,k=v...] for every AWS Encrypt/Decrypt."
    ),
    aws_max_qps: float = typer.Option(50.0, help="Client-side limit of AWS calls per second; 0 = none."),
    aws_max_in_flight: int = typer.Option(8, help="AWS calls in flight at once."),
    aws_call_timeout: float = typer.Option(
        2.5, help="Seconds an AWS call may take, retries included (also cut to the gRPC deadline)."
    ),
    aws_max_attempts: int = typer.Option(3, help="Attempts per AWS call (botocore standard retries)."),
    pkcs11_module: cli_pkcs11.ModuleOpt = None,
    pkcs11_token_label: cli_pkcs11.TokenOpt = None,
    pkcs11_key_label: cli_pkcs11.KeyOpt = None,
    pkcs11_pin: cli_pkcs11.PinOpt = None,
    pkcs11_max_sessions: cli_pkcs11.MaxSessionsOpt = 4,
    local_kek: bool | None = typer.Option(
        None,
        "--local-kek/--no-local-kek",
        help="Seal seeds under a local KEK wrapped once by the remote KEK (default: on for AWS and PKCS#11).",
    ),
    local_kek_max_uses: int = typer.Option(1 << 20, help="Rotate the local KEK after this many Encrypts."),
    local_kek_max_age: float = typer.Option(7 * 86400.0, help="Rotate the local KEK after this many seconds."),
    local_kek_cache_size: int = typer.Option(128, help="Unwrapped local KEKs kept (LRU)."),
    probe_interval: float = typer.Option(10.0, help="Seconds between background health probes."),
    health_addr: str = typer.Option(
        "127.0.0.1:8787",
        help="HOST:PORT for /healthz /readyz /livez /metrics, or 'off'. At most 32 connections "
        "at once, each dropped after 3 s idle or 5 s in all; keep it on loopback.",
    ),
    socket_mode: str = typer.Option("0600", help="Mode of the socket file (octal)."),
    enable_v1: bool = typer.Option(False, "--enable-v1", help="Also serve KMS v1beta1."),
    annotation_domain: str = typer.Option(
        "kms-plugin.local", help="The one domain plugin annotations may use."
    ),
    drain_timeout: float = typer.Option(10.0, help="Seconds in-flight calls get on SIGTERM."),
    log_format: LogFormat = typer.Option(LogFormat.text, help="Log format on stderr."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
    max_workers: int = typer.Option(4, help="gRPC worker threads (sync server)."),
) -> None:
    """Serve KMS v2 on a unix socket until SIGTERM/SIGINT."""
    from kms_plugin.logs import setup_logging
    from kms_plugin.server import ServeConfig
    from kms_plugin.server import serve as run_server

    if drain_timeout < 0:
        raise ConfigError("--drain-timeout must not be negative")
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level {log_level!r}: use debug, info, warning or error")
    if probe_interval <= 0:
        raise ConfigError("--probe-interval must be positive")
    aws = None
    if aws_key_id is not None:
        if keyring is not None:
            raise ConfigError("--keyring and --aws-key-id may not be used together")
        aws = aws_settings(
            aws_region,
            aws_endpoint_url,
            aws_encryption_context,
            key=aws_key_id,
            max_qps=aws_max_qps,
            max_in_flight=aws_max_in_flight,
            call_timeout=aws_call_timeout,
            max_attempts=aws_max_attempts,
        )
    pkcs11 = cli_pkcs11.serve_settings(
        pkcs11_module, pkcs11_token_label, pkcs11_key_label, pkcs11_pin, pkcs11_max_sessions,
        others=keyring is not None or aws is not None,
    )
    if keyring is None and aws is None and pkcs11 is None:
        raise ConfigError("give --keyring FILE, --aws-key-id KEY or --pkcs11-module PATH")
    setup_logging(log_format.value, log_level)
    config = ServeConfig(
        listen=listen,
        keyring=keyring,
        aws=aws,
        pkcs11=pkcs11,
        local_kek=local_kek,
        local_kek_max_uses=local_kek_max_uses,
        local_kek_max_age=local_kek_max_age,
        local_kek_cache_size=local_kek_cache_size,
        probe_interval=probe_interval,
        health_addr=health_addr,
        socket_mode=_mode(socket_mode),
        enable_v1=enable_v1,
        annotation_domain=annotation_domain,
        drain_timeout=drain_timeout,
        max_workers=max_workers,
        allow_abstract_socket=allow_abstract_socket,
    )
    raise typer.Exit(run_server(config))


@app.command()
def status(
    endpoint: str = typer.Option(..., help="unix:///path/to/socket or unix:///@name"),
    roundtrip: bool = typer.Option(False, "--roundtrip", help="Also Encrypt+Decrypt a random value."),
    timeout: float = typer.Option(3.0, help="Per-call timeout in seconds."),
    output: Output = typer.Option(Output.table, "--output", "-o", help="table or json."),
) -> None:
    """Call Status (and optionally a round trip); exit 0 only when healthy."""
    from kms_plugin.client import KMSv2Client

    facts: dict[str, str] = {}
    problems: list[str] = []
    with KMSv2Client(endpoint, timeout=timeout) as client:
        st = client.status()
        facts.update(version=st.version, healthz=st.healthz, key_id=st.key_id)
        if st.version not in ("v2", "v2beta1"):
            problems.append(f"version {st.version!r} is not v2")
        if st.healthz != "ok":
            problems.append(f"healthz: {st.healthz}")
        if not st.key_id:
            problems.append("key_id is empty")
        if roundtrip:
            facts["roundtrip"] = _roundtrip(client, st.key_id, problems)
    if output is Output.json:
        typer.echo(json.dumps({**facts, "healthy": not problems}, indent=2))
    else:
        for name, value in facts.items():
            typer.echo(f"{name + ':':<10} {printable(value)}")  # the plugin's words: escaped
    if problems:
        typer.echo(f"kms-plugin: unhealthy: {printable('; '.join(problems))}", err=True)
        raise typer.Exit(EXIT_FINDINGS)


def _roundtrip(client: KMSv2Client, key_id: str, problems: list[str]) -> str:
    seed = os.urandom(32)
    try:
        enc = client.encrypt(seed)
        if enc.key_id != key_id:
            problems.append(f"Encrypt key_id {enc.key_id} differs from Status key_id {key_id}")
        plain = client.decrypt(enc.ciphertext, enc.key_id, enc.annotations)
    except (InvalidCiphertext, PluginError) as exc:
        problems.append(f"roundtrip: {exc}")
        return "failed"
    if plain != seed:
        problems.append("roundtrip: Decrypt returned a different value")
        return "failed"
    return "ok"


@app.command()
def doctor(
    encryption_config: Path = typer.Option(..., help="The file given to --encryption-provider-config."),
    endpoint: str | None = typer.Option(
        None, help="unix:///path the plugin listens on (default: every kms endpoint in the config)."
    ),
    apiserver_manifest: Path | None = typer.Option(
        None, help="kube-apiserver static pod manifest: check it mounts the socket and the config."
    ),
    apiserver_user: str | None = typer.Option(
        None, help="NAME, UID or UID:GID the apiserver runs as (default: the manifest's runAsUser, else root)."
    ),
    output: Output = typer.Option(Output.table, "--output", "-o", help="table or json."),
) -> None:
    """Preflight before restarting kube-apiserver: config, socket, plugin, manifest.

    One line per check with its fix. Exit 0 only when every check passes, 1 when one fails, 2 for a bad input file.
    """
    from kms_plugin.doctor import DoctorOptions, render_table, run_doctor

    report = run_doctor(DoctorOptions(encryption_config, endpoint, apiserver_manifest, apiserver_user))
    if output is Output.json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        typer.echo(render_table(report))
    if not report.ok:
        failed = ", ".join(dict.fromkeys(c.name for c in report.failed))
        typer.echo(f"kms-plugin: doctor: {len(report.failed)} check(s) failed: {failed}", err=True)
        raise typer.Exit(EXIT_FINDINGS)


@keyring_app.command("init")
def keyring_init(
    file: Path = typer.Argument(..., help="Keyring file to create (mode 0600)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Create a keyring with one fresh active KEK."""
    from kms_plugin.keks.lifecycle import init_keyring

    keyring = init_keyring(file, force=force)
    typer.echo(f"created {printable(str(file))}: KEK {keyring.active.id} active, key_id {keyring.active_key_id}")


@keyring_app.command("rotate")
def keyring_rotate(file: Path = typer.Argument(..., help="Keyring file to rotate in place.")) -> None:
    """Add a new active KEK; the previous active one becomes decrypt-only.

    Locked against other writers of the file; a symlink is kept and its target replaced.
    """
    from kms_plugin.keks.lifecycle import rotate

    old, new = rotate(file)
    typer.echo(
        f"rotated {printable(str(file))}: KEK {new.active.id} active (key_id {new.active_key_id}); "
        f"{old.active.id} is now decrypt-only"
    )


@keyring_app.command("list")
def keyring_list(
    file: Path = typer.Argument(..., help="Keyring file."),
    output: Output = typer.Option(Output.table, "--output", "-o", help="table or json."),
) -> None:
    """Show KEK ids, states, ages and key_ids (never key material)."""
    from kms_plugin.keks.local import Keyring

    rows = Keyring.load(file).describe(time.time())
    if output is Output.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'ID':<18} {'STATE':<13} {'CREATED':<28} {'AGE':>8}  KEY_ID")
    for row in rows:
        typer.echo(
            f"{row['id']:<18} {row['state']:<13} {row['created']:<28} "
            f"{_age(row['age_seconds']):>8}  {row['key_id']}"
        )


def _age(seconds: int) -> str:
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


register_lifecycle(keyring_app)
register_pkcs11_lifecycle(cli_pkcs11.app)


def main() -> None:
    sys.exit(run_app(app, "kms-plugin", Error, exit_code_for))


if __name__ == "__main__":
    main()
