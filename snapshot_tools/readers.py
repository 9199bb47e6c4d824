"""Stored value -> the key that reads it -> plaintext and verdict.

:class:`Reader` is the one entry point (``resolve``) used by ``check``, ``extract`` and
``reencrypt``. It routes a value by its prefix (the provider registry) to a
:class:`StaticReader` (aescbc, aesgcm, secretbox: candidate keys by name, the key that read last
tried first) or a :class:`KmsReader` (KMS v1/v2 through the unwrappers), then asks
:mod:`snapshot_tools.verdict` what that read means for the current config.

Speed: ``check`` calls :meth:`Reader.resolve` once per stored value. Judgements are memoised on
the :class:`Coverage` and candidate objects they depend on (identity-hashed), and the last clean
static read is kept as a :class:`_LastRead` so the next value under the same key skips the
matching. Without ``keep_plaintext`` equal judgements share one :class:`Resolution`: treat
results as read-only. ``tests/test_check_fast_paths.py`` compares the shortcuts with a fresh
reader per value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from snapshot_tools import objects
from snapshot_tools.errors import Error, InvalidCiphertext, KMSUnavailable, MalformedValue
from snapshot_tools.providers import kmsv1, kmsv2
from snapshot_tools.providers.registry import ENCRYPTED_PREFIX, FORMATS
from snapshot_tools.verdict import (
    Coverage,
    GroupResource,
    Judgement,
    coverage,
    judge_kms,
    judge_plaintext,
    judge_static,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from snapshot_tools.config_model import KMSProvider, StaticKey
    from snapshot_tools.keysets import KeySet
    from snapshot_tools.providers.registry import Format, StaticProvider
    from snapshot_tools.unwrap import Unwrapper

__all__ = ["KeyUse", "KmsIds", "KmsReader", "Reader", "Resolution", "StaticReader"]

# Unwrapped KMS v2 sources remembered by the reader (the unwrapper keeps its own cache).
_SOURCE_CACHE_LIMIT = 1024


class KeyUse(NamedTuple):
    """A key as the report's key table counts it: storage form, name, fingerprint."""

    provider: str
    name: str
    fingerprint: str


class KmsIds(NamedTuple):
    """The key_ids of a KMS v2 value: the one stored with it, the one the KMS writes with now
    (None: unknown), and the keyring KEK id behind the stored one (``--keyring`` only)."""

    stored: str
    current: str | None
    kek: str | None = None


@dataclass(slots=True, eq=False)
class Resolution:
    """What one stored value turned out to be.

    Compared and hashed by identity: equal judgements are shared objects, and the report counts
    and renders each shared object once.
    """

    verdict: str
    provider: str
    key_name: str | None = None
    key: StaticKey | KMSProvider | None = None
    reason: str | None = None
    plaintext_flag: bool = False
    plaintext: bytes | None = field(default=None, repr=False)
    kms_ids: KmsIds | None = None  # KMS v2 values: stored and current key_id
    decrypts_with: StaticKey | None = None  # unreadable: a key under another name that reads it

    @classmethod
    def judged(
        cls,
        judgement: Judgement,
        provider: str,
        key_name: str | None = None,
        key: StaticKey | KMSProvider | None = None,
    ) -> Resolution:
        return cls(judgement.verdict, provider, key_name, key, judgement.reason, judgement.plaintext)

    @classmethod
    def unreadable(
        cls, reason: str, provider: str, key_name: str | None = None, key: StaticKey | KMSProvider | None = None
    ) -> Resolution:
        return cls("unreadable", provider, key_name, key, reason)

    def with_plaintext(self, plaintext: bytes) -> Resolution:
        """A copy that carries ``plaintext`` (shared results never do)."""
        return Resolution(
            self.verdict,
            self.provider,
            self.key_name,
            self.key,
            self.reason,
            self.plaintext_flag,
            plaintext,
            self.kms_ids,
            self.decrypts_with,
        )


def _name_guess(body: bytes) -> str | None:
    # The text up to the next ':' names the key or provider that wrote the value; without
    # one the value is not even framed.
    return body.split(b":", 1)[0].decode("utf-8", "replace") if b":" in body else None


class _Candidate:
    """One static key that may read values stored under its name, with what is known of it."""

    __slots__ = ("judged", "key", "use")

    def __init__(self, key: StaticKey) -> None:
        self.key = key
        self.use = KeyUse(key.provider, key.name, key.fingerprint)  # a SHA-256: once per key
        self.judged: dict[Coverage, Resolution] = {}  # shared results, per resource coverage


class _LastRead:
    """The last clean static read: the next value with the same full prefix under the same
    coverage is tried with the same key first, without any name matching."""

    __slots__ = ("authenticated", "coverage", "decrypt", "prefix", "secret", "template", "use")

    def __init__(
        self, prefix: bytes, cov: Coverage, provider: StaticProvider, cand: _Candidate, template: Resolution
    ) -> None:
        self.prefix = prefix
        self.coverage = cov
        self.decrypt = provider.decrypt
        self.authenticated = provider.authenticated
        self.secret = cand.key.secret
        self.use = cand.use
        self.template = template  # never carries plaintext


class StaticReader:
    """Reads aescbc/aesgcm/secretbox values with the keys of every config given."""

    def __init__(self, keyset: KeySet, key_use: dict[KeyUse, int], keep_plaintext: bool) -> None:
        self.keyset = keyset
        self.key_use = key_use
        self.keep_plaintext = keep_plaintext
        self._names: dict[str, list[tuple[bytes, str]]] = {}  # provider -> (b"name:", name)
        self._shadows: dict[str, frozenset[str]] = {}
        # (provider, name) -> candidates in config order, and in trial order: the one that
        # decrypted last first, the rest in config order (a cheap reorder).
        self._ordered: dict[tuple[str, str], tuple[_Candidate, ...]] = {}
        self._candidates: dict[tuple[str, str], list[_Candidate]] = {}
        self.last: _LastRead | None = None
        # (provider, stored name) -> keys of other names that read such a value: searched in
        # full once per stored name, then only these are tried (unreadable values only).
        self._renamed: dict[tuple[str, str], list[StaticKey]] = {}

    def _names_of(self, provider: str) -> list[tuple[bytes, str]]:
        names = self._names.get(provider)
        if names is None:
            # Longest first: with names "a" and "a:b" both matching, "a:b" is the likelier.
            names = sorted(
                ((n.encode() + b":", n) for n in self.keyset.static_names(provider)), key=lambda item: -len(item[0])
            )
            self._names[provider] = names
        return names

    def _shadowed(self, provider: str) -> frozenset[str]:
        """Names that another, longer name starts with (``a`` when ``a:b`` exists): a value
        matching them may belong to the longer one, so they never become the last read."""
        out = self._shadows.get(provider)
        if out is None:
            names = self.keyset.static_names(provider)
            out = self._shadows[provider] = frozenset(
                n for n in names if any(m != n and m.startswith(n + ":") for m in names)
            )
        return out

    def _candidates_of(self, provider: str, name: str) -> list[_Candidate]:
        found = self._candidates.get((provider, name))
        if found is None:
            ordered = self._ordered[(provider, name)] = tuple(
                _Candidate(k) for k in self.keyset.static_candidates(provider, name)
            )
            found = self._candidates[(provider, name)] = list(ordered)
        return found

    def read(self, fmt: Format, value: bytes, etcd_key: bytes, cov: Coverage) -> Resolution:
        """Judge ``value`` (which starts with ``fmt.prefix``); never raises for bad data."""
        provider = fmt.static
        assert provider is not None
        skip = len(fmt.prefix)
        malformed = tried = 0
        first: str | None = None
        # The body is never copied: a 20 KB value copied three times costs more than its decryption.
        view = memoryview(value)
        for prefix, name in self._names_of(provider.name):
            if not value.startswith(prefix, skip):
                continue
            if first is None:
                first = name
            body = view[skip + len(prefix) :]
            candidates = self._candidates_of(provider.name, name)
            for cand in candidates:
                tried += 1
                try:
                    plaintext = provider.decrypt(cand.key.secret, body, etcd_key)
                except MalformedValue:
                    malformed += 1
                    continue
                except InvalidCiphertext:
                    continue
                if not provider.authenticated and not objects.is_kubernetes_object(plaintext):
                    continue  # no MAC: valid padding by chance is not a read
                if candidates[0] is not cand:
                    ordered = self._ordered[(provider.name, name)]
                    self._candidates[(provider.name, name)] = [cand, *(c for c in ordered if c is not cand)]
                self.key_use[cand.use] = self.key_use.get(cand.use, 0) + 1
                shared = cand.judged.get(cov)
                if shared is None:
                    shared = cand.judged[cov] = Resolution.judged(
                        judge_static(cov, cand.key), provider.name, cand.key.name, cand.key
                    )
                if name not in self._shadowed(provider.name):
                    self.last = _LastRead(fmt.prefix + prefix, cov, provider, cand, shared)
                return shared.with_plaintext(plaintext) if self.keep_plaintext else shared
        if first is None:
            guess = _name_guess(value[skip:])
            if guess is None:
                return Resolution.unreadable("corrupt", provider.name, guess)
            res = Resolution.unreadable("no-such-key", provider.name, guess)
            body = view[value.index(b":", skip) + 1 :]  # after the stored name, in bytes
            res.decrypts_with = self._other_name(provider, guess, body, etcd_key)
            return res
        reason = "corrupt" if tried and malformed == tried else "wrong-key"
        res = Resolution.unreadable(reason, provider.name, first)
        if reason == "wrong-key":
            body = view[skip + len(first.encode()) + 1 :]
            res.decrypts_with = self._other_name(provider, first, body, etcd_key)
        return res

    def _other_name(
        self, provider: StaticProvider, stored: str, body: memoryview, etcd_key: bytes
    ) -> StaticKey | None:
        """A key of ``provider`` under a name other than ``stored`` that decrypts ``body`` (a
        renamed key, K3s-style ``aescbckey`` vs ``aescbckey-<timestamp>``), or None.

        Only for values no key of their stored name reads. Bounded: the first such value of a
        stored name is tried against every other key once; later ones only against the keys
        that worked for that name before.
        """
        slot = (provider.name, stored)
        found = self._renamed.get(slot)
        if found is None:
            tries = [
                k
                for n in self.keyset.static_names(provider.name)
                if n != stored
                for k in self.keyset.static_candidates(provider.name, n)
            ]
            found = self._renamed[slot] = []
        else:
            tries = found
        for key in tries:
            try:
                plaintext = provider.decrypt(key.secret, body, etcd_key)
            except (InvalidCiphertext, MalformedValue):
                continue
            if not provider.authenticated and not objects.is_kubernetes_object(plaintext):
                continue
            if key not in found:
                found.append(key)
            return key
        return None


class KmsReader:
    """Reads KMS v1/v2 envelopes: the DEK (or v2 seed) through the provider's unwrapper."""

    def __init__(
        self, keyset: KeySet, unwrappers: Mapping[str, Unwrapper], key_use: dict[KeyUse, int], keep_plaintext: bool
    ) -> None:
        self.keyset = keyset
        self.unwrappers = dict(unwrappers)
        self.key_use = key_use
        self.keep_plaintext = keep_plaintext
        self._name_prefixes: dict[str, list[tuple[bytes, str]]] = {}  # version -> (b"name:", name)
        self._providers: dict[tuple[str, str], tuple[KMSProvider | None, KeyUse]] = {}
        self._judged: dict[tuple[Coverage, str, str, bool, str | None], Resolution] = {}
        self._ids: dict[tuple[str, str], KmsIds] = {}  # (name, stored key_id)
        self._current_key_ids: dict[str, str | None] = {}
        self._sources: dict[tuple[str, bytes, str, tuple[tuple[str, bytes], ...]], bytes] = {}

    def _names(self, version: str, body: bytes) -> list[str]:
        names = self._name_prefixes.get(version)
        if names is None:
            found = list(self.keyset.kms_names(version))
            found += [n for n in self.unwrappers if n not in found]
            # Longest first (stable): filtering keeps that order for every value.
            ordered = sorted(found, key=len, reverse=True)
            names = self._name_prefixes[version] = [(n.encode() + b":", n) for n in ordered]
        return [n for p, n in names if body.startswith(p)]

    def _provider(self, version: str, name: str) -> tuple[KMSProvider | None, KeyUse]:
        """The config entry for a KMS name and its key-table slot, looked up once per name."""
        slot = self._providers.get((version, name))
        if slot is None:
            provider = self.keyset.kms_provider(name, version)
            use = KeyUse(f"kms-{version}", name, provider.fingerprint if provider is not None else "")
            slot = self._providers[(version, name)] = (provider, use)
        return slot

    def read(self, fmt: Format, value: bytes, etcd_key: bytes, cov: Coverage) -> Resolution:
        """Judge ``value`` (which starts with ``fmt.prefix``); never raises for bad data."""
        version = fmt.kms_version
        assert version is not None
        body = value[len(fmt.prefix) :]
        names = self._names(version, body)
        if not names:
            guess = _name_guess(body)
            return Resolution.unreadable("no-such-key" if guess is not None else "corrupt", fmt.name, guess)
        last: Resolution | None = None
        for name in names:
            res = self._read_one(fmt.name, version, name, body[len(name) + 1 :], etcd_key, cov)
            if res.verdict != "unreadable":
                return res
            last = res
        assert last is not None
        return last

    def _read_one(
        self, form: str, version: str, name: str, payload: bytes, etcd_key: bytes, cov: Coverage
    ) -> Resolution:
        provider, use = self._provider(version, name)
        unwrapper = self.unwrappers.get(name)
        if unwrapper is None:
            return Resolution.unreadable("kms-unavailable", form, name, provider)
        key_id: str | None = None
        try:
            if version == "v1":
                plaintext, stale_form = self._read_v1(unwrapper, payload, etcd_key)
            else:
                obj = kmsv2.parse(payload)
                key_id = obj.key_id
                plaintext, stale_form = self._read_v2(unwrapper, name, obj, etcd_key)
        except MalformedValue:
            return Resolution.unreadable("corrupt", form, name, provider)
        except InvalidCiphertext:
            res = Resolution.unreadable("wrong-key", form, name, provider)
            if key_id is not None:
                res.kms_ids = self._kms_ids(unwrapper, name, key_id)
            return res
        except KMSUnavailable:
            res = Resolution.unreadable("kms-unavailable", form, name, provider)
            if key_id is not None:
                res.kms_ids = KmsIds(key_id, None)
            return res
        self.key_use[use] = self.key_use.get(use, 0) + 1
        # The stored key_id is part of the slot: it varies only across seeds, so sharing holds.
        slot = (cov, version, name, stale_form, key_id)
        shared = self._judged.get(slot)
        if shared is None:
            shared = self._judged[slot] = Resolution.judged(
                judge_kms(cov, version, name, stale_form=stale_form), form, name, provider
            )
            if key_id is not None:
                shared.kms_ids = self._kms_ids(unwrapper, name, key_id)
        return shared.with_plaintext(plaintext) if self.keep_plaintext else shared

    def _kms_ids(self, unwrapper: Unwrapper, name: str, key_id: str) -> KmsIds:
        """Stored and current key_id (and the keyring KEK), once per (provider, stored key_id)."""
        ids = self._ids.get((name, key_id))
        if ids is None:
            try:
                current = self._current_key_id(unwrapper, name)
            except Error:
                current = None
            find_kek = getattr(unwrapper, "kek_id", None)
            kek = find_kek(key_id) if find_kek is not None else None
            ids = self._ids[(name, key_id)] = KmsIds(key_id, current, kek)
        return ids

    def _current_key_id(self, unwrapper: Unwrapper, name: str) -> str | None:
        if name not in self._current_key_ids:
            self._current_key_ids[name] = unwrapper.current_key_id()
        return self._current_key_ids[name]

    def _read_v1(self, unwrapper: Unwrapper, payload: bytes, etcd_key: bytes) -> tuple[bytes, bool]:
        encrypted_dek, data = kmsv1.split(payload)
        dek = unwrapper.unwrap_v1(encrypted_dek)
        plaintext, mode = kmsv1.decrypt_payload(dek, data, etcd_key)
        if mode == "cbc" and not objects.is_kubernetes_object(plaintext):
            raise InvalidCiphertext("not a Kubernetes object")
        return plaintext, mode != "gcm"

    def _read_v2(
        self, unwrapper: Unwrapper, name: str, obj: kmsv2.EncryptedObject, etcd_key: bytes
    ) -> tuple[bytes, bool]:
        # Every object of a seed shares its DEK source: remember the unwrapper's answers here
        # too, which saves its locking per object (it still sees each source once).
        annotations = tuple(sorted(obj.annotations.items())) if obj.annotations else ()
        ident = (name, obj.encrypted_dek_source, obj.key_id, annotations)
        source = self._sources.get(ident)
        if source is None:
            source = unwrapper.unwrap_v2(obj.encrypted_dek_source, obj.key_id, obj.annotations)
            if len(self._sources) >= _SOURCE_CACHE_LIMIT:
                self._sources.clear()
            self._sources[ident] = source
        plaintext = kmsv2.decrypt(obj, source, etcd_key)
        current_id = self._current_key_id(unwrapper, name)
        stale = current_id is None or obj.key_id != current_id or obj.dek_source_type != 1
        return plaintext, stale


class Reader:
    """Judges stored values against a :class:`KeySet` and the KMS unwrappers given.

    Args:
        keyset: the configs, first = current.
        unwrappers: KMS provider name -> unwrapper (plugin socket, keyring, ...).
        keep_plaintext: keep decrypted bytes on the result (reencrypt/extract); check drops them.
    """

    def __init__(self, keyset: KeySet, unwrappers: Mapping[str, Unwrapper], *, keep_plaintext: bool = False) -> None:
        self.keyset = keyset
        self.keep_plaintext = keep_plaintext
        # Objects decrypted per key, for the key table.
        self.key_use: dict[KeyUse, int] = {}
        self.static = StaticReader(keyset, self.key_use, keep_plaintext)
        self.kms = KmsReader(keyset, unwrappers, self.key_use, keep_plaintext)
        self._coverage: dict[GroupResource | None, Coverage] = {}
        self._plaintext: dict[Coverage, Resolution] = {}

    def coverage(self, gr: GroupResource | None) -> Coverage:
        """How the configs treat ``gr`` (``None``: a key that is no API object)."""
        cov = self._coverage.get(gr)
        if cov is None:
            cov = self._coverage[gr] = coverage(self.keyset.configs, gr)
        return cov

    def is_reported(self, value: bytes, gr: GroupResource | None) -> bool:
        """Encrypted values always; plaintext only for resources some config covers."""
        if value.startswith(ENCRYPTED_PREFIX):
            return True
        return self.coverage(gr).covered_by_any

    def resolve(self, etcd_key: bytes, value: bytes, gr: GroupResource | None) -> Resolution:
        """Judge one stored value of resource ``gr``; never raises for bad data (that is a verdict)."""
        cov = self._coverage.get(gr) or self.coverage(gr)
        last = self.static.last
        if last is not None and last.coverage is cov and value.startswith(last.prefix):
            # The key that read the previous value reads most of the next ones: try it first.
            # Anything but a clean read takes the full path below.
            try:
                plaintext = last.decrypt(last.secret, memoryview(value)[len(last.prefix) :], etcd_key)
            except (InvalidCiphertext, MalformedValue):
                pass
            else:
                if last.authenticated or objects.is_kubernetes_object(plaintext):
                    self.key_use[last.use] += 1
                    return last.template.with_plaintext(plaintext) if self.keep_plaintext else last.template
        if not value.startswith(ENCRYPTED_PREFIX):
            return self._read_plaintext(value, cov)
        for fmt in FORMATS:
            if value.startswith(fmt.prefix):
                if fmt.static is not None:
                    return self.static.read(fmt, value, etcd_key, cov)
                return self.kms.read(fmt, value, etcd_key, cov)
        return Resolution.unreadable("corrupt", "unknown")

    def _read_plaintext(self, value: bytes, cov: Coverage) -> Resolution:
        shared = self._plaintext.get(cov)
        if shared is None:
            shared = self._plaintext[cov] = Resolution.judged(judge_plaintext(cov), "identity")
        return shared.with_plaintext(value) if self.keep_plaintext else shared
