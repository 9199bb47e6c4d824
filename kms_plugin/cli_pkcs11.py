"""``kms-plugin pkcs11``: make, rotate and list the AES-256 key family a PKCS#11 token holds.

The flags are the ones ``serve`` takes (:data:`ModuleOpt` ... :data:`PinOpt`, defined once here).
The PIN comes from ``--pkcs11-pin @FILE`` or ``$KMS_PLUGIN_PKCS11_PIN``, never from argv.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from kms_plugin.api import pkcs11_settings
from kms_plugin.terminal import printable

if TYPE_CHECKING:
    from kms_plugin.keks.pkcs11pool import Pkcs11Settings

ModuleOpt = Annotated[
    str | None,
    typer.Option("--pkcs11-module", help="PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so)."),
]
TokenOpt = Annotated[str | None, typer.Option("--pkcs11-token-label", help="Label of the token holding the key.")]
KeyOpt = Annotated[
    str | None,
    typer.Option("--pkcs11-key-label", help="Key family K: objects K-1, K-2, ...; the highest is current."),
]
PinOpt = Annotated[
    str | None,
    typer.Option(
        "--pkcs11-pin",
        help="@FILE holding the user PIN (mode 0600); default $KMS_PLUGIN_PKCS11_PIN. A bare PIN is refused.",
    ),
]
AuditLogOpt = Annotated[
    str | None,
    typer.Option(
        "--audit-log",
        metavar="FILE",
        help="Audit log of key changes (0600, append-only; a FILE.lock beside it serialises changes). "
        "Default $KMS_PLUGIN_PKCS11_AUDIT_LOG, else /var/lib/kms-plugin/pkcs11-<token label>.audit.log.",
    ),
]
MaxSessionsOpt = Annotated[int, typer.Option("--pkcs11-max-sessions", help="PKCS#11 sessions open at once.")]

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Manage the AES-256 key family in a PKCS#11 token (HSM, SoftHSM2).",
)


class Output(StrEnum):
    table = "table"
    json = "json"


def _required(module: str | None, token: str | None, key: str | None) -> tuple[str, str, str]:
    from kms_plugin.errors import ConfigError

    missing = [f for f, v in (("--pkcs11-module", module), ("--pkcs11-token-label", token),
                              ("--pkcs11-key-label", key)) if not v]  # fmt: skip
    if missing:
        raise ConfigError(f"give {', '.join(missing)}")
    assert module and token and key
    return module, token, key


def serve_settings(
    module: str | None, token: str | None, key: str | None, pin: str | None, max_sessions: int, *, others: bool
) -> Pkcs11Settings | None:
    """``serve``'s PKCS#11 settings, or None when no --pkcs11-* flag is given."""
    from kms_plugin.errors import ConfigError

    if module is None and token is None and key is None and pin is None:
        return None
    if others:
        raise ConfigError("--pkcs11-module may not be used with --keyring or --aws-key-id")
    return pkcs11_settings(*_required(module, token, key), pin, max_sessions=max_sessions)


@app.command("init-key")
def init_key(
    module: ModuleOpt = None, token: TokenOpt = None, key: KeyOpt = None, pin: PinOpt = None,
    audit_log: AuditLogOpt = None,
) -> None:
    """Generate key K-1 in the token (AES-256, sensitive, not extractable); refuse if K-* exists."""
    from kms_plugin.keks.pkcs11life import audit_log_path, create_generation

    module, token, key = _required(module, token, key)
    new = create_generation(pkcs11_settings(module, token, key, pin), audit_log_path(audit_log, token), first=True).new
    typer.echo(f"created {printable(new.label)} (current), key_id {new.key_id}")


@app.command("rotate-key")
def rotate_key(
    module: ModuleOpt = None, token: TokenOpt = None, key: KeyOpt = None, pin: PinOpt = None,
    audit_log: AuditLogOpt = None,
) -> None:
    """Generate K-<n+1> and make it current; older keys stay in the token for Decrypt.

    A running plugin picks it up at its next probe (--probe-interval) without a restart.
    """
    from kms_plugin.keks.pkcs11life import audit_log_path, create_generation

    module, token, key = _required(module, token, key)
    settings = pkcs11_settings(module, token, key, pin)
    old, new, _serial = create_generation(settings, audit_log_path(audit_log, token), first=False)
    before = printable(old.label) if old else "-"
    typer.echo(f"rotated: {printable(new.label)} is current (key_id {new.key_id}); {before} is decrypt-only")


@app.command("list-keys")
def list_keys(
    module: ModuleOpt = None,
    token: TokenOpt = None,
    key: KeyOpt = None,
    pin: PinOpt = None,
    output: Output = typer.Option(Output.table, "--output", "-o", help="table or json."),
) -> None:
    """Show the key family: labels, key_ids, which is current, which are retired (never key material)."""
    from kms_plugin.keks.pkcs11 import describe_keys
    from kms_plugin.keks.pkcs11life import read_family

    settings = pkcs11_settings(*_required(module, token, key), pin)
    rows = describe_keys(settings)
    rows += [
        {"label": r.label, "generation": r.generation, "key_id": r.key_id, "current": False, "retired": True}
        for r in read_family(settings).retired
    ]
    if not rows:  # an empty family is a valid state, but most often a mistyped label
        typer.echo(
            f"note: token '{printable(settings.token_label)}' holds no key family "
            f"'{printable(settings.key_label)}' (kms-plugin pkcs11 init-key makes one)",
            err=True,
        )
    if output is Output.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'LABEL':<24} {'STATE':<13} {'SENSITIVE':<9} {'EXTRACT':<7}  KEY_ID")
    for row in rows:
        state = "retired" if row.get("retired") else "current" if row["current"] else "decrypt-only"
        flags = f"{row.get('sensitive', '-')!s:<9} {row.get('extractable', '-')!s:<7}"
        typer.echo(f"{printable(row['label']):<24} {state:<13} {flags}  {row['key_id']}")
