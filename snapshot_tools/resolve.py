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
# Unwrapped KMS v2 sources remembered by the resolver (the unwrapper keeps its own cache).
_SOURCE_CACHE_LIMIT = 1024


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
        # (form, name) -> candidate keys, the last one that decrypted first (a cheap reorder).
        self._candidates: dict[tuple[str, str], list[StaticKey]] = {}
        # (view, key) -> the judgement of a static read; shared when plaintext is not kept.
        self._judged: dict[tuple[int, int], Resolution] = {}
        self._uses: dict[int, tuple[str, str, str]] = {}
        self._shadows: dict[str, frozenset[str]] = {}
        # The last clean static read: (full prefix, view, form, key, prefix length, result
        # (a template without plaintext when plaintext is kept), key_use slot); see resolve_gr.
        self._fast: tuple | None = None
        self._kms_key_ids: dict[str, str | None] = {}
        self._kms_name_prefixes: dict[str, list[tuple[bytes, str]]] = {}
        self._kms_info: dict[tuple[str, str], tuple[KMSProvider | None, tuple[str, str, str]]] = {}
        self._kms_judged: dict[tuple[int, str, str, bool], Resolution] = {}
        self._kms_sources: dict[tuple[str, bytes, str, tuple], bytes] = {}
        # Objects decrypted per key identity, for the key table.
        self.key_use: dict[tuple[str, str, str], int] = {}

    # -- per-resource view -------------------------------------------------------------

    def _view(self, ref: ResourceRef | None) -> _ResourceView:
        return self._gr_view((ref.group, ref.resource) if ref is not None else None)

    def _gr_view(self, gr: tuple[str, str] | None) -> _ResourceView:
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

    def is_reported_gr(self, value: bytes, gr: tuple[str, str] | None) -> bool:
        """:meth:`is_reported` by ``(group, resource)`` (``None``: not an API object key)."""
        if value.startswith(ENCRYPTED_PREFIX):
            return True
        return self._gr_view(gr).covered_by_any

    # -- judging -----------------------------------------------------------------------

    def resolve(self, etcd_key: bytes, value: bytes, ref: ResourceRef | None) -> Resolution:
        """Judge one stored value; never raises for bad data (that is a verdict).

        Without ``keep_plaintext`` equal judgements may share one :class:`Resolution`:
        treat results as read-only.
        """
        return self.resolve_gr(etcd_key, value, (ref.group, ref.resource) if ref is not None else None)

    def resolve_gr(self, etcd_key: bytes, value: bytes, gr: tuple[str, str] | None) -> Resolution:
        """:meth:`resolve` by ``(group, resource)``: the check loop caches those per key prefix."""
        view = self._views.get(gr) or self._gr_view(gr)
        fast = self._fast
        if fast is not None and fast[1] is view and value.startswith(fast[0]):
            # The key that read the previous value reads most of the next ones: try it first
            # and skip the generic matching. Anything but a clean read takes the full path.
            _prefix, _view, form, key, skip, res, use = fast
            try:
                plaintext = _static_decrypt(
                    form, key.secret, memoryview(value)[skip:] if form == "aescbc" else value[skip:], etcd_key
                )
            except (InvalidCiphertext, MalformedValue):
                pass
            else:
                if form != "aescbc" or objects.is_kubernetes_object(plaintext):
                    self.key_use[use] += 1
                    if self.keep_plaintext:  # ``res`` is a template: results must not share plaintext
                        return Resolution(res.verdict, res.provider, res.key_name, res.key, plaintext=plaintext)
                    return res
        if not value.startswith(ENCRYPTED_PREFIX):
            return self._plaintext(value, view)
        for prefix, form in PREFIXES:
            if value.startswith(prefix):
                if form in _STATIC_FORMS:
                    return self._static(form, value, len(prefix), etcd_key, view)
                return self._kms(form, value[len(prefix) :], etcd_key, view)
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

    def _static_names(self, form: str) -> list[tuple[bytes, str]]:
        names = self._names.get(form)
        if names is None:
            # Longest first: with names "a" and "a:b" both matching, "a:b" is the likelier.
            names = sorted(
                ((n.encode() + b":", n) for n in self.keyset.static_names(form)),
                key=lambda item: -len(item[0]),
            )
            self._names[form] = names
        return names

    def _shadowed(self, form: str) -> frozenset[str]:
        """Names of ``form`` that another, longer name starts with (``a`` when ``a:b`` exists):
        a value matching them may belong to the longer one, so they get no fast path."""
        out = self._shadows.get(form)
        if out is None:
            names = self.keyset.static_names(form)
            out = self._shadows[form] = frozenset(
                n for n in names if any(m != n and m.startswith(n + ":") for m in names)
            )
        return out

    def _static(
        self, form: str, value: bytes, skip: int, etcd_key: bytes, view: _ResourceView
    ) -> Resolution:
        # ``skip``: length of the provider prefix. The body is never copied: aescbc reads a
        # memoryview, and a 20 KB value copied three times costs more than its decryption.
        malformed = 0
        tried = 0
        first: str | None = None
        for prefix, name in self._names.get(form) or self._static_names(form):
            if not value.startswith(prefix, skip):
                continue
            if first is None:
                first = name
            start = skip + len(prefix)
            payload = memoryview(value)[start:] if form == "aescbc" else value[start:]
            candidates = self._candidates.get((form, name))
            if candidates is None:
                candidates = self._candidates[(form, name)] = self.keyset.static_candidates(form, name)
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
                if candidates[0] is not key:
                    # Try the key that worked last first next time; the rest stay in config order.
                    self._candidates[(form, name)] = [
                        key, *(c for c in self.keyset.static_candidates(form, name) if c is not key)
                    ]
                res = self._judged_static(form, key, view, plaintext)
                if name not in self._shadowed(form):
                    full = _PREFIX_FORMS[form] + prefix
                    # With keep_plaintext the fast path copies a plaintext-free template of res.
                    template = self._static_verdict(form, key, view) if self.keep_plaintext else res
                    self._fast = (full, view, form, key, len(full), template, self._uses[id(key)])
                return res
        if first is None:
            body = value[skip:]
            guess = body.split(b":", 1)[0].decode("utf-8", "replace") if b":" in body else None
            reason = "no-such-key" if guess is not None else "corrupt"
            return Resolution("unreadable", form, key_name=guess, reason=reason)
        reason = "corrupt" if tried and malformed == tried else "wrong-key"
        return Resolution("unreadable", form, key_name=first, reason=reason)

    def _judged_static(
        self, form: str, key: StaticKey, view: _ResourceView, plaintext: bytes
    ) -> Resolution:
        use = self._uses.get(id(key))
        if use is None:  # the fingerprint is a SHA-256: once per key, not per object
            use = self._uses[id(key)] = (form, key.name, key.fingerprint)
        self.key_use[use] = self.key_use.get(use, 0) + 1
        if self.keep_plaintext:
            res = self._static_verdict(form, key, view)
            res.plaintext = plaintext
            return res
        slot = (id(view), id(key))  # both live as long as the resolver
        res = self._judged.get(slot)
        if res is None:
            res = self._judged[slot] = self._static_verdict(form, key, view)
        return res

    def _static_verdict(self, form: str, key: StaticKey, view: _ResourceView) -> Resolution:
        first = view.current_first
        res = Resolution("retired", form, key_name=key.name, key=key)
        if (form, key.name, key.secret) in view.current_static:
            res.verdict = "stale"
            if first is not None and first.kind == form:  # type: ignore[attr-defined]
                k0 = first.keys[0]  # type: ignore[attr-defined]
                if k0.name == key.name and k0.secret == key.secret:
                    res.verdict = "current"
        return res

    # -- KMS ---------------------------------------------------------------------------

    def _kms_names(self, form: str, body: bytes) -> list[str]:
        names = self._kms_name_prefixes.get(form)
        if names is None:
            version = "v1" if form == "kms-v1" else "v2"
            found = list(self.keyset.kms_names(version))
            found += [n for n in self.unwrappers if n not in found]
            # Longest first (stable): filtering keeps that order for every value.
            names = self._kms_name_prefixes[form] = [
                (n.encode() + b":", n) for n in sorted(found, key=len, reverse=True)
            ]
        return [n for p, n in names if body.startswith(p)]

    def _kms(self, form: str, body: bytes, etcd_key: bytes, view: _ResourceView) -> Resolution:
        names = self._kms_names(form, body)
        if not names:
            guess = body.split(b":", 1)[0].decode("utf-8", "replace") if b":" in body else None
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

    def _kms_provider(self, form: str, name: str) -> tuple[KMSProvider | None, tuple[str, str, str]]:
        """The config entry for a KMS name and its key_use slot, looked up once per name."""
        slot = self._kms_info.get((form, name))
        if slot is None:
            provider = self.keyset.kms_provider(name, "v1" if form == "kms-v1" else "v2")
            use = (form, name, provider.fingerprint if provider is not None else "")
            slot = self._kms_info[(form, name)] = (provider, use)
        return slot

    def _kms_one(
        self, form: str, name: str, payload: bytes, etcd_key: bytes, view: _ResourceView
    ) -> Resolution:
        version = "v1" if form == "kms-v1" else "v2"
        unwrapper = self.unwrappers.get(name)
        provider, use = self._kms_provider(form, name)
        if unwrapper is None:
            return Resolution("unreadable", form, key_name=name, key=provider, reason="kms-unavailable")
        try:
            if form == "kms-v1":
                plaintext, stale_form = self._kms_v1(unwrapper, payload, etcd_key)
            else:
                plaintext, stale_form = self._kms_v2(unwrapper, name, payload, etcd_key)
        except MalformedValue:
            return Resolution("unreadable", form, key_name=name, key=provider, reason="corrupt")
        except InvalidCiphertext:
            return Resolution("unreadable", form, key_name=name, key=provider, reason="wrong-key")
        except KMSUnavailable:
            return Resolution("unreadable", form, key_name=name, key=provider, reason="kms-unavailable")
        self.key_use[use] = self.key_use.get(use, 0) + 1
        slot = (id(view), form, name, stale_form)
        res = None if self.keep_plaintext else self._kms_judged.get(slot)
        if res is None:
            res = Resolution("retired", form, key_name=name, key=provider)
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
            if self.keep_plaintext:
                res.plaintext = plaintext
            else:
                self._kms_judged[slot] = res
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
        # Every object of a seed shares its DEK source: remember the unwrapper's answers here
        # too, which saves its locking per object (it still sees each source once).
        ident = (name, obj.encrypted_dek_source, obj.key_id,
                 tuple(sorted(obj.annotations.items())) if obj.annotations else ())  # fmt: skip
        source = self._kms_sources.get(ident)
        if source is None:
            source = unwrapper.unwrap_v2(obj.encrypted_dek_source, obj.key_id, obj.annotations)
            if len(self._kms_sources) >= _SOURCE_CACHE_LIMIT:
                self._kms_sources.clear()
            self._kms_sources[ident] = source
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
