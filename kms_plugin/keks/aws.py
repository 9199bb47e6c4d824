"""The AWS KMS backend: one KMS key (ARN, key id or alias) wraps seeds; health from a probe.

* The key is resolved (alias -> key ARN) at start and again by every probe, so an alias moved to
  another key shows as a new key_id (see :mod:`kms_plugin.keks.awsformat` for the key_id).
* :meth:`status` never calls AWS: :meth:`probe` (run by the health monitor every
  ``--probe-interval``) reads the key state with ``DescribeKey`` (enabled, disabled, pending
  deletion: emulators keep answering Encrypt for a disabled key, AWS does not) and its rotations,
  then does an Encrypt+Decrypt round trip, and caches the verdict. User-caused problems and
  throttling set ``user_caused`` so ``/livez`` stays up; transient ones do not.
* Decrypt reads our format (``"ka"``) and aws-encryption-provider's (``"1"``). Ours must come with
  a key_id the key that AWS says it used has had (any rotation state); the legacy one with that
  provider's ``--key`` string (ARN, key id or alias) naming the configured key. Such values are
  stale to our Status key_id, so the apiserver rewrites them in our format.

References: aws-encryption-provider ``pkg/plugin/plugin_v2.go`` and ``shared_health_check.go``;
STYLE.md item 10.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kms_plugin.errors import (
    BackendError,
    BackendThrottled,
    ConfigError,
    Error,
    InvalidCiphertext,
    KeyUnavailable,
    UnknownKeyId,
)
from kms_plugin.keks import awsformat
from kms_plugin.keks.base import BackendStatus, Wrapped

if TYPE_CHECKING:
    from collections.abc import Mapping

    from kms_plugin.keks.awsclient import AwsKms

log = logging.getLogger("kms_plugin.aws")

# Codes that mean the flags name the wrong thing: refuse to start rather than serve errors.
_FATAL_AT_START = ("NotFoundException", "InvalidKeyUsageException")


@dataclass(frozen=True)
class KeyView:
    """What the configured key resolves to now."""

    arn: str
    key_id: str
    state: str


class AwsKmsBackend:
    """A :class:`~kms_plugin.keks.base.KEKBackend` over one AWS KMS key.

    Args:
        kms: the bounded client; ``kms.settings.key`` names the key (None only offline: then
            any key AWS decrypts with is accepted and there is no current key_id).
    """

    name = "aws"

    def __init__(self, kms: AwsKms) -> None:
        self.kms = kms
        self.key = kms.settings.key
        self._view: KeyView | None = None
        self._arns: set[str] = set()  # every ARN the configured key resolved to in this process
        self._status = BackendStatus("", False, "aws kms: key not resolved yet", False)

    # -- key state -------------------------------------------------------------------------

    def start(self) -> None:
        """Resolve the key once; a missing or unsuitable key is a ConfigError (exit 2).

        Anything else (AWS unreachable, throttled, access denied) starts anyway: the health
        probe reports it and picks the key up when AWS answers.
        """
        if self.key is None:
            raise ConfigError("the AWS KMS backend needs a key (--aws-key-id)")
        try:
            view = self.resolve()
        except KeyUnavailable as exc:
            if exc.aws_code in _FATAL_AT_START:
                self.kms.close()
                raise ConfigError(f"--aws-key-id {self.key}: {exc}") from None
            self._status = BackendStatus("", False, str(exc), True)
        except Error as exc:
            self._status = BackendStatus("", False, str(exc), isinstance(exc, BackendThrottled))
        else:
            self._status = BackendStatus(view.key_id, False, "aws kms: not probed yet", True)

    def resolve(self) -> KeyView:
        """DescribeKey + ListKeyRotations: the key's ARN, key_id and state (two AWS calls)."""
        assert self.key is not None
        meta = self.kms.describe(self.key)
        usage, spec = meta.get("KeyUsage", "ENCRYPT_DECRYPT"), meta.get("KeySpec", "SYMMETRIC_DEFAULT")
        if usage != "ENCRYPT_DECRYPT" or spec != "SYMMETRIC_DEFAULT":
            raise ConfigError(f"--aws-key-id: the key is {spec}/{usage}, not a symmetric encryption key")
        arn = str(meta["Arn"])
        _ids, key_id = self.kms.key_ids(arn, max_age=0.0)
        view = KeyView(arn, key_id, str(meta.get("KeyState", "Enabled")))
        old, self._view = self._view, view
        self._arns.add(arn)
        if old is not None and old.key_id != view.key_id:
            why = "the alias now names another key" if old.arn != arn else "key material rotated"
            log.info("AWS KMS key_id changed: %s -> %s (%s)", old.key_id, view.key_id, why)
        return view

    def current_key_id(self) -> str | None:
        """The key_id of the configured key now, resolving it if needed (offline tools)."""
        if self.key is None:
            return None
        view = self._view or self.resolve()
        return view.key_id

    def probe(self) -> BackendStatus:
        """Refresh the cached health: key state, rotations, a round trip. Never raises."""
        try:
            view = self.resolve()
            if view.state != "Enabled":
                status = BackendStatus(view.key_id, False, f"aws kms: key is {view.state}", True)
            else:
                seed = os.urandom(32)
                blob, _ = self.kms.encrypt(view.arn, seed)
                plain, _ = self.kms.decrypt(blob)
                ok = plain == seed
                reason = "ok" if ok else "aws kms: round trip returned a different value"
                status = BackendStatus(view.key_id, ok, reason, False)
        except Error as exc:
            key_id = self._view.key_id if self._view else ""
            user = isinstance(exc, (KeyUnavailable, BackendThrottled, ConfigError))
            status = BackendStatus(key_id, False, str(exc), user)
        if (status.healthy, status.reason) != (self._status.healthy, self._status.reason):
            level = logging.INFO if status.healthy else logging.WARNING
            log.log(level, "AWS KMS health: %s (key_id %s)", status.reason, status.key_id or "-")
        self._status = status
        return status

    # -- KEKBackend ------------------------------------------------------------------------

    def status(self) -> BackendStatus:
        return self._status

    def wrap(self, plaintext: bytes) -> Wrapped:
        view = self._view
        if view is None:
            raise BackendError("aws kms: key not resolved yet (see /healthz)")
        if not plaintext or len(plaintext) > awsformat.MAX_PLAINTEXT:
            raise ValueError(f"plaintext must be 1..{awsformat.MAX_PLAINTEXT} bytes")
        blob, _arn = self.kms.encrypt(view.arn, plaintext)
        return Wrapped(awsformat.seal(blob), view.key_id, {})

    def unwrap(
        self, ciphertext: bytes, key_id: str | None, annotations: Mapping[str, bytes]
    ) -> bytes:
        if annotations:
            raise InvalidCiphertext(
                f"unexpected annotations {sorted(annotations)!r}: the AWS backend writes none"
            )
        kind, blob = awsformat.parse(ciphertext)
        ours_id = key_id is not None and key_id.startswith(awsformat.KEY_ID_PREFIX)
        if key_id is not None and ours_id != (kind == awsformat.OURS):
            raise UnknownKeyId(f"key_id {key_id[:80]!r} does not go with this ciphertext format")
        plaintext, arn = self.kms.decrypt(blob)
        if kind == awsformat.OURS:
            self._check_ours(arn, key_id)
        else:
            self._check_legacy(arn, key_id)
        return plaintext

    def max_plaintext(self) -> int:
        return awsformat.MAX_PLAINTEXT

    def close(self) -> None:
        self.kms.close()

    # -- key_id checks after AWS said which key it used -------------------------------------

    def _configured(self, arn: str) -> bool:
        if self.key is None:
            return True
        if self._view is None:  # not resolved yet (offline, or AWS was down at start)
            self.resolve()
        return arn in self._arns

    def _check_ours(self, arn: str, key_id: str | None) -> None:
        if key_id is None:  # KMS v1 has no key_id: the key must be ours
            if not self._configured(arn):
                raise UnknownKeyId("the value was wrapped by an AWS key other than the configured one")
            return
        ids, _ = self.kms.key_ids(arn)
        if key_id not in ids:
            ids, _ = self.kms.key_ids(arn, max_age=self.kms.ROTATION_REFRESH)
        if key_id not in ids:
            raise UnknownKeyId(f"key_id {key_id} was not issued for the AWS key that wrapped the value")

    def _check_legacy(self, arn: str, key_id: str | None) -> None:
        if not self._configured(arn):
            raise UnknownKeyId("the value was wrapped by an AWS key other than the configured one")
        if key_id is None or awsformat.names_key(key_id, arn):
            return
        if awsformat.is_alias(key_id) and self.kms.resolve_alias(key_id) == arn:
            return
        raise UnknownKeyId(f"key_id {key_id[:200]!r} does not name the AWS key that wrapped the value")

