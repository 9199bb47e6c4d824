"""Which stored values need a PKCS#11 key: the proof behind ``kms-plugin pkcs11 retire-key``.

The same scan as :mod:`snapshot_tools.kek_usage` (every stored revision of every SOURCE, every
provider name), attributing each KMS value to the HSM key that wrapped it. The PKCS#11 plugin
writes two formats, both recognised (``kms_plugin.api.pkcs11_wrapping_ref``):

* ``"kx"``: the seed (v2) or DEK (v1) wrapped by the HSM key; its header carries
  ``SHA-256(key_id)[:8]`` of that key (authenticated as AAD);
* the local-KEK hierarchy (the default): a ``"kh"`` ciphertext with one
  ``encrypted-local-kek.*`` annotation holding the local KEK in ``"kx"`` format, which names the
  HSM key the same way.

For each value:

* naming the key being retired (by that ref, or by the stored v2 key_id) counts as **needing**
  it (never unwrapped: the answer would not change);
* naming another live key of the family: the value must unwrap through the token (a real
  C_Decrypt of the seed, or of the local KEK and then the seed, all authenticated); a failure is
  **unreadable**, so an altered header cannot hide a use;
* naming a retired key of the family, or a key not in the family: **unreadable** (a value under
  another provider is another plugin's when ``--provider`` names this plugin's providers);
* another format: not ours, counted per provider name; **unreadable** under a ``--provider``
  name; malformed envelopes and unknown ``k8s:enc:`` forms: **unreadable**.

References: :mod:`snapshot_tools.kek_usage` (sources, findings, the report), ``kms_plugin.keks.pkcs11format``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kms_plugin import api as plugin
from snapshot_tools.errors import ConfigError, KMSUnavailable, UsageError
from snapshot_tools.kek_usage import KekUsage, ProofAccess, ProofScanner, refuse_unknown_providers, scan_sources

if TYPE_CHECKING:
    from collections.abc import Hashable, Sequence

    from kms_plugin.api import Pkcs11KeyRef, Pkcs11Keys, Pkcs11Settings
    from snapshot_tools.kek_usage import Envelope

_UNWRAP_CACHE = 1 << 16


class _Scanner(ProofScanner):
    formats = "the PKCS#11 plugin's formats"

    def __init__(
        self,
        keys: Pkcs11Keys,
        target: Pkcs11KeyRef,
        live: Sequence[Pkcs11KeyRef],
        retired: Sequence[Pkcs11KeyRef],
        providers: Sequence[str],
        usage: KekUsage,
    ) -> None:
        super().__init__(target.ref, target.key_id, providers, usage)
        self.keys = keys
        self.live = {r.ref: r for r in live if r.ref != target.ref}
        self.retired = {r.ref: r for r in retired}
        self.family = keys.settings.key_label
        self._opened: dict[tuple[bytes, str | None, tuple[tuple[str, bytes], ...]], str | None] = {}

    def named(self, env: Envelope) -> bytes | None:
        return plugin.pkcs11_wrapping_ref(env.wrapped, env.annotations)

    def unusable(self, named: Hashable) -> str | None:
        retired = self.retired.get(named) if isinstance(named, bytes) else None
        return None if retired is None else f"wrapped by PKCS#11 key {retired.label}, which is retired"

    def held(self, named: Hashable) -> str | None:
        live = self.live.get(named) if isinstance(named, bytes) else None
        return None if live is None else live.label

    def not_held(self, named: Hashable) -> str:
        return f"wrapped by a PKCS#11 key not in family {self.family!r} of this token"

    def open(self, env: Envelope, label: str) -> str | None:
        """Why the value's data key does not unwrap through the token (None: it does)."""
        slot = (env.wrapped, env.key_id, tuple(sorted(env.annotations.items())))
        if slot in self._opened:
            return self._opened[slot]
        try:
            if env.key_id is None and not env.annotations:
                self.keys.unwrap_v1(env.wrapped)
            else:
                self.keys.unwrap(env.wrapped, env.key_id or "", env.annotations)
            failure = None
        except (plugin.KeyUnavailable, plugin.BackendError) as exc:
            # The token went away or stopped answering: no verdict, not a value that needs the key.
            raise KMSUnavailable(f"pkcs11: the token failed during the proof ({exc}); nothing retired") from None
        except plugin.Error as exc:
            failure = f"does not unwrap under PKCS#11 key {label} ({type(exc).__name__})"
        if len(self._opened) >= _UNWRAP_CACHE:
            self._opened.clear()
        self._opened[slot] = failure
        return failure


def pkcs11_key_usage(
    sources: Sequence[str],
    settings: Pkcs11Settings,
    label: str,
    *,
    providers: Sequence[str] = (),
    access: ProofAccess = ProofAccess(),  # noqa: B008 - immutable
    demoted_at: float | None = None,
) -> KekUsage:
    """Scan every revision of every source for values that need PKCS#11 key ``label`` (``K-<n>``).

    ``demoted_at``: when ``label`` stopped being current (from the audit log), if known.

    Raises:
        UsageError: no source, or ``label`` is not a live key of the family.
        ConfigError: the token cannot be used (module, PIN, token missing).
        InputError/SnapshotError: a source cannot be opened or is damaged (exit 3).
    """
    if not sources:
        raise UsageError("give at least one --proof SOURCE")
    try:
        keys = plugin.Pkcs11Keys(settings)
    except plugin.Error as exc:
        raise ConfigError(f"--pkcs11: {exc}") from None
    try:
        try:
            live, retired = keys.family()
        except plugin.Error as exc:
            raise ConfigError(f"pkcs11: {exc}") from None
        target = next((r for r in live if r.label == label), None)
        if target is None:
            raise UsageError(f"no live key {label!r} in family {settings.key_label!r}")
        usage = KekUsage(label, target.key_id)
        scanner = _Scanner(keys, target, live, retired, providers, usage)
        scan_sources(sources, scanner.judge, usage, access, demoted_at)
        refuse_unknown_providers(providers, scanner.seen)
        if demoted_at is None:
            usage.notes.append(
                f"when {label} stopped being current is not in the audit log: make sure every SOURCE "
                "was taken after the apiserver picked up the next key"
            )
        return usage
    finally:
        keys.close()
