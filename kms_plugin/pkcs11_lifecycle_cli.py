"""``kms-plugin pkcs11 retire-key|restore-key|purge-key``: the PKCS#11 key lifecycle commands.

Registered on the ``pkcs11`` sub-app by :func:`register`; thin layers over
:mod:`kms_plugin.keks.pkcs11life`. ``retire-key`` proves its case with
``snapshot_tools.kek_usage_pkcs11``, imported inside the command (as ``keyring retire`` does),
so the plugin's serve path never imports ``snapshot_tools``.

References: :mod:`kms_plugin.keyring_cli` (the keyring counterpart); STYLE.md 8.
"""

from __future__ import annotations

from typing import Annotated

import typer

from kms_plugin.api import pkcs11_settings
from kms_plugin.cli_pkcs11 import AuditLogOpt, KeyOpt, ModuleOpt, Output, PinOpt, TokenOpt, _required
from kms_plugin.errors import ConfigError, RetireRefused
from kms_plugin.keyring_cli import (
    DryRunOpt,
    ProofCacertOpt,
    ProofCertOpt,
    ProofKeyOpt,
    ProofOpt,
    ProofS3EndpointOpt,
    ProofS3RegionOpt,
    proof_access,
)
from kms_plugin.terminal import printable

LabelArg = Annotated[str, typer.Argument(help="The generation, e.g. K-1 (never the current one).")]


def retire_key(
    label: LabelArg,
    module: ModuleOpt = None,
    token: TokenOpt = None,
    key: KeyOpt = None,
    pin: PinOpt = None,
    proof: ProofOpt = None,
    s3_endpoint_url: ProofS3EndpointOpt = None,
    s3_region: ProofS3RegionOpt = None,
    cacert: ProofCacertOpt = None,
    cert: ProofCertOpt = None,
    tls_key: ProofKeyOpt = None,
    provider: list[str] = typer.Option(
        [], "--provider", help="KMS provider name this plugin serves: a value under it in another format is unreadable."
    ),
    dry_run: DryRunOpt = False,
    output: Output = typer.Option(Output.table, "--output", "-o", help="table or json."),
    audit_log: AuditLogOpt = None,
) -> None:
    """Retire a decrypt-only key (relabel K-<n>.retired, encrypt/decrypt off), once no stored value needs it.

    Every SOURCE is read across all revisions; retiring is refused (exit 1) when a value needs
    the key, a value cannot be read, or a source is damaged or older than the key's demotion.
    """
    from kms_plugin.keks.pkcs11life import audit_log_path, demoted_at, read_family, retirable
    from kms_plugin.keks.pkcs11life import retire_key as retire
    from kms_plugin.keyring_cli import _from_snapshot_tools, _Output, _refusal, _render_usage
    from kms_plugin.stop_signals import stop_signals_raise
    from snapshot_tools.errors import Error as SnapshotToolsError
    from snapshot_tools.kek_usage_pkcs11 import pkcs11_key_usage

    module, token, key = _required(module, token, key)
    settings = pkcs11_settings(module, token, key, pin)
    log_path = audit_log_path(audit_log, token)
    family = read_family(settings)
    ref = retirable(family, label)
    if not proof:
        raise ConfigError("give at least one --proof SOURCE (an etcd snapshot of the cluster)")
    try:
        with stop_signals_raise():
            reach = proof_access(s3_endpoint_url, s3_region, cacert, cert, tls_key)
            usage = pkcs11_key_usage(
                proof, settings, label, providers=provider, access=reach,
                demoted_at=demoted_at(log_path, family, ref),
            )  # fmt: skip
    except SnapshotToolsError as exc:
        raise _from_snapshot_tools(exc) from None
    _render_usage(usage, _Output(output.value))
    if not usage.proven:
        raise RetireRefused(_refusal(usage).replace("retire KEK", "retire PKCS#11 key", 1))
    if dry_run:
        typer.echo(f"key {printable(label)} is proven unused; --dry-run: nothing changed", err=True)
        return
    current = retire(settings, log_path, label, ref, usage.summary())
    typer.echo(
        f"retired PKCS#11 key {printable(label)} (now labelled {printable(label)}.retired, encrypt/decrypt off); "
        f"{printable(current.label)} is current",
        err=output is Output.json,
    )


def restore_key(
    label: LabelArg,
    module: ModuleOpt = None,
    token: TokenOpt = None,
    key: KeyOpt = None,
    pin: PinOpt = None,
    audit_log: AuditLogOpt = None,
) -> None:
    """Give a retired key back to the family (decrypt-only; a running plugin picks it up at its next probe)."""
    from kms_plugin.keks.pkcs11life import audit_log_path
    from kms_plugin.keks.pkcs11life import restore_key as restore

    module, token, key = _required(module, token, key)
    ref = restore(pkcs11_settings(module, token, key, pin), audit_log_path(audit_log, token), label)
    typer.echo(f"restored PKCS#11 key {printable(ref.label)} (decrypt-only), key_id {ref.key_id}")


def purge_key(
    label: LabelArg,
    module: ModuleOpt = None,
    token: TokenOpt = None,
    key: KeyOpt = None,
    pin: PinOpt = None,
    confirm: bool = typer.Option(
        False, "--yes-destroy-keys", help="Required: values still under this key become unreadable for good."
    ),
    audit_log: AuditLogOpt = None,
) -> None:
    """Destroy a retired key in the token for good (C_DestroyObject; needs --yes-destroy-keys)."""
    from kms_plugin.keks.pkcs11life import audit_log_path
    from kms_plugin.keks.pkcs11life import purge_key as purge

    module, token, key = _required(module, token, key)
    if not confirm:
        raise ConfigError("purging destroys the key for good: add --yes-destroy-keys to confirm")
    ref = purge(pkcs11_settings(module, token, key, pin), audit_log_path(audit_log, token), label)
    typer.echo(f"purged PKCS#11 key {printable(ref.label)} for good (key_id {ref.key_id})")


def register(pkcs11_app: typer.Typer) -> None:
    """Add the lifecycle commands to the ``pkcs11`` sub-app."""
    pkcs11_app.command("retire-key")(retire_key)
    pkcs11_app.command("restore-key")(restore_key)
    pkcs11_app.command("purge-key")(purge_key)
