"""Flag groups several commands share, declared once: the key flags (:class:`KeyFlags`), the S3
flags (:class:`S3Flags`) and the live-etcd flags (:class:`EtcdFlags`).

A command names a group as one keyword parameter (``keys: KeyFlags``) and is decorated with
:func:`expand`, which shows Typer the group's options in its place and hands the command the
group's value. Every command then has the same flags, help and defaults, and the code that turns
them into a :class:`~snapshot_tools.unwrap.KeyAccess` or an S3/etcd target lives here alone.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from snapshot_tools.cli.options import (
    AwsContextOpt,
    AwsEndpointOpt,
    AwsKmsOpt,
    AwsRegionOpt,
    EtcdCacertOpt,
    EtcdCertOpt,
    EtcdEndpointOpt,
    EtcdKeyOpt,
    EtcdTimeoutOpt,
    K3sTokenOpt,
    KeyringOpt,
    KmsOpt,
    Pkcs11KeyOpt,
    Pkcs11ModuleOpt,
    Pkcs11Opt,
    Pkcs11PinOpt,
    Pkcs11TokenOpt,
    S3EndpointOpt,
    S3RegionOpt,
    key_access,
    pkcs11_access,
    s3_options,
    snapshot_or_etcd,
)
from snapshot_tools.live_etcd import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from snapshot_tools.inputs import S3Options
    from snapshot_tools.live_etcd import EtcdTarget
    from snapshot_tools.unwrap import KeyAccess

__all__ = ["EtcdFlags", "KeyFlags", "S3Flags", "expand"]

F = TypeVar("F", bound="Callable[..., Any]")


class KeyFlags(NamedTuple):
    """--kms, --keyring, --aws-*, --k3s-token and --pkcs11*: how a command reaches its keys."""

    kms: list[str] | None = None
    keyring: list[str] | None = None
    aws_kms: list[str] | None = None
    aws_region: str | None = None
    aws_endpoint_url: str | None = None
    aws_encryption_context: str = ""
    k3s_token: str | None = None
    pkcs11: list[str] | None = None
    pkcs11_module: str | None = None
    pkcs11_token_label: str | None = None
    pkcs11_key_label: str | None = None
    pkcs11_pin: str | None = None

    def access(self, configs: Sequence[str] | None, *, required: bool = True) -> KeyAccess:
        """The command's one :class:`KeyAccess` with the ``--config`` list it was given.

        ``required=False``: the command may run without any key (no --config, no --k3s-token).

        Raises:
            UsageError, ConfigError: as :func:`~snapshot_tools.cli.options.key_access`.
        """
        return key_access(
            configs or [],
            self.kms,
            self.keyring,
            self.aws_kms,
            self.aws_region,
            self.aws_endpoint_url,
            self.aws_encryption_context,
            self.k3s_token,
            required=required,
            pkcs11=pkcs11_access(
                self.pkcs11, self.pkcs11_module, self.pkcs11_token_label, self.pkcs11_key_label, self.pkcs11_pin
            ),
        )


class S3Flags(NamedTuple):
    """--s3-endpoint-url and --s3-region: where an ``s3://`` SNAPSHOT is."""

    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    def options(self) -> S3Options:
        return s3_options(self.s3_endpoint_url, self.s3_region)


class EtcdFlags(NamedTuple):
    """--etcd-endpoint and its TLS files: a running etcd read instead of SNAPSHOT."""

    etcd_endpoint: str | None = None
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    etcd_timeout: float = DEFAULT_TIMEOUT

    def target(self, snapshot: str | None) -> EtcdTarget | None:
        """The etcd to read, or ``None`` for SNAPSHOT; exactly one of them must be given.

        Raises:
            UsageError: both or neither, TLS files without --etcd-endpoint, a malformed endpoint.
        """
        return snapshot_or_etcd(snapshot, self.etcd_endpoint, self.cacert, self.cert, self.key, self.etcd_timeout)


# Each group's options as Typer sees them: (parameter name, annotation); defaults are the fields'.
_OPTIONS: dict[type[Any], tuple[tuple[str, object], ...]] = {
    KeyFlags: (
        ("kms", KmsOpt),
        ("keyring", KeyringOpt),
        ("aws_kms", AwsKmsOpt),
        ("aws_region", AwsRegionOpt),
        ("aws_endpoint_url", AwsEndpointOpt),
        ("aws_encryption_context", AwsContextOpt),
        ("k3s_token", K3sTokenOpt),
        ("pkcs11", Pkcs11Opt),
        ("pkcs11_module", Pkcs11ModuleOpt),
        ("pkcs11_token_label", Pkcs11TokenOpt),
        ("pkcs11_key_label", Pkcs11KeyOpt),
        ("pkcs11_pin", Pkcs11PinOpt),
    ),
    S3Flags: (("s3_endpoint_url", S3EndpointOpt), ("s3_region", S3RegionOpt)),
    EtcdFlags: (
        ("etcd_endpoint", EtcdEndpointOpt),
        ("cacert", EtcdCacertOpt),
        ("cert", EtcdCertOpt),
        ("key", EtcdKeyOpt),
        ("etcd_timeout", EtcdTimeoutOpt),
    ),
}


def expand(command: F) -> F:
    """Show Typer each flag-group parameter of ``command`` as the group's options, and call
    ``command`` with the group's value built from them. Apply below ``@app.command()``."""
    signature = inspect.signature(command, eval_str=True)
    groups: dict[str, type[Any]] = {}
    params: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        group = param.annotation if param.annotation in _OPTIONS else None
        if group is None:
            # After a group every parameter is keyword-only, as the group's options are.
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY) if groups else param)
            continue
        groups[param.name] = group
        defaults = group._field_defaults
        for name, annotation in _OPTIONS[group]:
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults[name],
                                            annotation=annotation))  # fmt: skip
    if not groups:
        raise TypeError(f"{command.__name__} has no flag-group parameter")

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        for name, group in groups.items():
            kwargs[name] = group(**{field: kwargs.pop(field) for field in group._fields})
        return command(*args, **kwargs)

    expanded = signature.replace(parameters=params)
    run.__signature__ = expanded  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params} | {"return": signature.return_annotation}
    return run  # type: ignore[return-value]
