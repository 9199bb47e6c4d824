"""Typer options shared by several commands, defined once so their flags and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SnapshotArg = Annotated[
    Path, typer.Argument(help="etcd snapshot file (etcdctl snapshot save) or a member/snap/db copy; only read.")
]
ConfigOpt = Annotated[
    list[str],
    typer.Option(
        "--config",
        "-c",
        help="EncryptionConfiguration file or directory; repeat for history. The first is the current one.",
    ),
]
KmsOpt = Annotated[
    list[str] | None,
    typer.Option("--kms", help="NAME=unix:///path.sock: reach KMS provider NAME through this plugin socket."),
]
KeyringOpt = Annotated[
    list[str] | None,
    typer.Option("--keyring", help="NAME=FILE: KMS provider NAME's data keys from a kms-plugin keyring file."),
]
PrefixOpt = Annotated[str, typer.Option("--etcd-prefix", help="kube-apiserver --etcd-prefix.")]
