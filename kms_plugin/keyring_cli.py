"""``kms-plugin keyring retire|restore|purge|archive|export|import``: the KEK lifecycle commands.

Registered on the ``keyring`` sub-app by :func:`register`; each command is a thin layer over
:mod:`kms_plugin.keks.lifecycle` and :mod:`kms_plugin.keks.transfer`. ``retire`` proves its
case with ``snapshot_tools.kek_usage``, imported inside the command: ``snapshot_tools`` already
depends on ``kms_plugin`` (through ``kms_plugin.api``), so the plugin's library and serve path
never import it, and only this command reaches back.

References: Typer ``command`` registration; STYLE.md 8 (thin CLI layers).
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path  # noqa: TC003 - Typer reads the annotations at run time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kms_plugin.errors import ConfigError, Error, InputError, PluginUnavailable, RetireRefused
from kms_plugin.terminal import printable

if TYPE_CHECKING:
    from snapshot_tools.kek_usage import KekUsage, ProofAccess


class _Output(StrEnum):
    table = "table"
    json = "json"


# The --proof SOURCE flags of `keyring retire` and `pkcs11 retire-key`, declared once.
ProofOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--proof",
        help="A SOURCE to prove unused against: an etcd snapshot (.db, .zip, .gz), s3://BUCKET/KEY, or a "
        "running etcd https://HOST:PORT (read-only, all revisions since its compaction); repeat for several.",
    ),
]
ProofS3EndpointOpt = Annotated[str | None, typer.Option("--s3-endpoint-url", help="S3 endpoint for s3:// sources.")]
ProofS3RegionOpt = Annotated[str | None, typer.Option("--s3-region", help="S3 region for s3:// sources.")]
ProofCacertOpt = Annotated[str | None, typer.Option("--cacert", metavar="FILE", help="etcd sources: PEM CA bundle.")]
ProofCertOpt = Annotated[
    str | None, typer.Option("--cert", metavar="FILE", help="etcd sources: PEM client certificate.")
]
ProofKeyOpt = Annotated[str | None, typer.Option("--key", metavar="FILE", help="etcd sources: PEM key of --cert.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Prove only; change nothing.")]


def proof_access(
    s3_endpoint_url: str | None, s3_region: str | None, cacert: str | None, cert: str | None, key: str | None
) -> ProofAccess:
    """How the --proof SOURCEs are reached (S3, a live etcd's TLS files)."""
    from snapshot_tools.inputs import S3Options
    from snapshot_tools.kek_usage import ProofAccess

    return ProofAccess(S3Options(s3_endpoint_url, s3_region), cacert, cert, key)


_PHRASE_FILE_HELP = (
    "File holding the passphrase (mode 0600; one trailing newline is dropped). "
    "Default: the KMS_PLUGIN_PASSPHRASE environment variable. Never on the command line."
)


def _from_snapshot_tools(exc: Exception) -> Error:
    """A ``snapshot_tools`` error as ours, keeping its exit code (3 input, 2 usage, 4 a source that
    did not answer, else 1)."""
    from snapshot_tools.errors import EXIT_INPUT, EXIT_KMS, EXIT_USAGE, exit_code_for

    code = exit_code_for(exc)
    if code == EXIT_INPUT:
        return InputError(str(exc))
    if code == EXIT_USAGE:
        return ConfigError(str(exc))
    if code == EXIT_KMS:  # an S3 or etcd source that did not answer
        return PluginUnavailable(str(exc))
    return Error(str(exc))


def _render_usage(usage: KekUsage, output: _Output) -> None:
    if output is _Output.json:
        typer.echo(json.dumps(usage.to_json(), indent=2))
        return
    for scan in usage.sources:
        typer.echo(
            f"source {printable(scan.name)}: revision {scan.revision}, {scan.values} stored values "
            f"(all revisions), trailer {scan.integrity}"
        )
    if usage.by_kek:
        typer.echo("values per KEK: " + ", ".join(f"{k} {n}" for k, n in sorted(usage.by_kek.items())))
    for name, n in sorted(usage.other_kms.items()):
        typer.echo(f"not in this keyring's format: provider {printable(name)!s}: {n} values")
    for title, findings in (
        (f"still need KEK {usage.kek_id}", usage.needing),
        ("cannot be read (their KEK is not proven)", usage.unreadable),
    ):
        for row in findings.to_json():
            typer.echo(f"{title}: {printable(row['what'])}: {row['count']}")
            for key in row["first"]:
                typer.echo(f"    {printable(key)}")
            if row["count"] > len(row["first"]):
                typer.echo(f"    ... and {row['count'] - len(row['first'])} more")
    for line in usage.problems:
        typer.echo(f"problem: {printable(line)}")
    for line in usage.notes:
        typer.echo(f"note: {printable(line)}")


def _refusal(usage: KekUsage) -> str:
    parts = []
    if usage.needing:
        counts = ", ".join(f"{k} {n}" for k, n in sorted(usage.needing.counts.items()))
        parts.append(f"{sum(usage.needing.counts.values())} stored value(s) still need it ({counts})")
    if usage.unreadable:
        parts.append(f"{sum(usage.unreadable.counts.values())} value(s) could not be read")
    parts.extend(usage.problems)
    return f"refusing to retire KEK {usage.kek_id}: " + "; ".join(parts)


def keyring_retire(
    file: Path = typer.Argument(..., help="Keyring file."),
    kek_id: str = typer.Argument(..., help="The decrypt-only KEK to retire."),
    proof: ProofOpt = None,
    s3_endpoint_url: ProofS3EndpointOpt = None,
    s3_region: ProofS3RegionOpt = None,
    cacert: ProofCacertOpt = None,
    cert: ProofCertOpt = None,
    key: ProofKeyOpt = None,
    provider: list[str] = typer.Option(
        [],
        "--provider",
        help="KMS provider name this keyring serves: a value under it in another format is unreadable.",
    ),
    dry_run: DryRunOpt = False,
    output: _Output = typer.Option(_Output.table, "--output", "-o", help="table or json."),
) -> None:
    """Move a decrypt-only KEK into the retired-KEK archive, once no stored value needs it.

    Every SOURCE is read across all revisions; retiring is refused (exit 1) when a value needs
    the KEK, a value cannot be read, or a source is damaged or older than the KEK's demotion.
    """
    from kms_plugin.keks.lifecycle import retirable, retire
    from kms_plugin.keks.local import Keyring
    from kms_plugin.stop_signals import stop_signals_raise
    from snapshot_tools.errors import Error as SnapshotToolsError
    from snapshot_tools.kek_usage import kek_usage

    if not proof:
        raise ConfigError("give at least one --proof SOURCE (an etcd snapshot of the cluster)")
    keyring = Keyring.load(file)
    kek = retirable(keyring, kek_id)
    try:
        with stop_signals_raise():
            reach = proof_access(s3_endpoint_url, s3_region, cacert, cert, key)
            usage = kek_usage(proof, keyring, kek_id, providers=provider, access=reach)
    except SnapshotToolsError as exc:
        raise _from_snapshot_tools(exc) from None
    _render_usage(usage, output)
    if not usage.proven:
        raise RetireRefused(_refusal(usage))
    if dry_run:
        typer.echo(f"KEK {kek_id} is proven unused; --dry-run: nothing changed", err=True)
        return
    trimmed = retire(file, kek_id, kek, usage.summary())
    typer.echo(
        f"retired KEK {kek_id} from {printable(str(file))} into its archive; "
        f"{len(trimmed.keks)} KEK(s) left, {trimmed.active.id} active",
        err=output is _Output.json,
    )


def keyring_restore(
    file: Path = typer.Argument(..., help="Keyring file."),
    kek_id: str = typer.Argument(..., help="An archived KEK id."),
) -> None:
    """Put a retired KEK back into the keyring as decrypt-only."""
    from kms_plugin.keks.lifecycle import restore

    restore(file, kek_id)
    typer.echo(f"restored KEK {kek_id} into {printable(str(file))} (decrypt-only)")


def keyring_archive(
    file: Path = typer.Argument(..., help="Keyring file."),
    output: _Output = typer.Option(_Output.table, "--output", "-o", help="table or json."),
) -> None:
    """List the retired KEKs kept beside the keyring (ids and times only)."""
    from kms_plugin.keks.archive import read_archive
    from kms_plugin.keks.local import Keyring, _resolve

    # The archive is listed only beside a real keyring: a mistyped path must not read as "none".
    Keyring.load(file)
    rows = [
        {"id": e.id, "created": e.created, "retired": e.retired, "sealed_by": e.sealed_by}
        for e in read_archive(_resolve(file))
    ]
    if output is _Output.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'ID':<18} {'CREATED':<28} {'RETIRED':<28} SEALED_BY")
    for row in rows:
        typer.echo(f"{row['id']:<18} {row['created']:<28} {row['retired']:<28} {row['sealed_by']}")


def keyring_purge(
    file: Path = typer.Argument(..., help="Keyring file."),
    kek_ids: list[str] = typer.Argument(None, help="Archived KEK ids to destroy."),
    purge_all: bool = typer.Option(False, "--all", help="Destroy every archived KEK."),
    confirm: bool = typer.Option(
        False, "--yes-destroy-keys", help="Required: values still under these KEKs become unreadable for good."
    ),
) -> None:
    """Destroy retired KEKs from the archive for good (needs --yes-destroy-keys)."""
    from kms_plugin.keks.lifecycle import purge

    ids = list(kek_ids or [])
    if purge_all == bool(ids):
        raise ConfigError("name the archived KEK ids to purge, or pass --all (not both)")
    if not confirm:
        raise ConfigError("purging destroys keys for good: add --yes-destroy-keys to confirm")
    gone = purge(file, ids, everything=purge_all)
    typer.echo(f"purged {len(gone)} retired KEK(s) for good: {', '.join(gone)}")


def keyring_export(
    file: Path = typer.Argument(..., help="Keyring file."),
    to: Path = typer.Option(..., "--to", help="Export file to create (0600; never overwritten)."),
    kek: list[str] = typer.Option([], "--kek", help="KEK id to export; repeat; default: all."),
    passphrase_file: Path | None = typer.Option(None, "--passphrase-file", help=_PHRASE_FILE_HELP),
) -> None:
    """Write KEKs to a file encrypted under a passphrase (scrypt + AES-256-GCM)."""
    import os

    from kms_plugin.keks.local import Keyring, _resolve
    from kms_plugin.keks.transfer import read_passphrase, write_export

    keyring = Keyring.load(file)
    if os.path.realpath(to) == os.path.realpath(_resolve(file)):
        raise ConfigError(f"--to {to} is the keyring itself")
    have = {k.id: k for k in keyring.keks}
    unknown = [i for i in kek if i not in have]
    if unknown:
        raise ConfigError(f"--kek {unknown[0]!r}: keyring {file} holds {', '.join(have)}")
    chosen = [have[i] for i in dict.fromkeys(kek)] if kek else list(keyring.keks)
    passphrase = read_passphrase(passphrase_file, new=True)
    write_export(to, chosen, passphrase)
    typer.echo(f"exported {len(chosen)} KEK(s) to {printable(str(to))}: {', '.join(k.id for k in chosen)}")


def keyring_import(
    file: Path = typer.Argument(..., help="Keyring file (created when --activate is given and it is missing)."),
    source: Path = typer.Option(..., "--from", help="Export file written by keyring export."),
    activate: str | None = typer.Option(
        None, "--activate", help="Make this imported KEK the active one (default: all decrypt-only)."
    ),
    passphrase_file: Path | None = typer.Option(None, "--passphrase-file", help=_PHRASE_FILE_HELP),
) -> None:
    """Add KEKs from an export file: new ids decrypt-only, identical ones skipped."""
    from kms_plugin.keks.lifecycle import import_keks
    from kms_plugin.keks.transfer import read_export, read_passphrase

    passphrase = read_passphrase(passphrase_file, new=False)
    keks = read_export(source, passphrase)
    result = import_keks(file, keks, activate=activate, source=str(source))
    summary: dict[str, Any] = {"added": result.added, "skipped": result.skipped, "active": result.keyring.active.id}
    typer.echo(
        f"imported into {printable(str(file))}: added {', '.join(summary['added']) or 'none'}; "
        f"skipped (already held) {', '.join(summary['skipped']) or 'none'}; active {summary['active']}"
    )


def register(keyring_app: typer.Typer) -> None:
    """Add the lifecycle commands to the ``keyring`` sub-app."""
    keyring_app.command("retire")(keyring_retire)
    keyring_app.command("restore")(keyring_restore)
    keyring_app.command("archive")(keyring_archive)
    keyring_app.command("purge")(keyring_purge)
    keyring_app.command("export")(keyring_export)
    keyring_app.command("import")(keyring_import)
