"""Stored value -> candidate keys -> plaintext, with the verdict and why.

A value is judged the way a kube-apiserver started with the *current* config (the first one
given) would see it (DESIGN.md "Keys and verdicts"):

* ``current``: the current config would write it exactly like this now;
* ``stale``: the current config can read it but would write it differently;
* ``retired``: only an older config given can read it;
* ``unreadable``: nothing given reads it; ``reason`` says why (:data:`REASONS`).

References: ``transformer.go`` ``prefixTransformers.TransformFromStorage`` (read order and the
stale flag), ``kmsv2/envelope.go`` (keyID staleness), spec sections 1.3, 6.4, 12.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from snapshot_tools import objects
from snapshot_tools.errors import InvalidCiphertext, KMSUnavailable, MalformedValue
from snapshot_tools.forms import ENCRYPTED_PREFIX, PREFIXES
from snapshot_tools.providers import aescbc, aesgcm, kmsv1, kmsv2, secretbox

if TYPE_CHECKING:
    from collections.abc import Mapping

    from snapshot_tools.keysets import EncryptionConfig, KeySet, KMSProvider, StaticKey
    from snapshot_tools.kms import Unwrapper
    from snapshot_tools.resources import ResourceRef

VERDICTS = ("current", "stale", "retired", "unreadable")
REASONS = ("no-such-key", "wrong-key", "corrupt", "kms-unavailable", "plaintext-rejected")

_PREFIX_FORMS = {form: prefix for prefix, form in PREFIXES}
_STATIC_FORMS = ("aescbc", "aesgcm", "secretbox")


@dataclass(slots=True)
class Resolution:
    """What one stored value turned out to be."""

    verdict: str
    provider: str
    key_name: str | None = None
    key: StaticKey | KMSProvider | None = None
    reason: str | None = None
    plaintext_flag: bool = False
    plaintext: bytes | None = field(default=None, repr=False)


@dataclass(slots=True)
class _ResourceView:
    """How the given configs treat one group-resource; computed once per resource."""

    covered_by_current: bool
    current_first: object | None  # the ProviderEntry that writes, None when uncovered
    current_reads_plaintext: bool
    older_reads_plaintext: bool
    any_lists_identity: bool
    current_static: frozenset[tuple[str, str, bytes]]  # (provider, name, secret) readable now
    current_kms: frozenset[tuple[str, str]]  # (api_version, name) readable now
    covered_by_any: bool


def _entries_read_plaintext(entries: tuple[object, ...] | None) -> bool:
    # An uncovered resource gets the bare identity transformer: plaintext reads fine.
    return entries is None or any(e.kind == "identity" for e in entries)  # type: ignore[attr-defined]


class Resolver:
    """Judges stored values against a :class:`KeySet` and the KMS unwrappers given.

    Args:
        keyset: the configs, first = current.
        unwrappers: KMS provider name -> unwrapper (plugin socket, keyring, ...).
        keep_plaintext: keep decrypted bytes on the result (rewrite/extract); check drops them.
    """

    def __init__(
        self,
        keyset: KeySet,
        unwrappers: Mapping[str, Unwrapper],
        *,
        keep_plaintext: bool = False,
    ) -> None:
        self.keyset = keyset
        self.unwrappers = dict(unwrappers)
        self.keep_plaintext = keep_plaintext
        self._views: dict[tuple[str, str] | None, _ResourceView] = {}
        self._names: dict[str, list[tuple[bytes, str]]] = {}
        self._last_good: dict[tuple[str, str], StaticKey] = {}
        self._kms_key_ids: dict[str, str | None] = {}
        # Objects decrypted per key identity, for the key table.
        self.key_use: dict[tuple[str, str, str], int] = {}

    # -- per-resource view -------------------------------------------------------------

    def _view(self, ref: ResourceRef | None) -> _ResourceView:
        gr = (ref.group, ref.resource) if ref is not None else None
        view = self._views.get(gr)
        if view is None:
            view = self._build_view(gr)
            self._views[gr] = view
        return view

    def _providers(self, config: EncryptionConfig, gr: tuple[str, str] | None) -> tuple | None:
        if gr is None:
            return None
        return config.providers_for(gr[0], gr[1])

    def _build_view(self, gr: tuple[str, str] | None) -> _ResourceView:
        configs = self.keyset.configs
        current = self._providers(configs[0], gr)
        older = [self._providers(c, gr) for c in configs[1:]]
        static: set[tuple[str, str, bytes]] = set()
        kms: set[tuple[str, str]] = set()
        for entry in current or ():
            if entry.kind in _STATIC_FORMS:
                static.update((k.provider, k.name, k.secret) for k in entry.keys)
            elif entry.kind == "kms":
                kms.add((entry.kms.api_version, entry.kms.name))
        all_entries = [current, *older]
        return _ResourceView(
            covered_by_current=current is not None,
            current_first=current[0] if current else None,
            current_reads_plaintext=_entries_read_plaintext(current),
            older_reads_plaintext=any(_entries_read_plaintext(e) for e in older),
            any_lists_identity=any(
                e is not None and any(p.kind == "identity" for p in e) for e in all_entries
            ),
            current_static=frozenset(static),
            current_kms=frozenset(kms),
            covered_by_any=any(e is not None for e in all_entries),
        )

    def is_reported(self, value: bytes, ref: ResourceRef | None) -> bool:
        """Encrypted values always; plaintext only for resources some config covers."""
        if value.startswith(ENCRYPTED_PREFIX):
            return True
        return self._view(ref).covered_by_any

    # -- judging -----------------------------------------------------------------------

    def resolve(self, etcd_key: bytes, value: bytes, ref: ResourceRef | None) -> Resolution:
        """Judge one stored value; never raises for bad data (that is a verdict)."""
        view = self._view(ref)
        if not value.startswith(ENCRYPTED_PREFIX):
            return self._plaintext(value, view)
        for prefix, form in PREFIXES:
            if value.startswith(prefix):
                body = value[len(prefix) :]
                if form in _STATIC_FORMS:
                    return self._static(form, body, etcd_key, view)
                return self._kms(form, body, etcd_key, view)
        return Resolution("unreadable", "unknown", reason="corrupt")

    def _plaintext(self, value: bytes, view: _ResourceView) -> Resolution:
        first = view.current_first
        flag = first is not None and first.kind != "identity"  # type: ignore[attr-defined]
        res = Resolution("current", "identity", plaintext_flag=flag)
        if self.keep_plaintext:
            res.plaintext = value
        if not flag:
            return res  # current writes plaintext: uncovered, or identity first
        if view.current_reads_plaintext:
            res.verdict = "stale"
        elif view.older_reads_plaintext:
            res.verdict = "retired"
        else:
            res.verdict, res.reason = "unreadable", "plaintext-rejected"
        return res

    def _candidate_names(self, form: str, body: bytes) -> list[tuple[bytes, str]]:
        names = self._names.get(form)
        if names is None:
            # Longest first: with names "a" and "a:b" both matching, "a:b" is the likelier.
            names = sorted(
                ((n.encode() + b":", n) for n in self.keyset.static_names(form)),
                key=lambda item: -len(item[0]),
            )
            self._names[form] = names
        return [(p, n) for p, n in names if body.startswith(p)]

    def _static(self, form: str, body: bytes, etcd_key: bytes, view: _ResourceView) -> Resolution:
        matches = self._candidate_names(form, body)
        guess = body.split(b":", 1)[0].decode("utf-8", "replace") if b":" in body else None
        if not matches:
            reason = "no-such-key" if guess is not None else "corrupt"
            return Resolution("unreadable", form, key_name=guess, reason=reason)
        malformed = 0
        tried = 0
        for prefix, name in matches:
            payload = body[len(prefix) :]
            candidates = self.keyset.static_candidates(form, name)
            last = self._last_good.get((form, name))
            if last is not None and candidates and candidates[0] is not last:
                candidates = [last, *(c for c in candidates if c is not last)]
            for key in candidates:
                tried += 1
                try:
                    plaintext = _static_decrypt(form, key.secret, payload, etcd_key)
                except MalformedValue:
                    malformed += 1
                    continue
                except InvalidCiphertext:
                    continue
                if form == "aescbc" and not objects.is_kubernetes_object(plaintext):
                    continue  # no MAC: valid padding by chance is not a read
                self._last_good[(form, name)] = key
                return self._judged_static(form, key, view, plaintext)
        reason = "corrupt" if tried and malformed == tried else "wrong-key"
        return Resolution("unreadable", form, key_name=matches[0][1], reason=reason)

    def _judged_static(
        self, form: str, key: StaticKey, view: _ResourceView, plaintext: bytes
    ) -> Resolution:
        ident = (form, key.name, key.secret)
        use = (form, key.name, key.fingerprint)
        self.key_use[use] = self.key_use.get(use, 0) + 1
        first = view.current_first
        res = Resolution("retired", form, key_name=key.name, key=key)
        if self.keep_plaintext:
            res.plaintext = plaintext
        if ident in view.current_static:
            res.verdict = "stale"
            if first is not None and first.kind == form:  # type: ignore[attr-defined]
                k0 = first.keys[0]  # type: ignore[attr-defined]
                if k0.name == key.name and k0.secret == key.secret:
                    res.verdict = "current"
        return res

    # -- KMS ---------------------------------------------------------------------------

    def _kms_names(self, form: str, body: bytes) -> list[str]:
        version = "v1" if form == "kms-v1" else "v2"
        names = []
        for name in self.keyset.kms_names(version):
            if body.startswith(name.encode() + b":"):
                names.append(name)
        for name in self.unwrappers:
            if name not in names and body.startswith(name.encode() + b":"):
                names.append(name)
        return sorted(names, key=len, reverse=True)

    def _kms(self, form: str, body: bytes, etcd_key: bytes, view: _ResourceView) -> Resolution:
        names = self._kms_names(form, body)
        guess = body.split(b":", 1)[0].decode("utf-8", "replace") if b":" in body else None
        if not names:
            reason = "no-such-key" if guess is not None else "corrupt"
            return Resolution("unreadable", form, key_name=guess, reason=reason)
        last: Resolution | None = None
        for name in names:
            payload = body[len(name) + 1 :]
            res = self._kms_one(form, name, payload, etcd_key, view)
            if res.verdict != "unreadable":
                return res
            last = res
        assert last is not None
        return last

    def _kms_one(
        self, form: str, name: str, payload: bytes, etcd_key: bytes, view: _ResourceView
    ) -> Resolution:
        version = "v1" if form == "kms-v1" else "v2"
        unwrapper = self.unwrappers.get(name)
        provider = self.keyset.kms_provider(name, version)
        res = Resolution("unreadable", form, key_name=name, key=provider)
        if unwrapper is None:
            res.reason = "kms-unavailable"
            return res
        try:
            if form == "kms-v1":
                plaintext, stale_form = self._kms_v1(unwrapper, payload, etcd_key)
            else:
                plaintext, stale_form = self._kms_v2(unwrapper, name, payload, etcd_key)
        except MalformedValue:
            res.reason = "corrupt"
            return res
        except InvalidCiphertext:
            res.reason = "wrong-key"
            return res
        except KMSUnavailable:
            res.reason = "kms-unavailable"
            return res
        use = (form, name, provider.fingerprint if provider is not None else "")
        self.key_use[use] = self.key_use.get(use, 0) + 1
        if self.keep_plaintext:
            res.plaintext = plaintext
        first = view.current_first
        if (version, name) in view.current_kms:
            res.verdict = "stale"
            is_first = (
                first is not None
                and first.kind == "kms"  # type: ignore[attr-defined]
                and first.kms.name == name  # type: ignore[attr-defined]
                and first.kms.api_version == version  # type: ignore[attr-defined]
            )
            if is_first and not stale_form:
                res.verdict = "current"
        else:
            res.verdict = "retired"
        return res

    def _kms_v1(self, unwrapper: Unwrapper, payload: bytes, etcd_key: bytes) -> tuple[bytes, bool]:
        encrypted_dek, data = kmsv1.split(payload)
        dek = unwrapper.unwrap_v1(encrypted_dek)
        plaintext, mode = kmsv1.decrypt_payload(dek, data, etcd_key)
        if mode == "cbc" and not objects.is_kubernetes_object(plaintext):
            raise InvalidCiphertext("not a Kubernetes object")
        return plaintext, mode != "gcm"

    def _kms_v2(
        self, unwrapper: Unwrapper, name: str, payload: bytes, etcd_key: bytes
    ) -> tuple[bytes, bool]:
        obj = kmsv2.parse(payload)
        source = unwrapper.unwrap_v2(obj.encrypted_dek_source, obj.key_id, obj.annotations)
        plaintext = kmsv2.decrypt(obj, source, etcd_key)
        if name not in self._kms_key_ids:
            self._kms_key_ids[name] = unwrapper.current_key_id()
        current_id = self._kms_key_ids[name]
        stale = current_id is None or obj.key_id != current_id or obj.dek_source_type != 1
        return plaintext, stale


def _static_decrypt(form: str, secret: bytes, payload: bytes, etcd_key: bytes) -> bytes:
    if form == "aescbc":
        return aescbc.decrypt(secret, payload)
    if form == "aesgcm":
        return aesgcm.decrypt(secret, payload, etcd_key)
    return secretbox.decrypt(secret, payload)
