"""``reencrypt`` and ``decrypt``: rewrite every stored value of a snapshot under a new config.

Each value is read with the whole history (the configs given plus the new one) and written
again the way a kube-apiserver started with the new config would write it: its first provider
for the resource, that provider's first key, the etcd key as AAD where the format has one. KMS
v2 output uses one fresh seed per run, wrapped once (like an apiserver process). The output is a
rebuilt snapshot (:func:`snapshot_tools.rewrite.copy_snapshot`): never the input, written beside
OUT, verified by decrypting every rewritten record with the target alone, then renamed.

References: ``transformer.go`` (the first provider/key writes), ``kmsv2/envelope.go``
(``TransformToStorage``: one seed per state, ``EncryptedObject`` template), spec sections 1.4, 6.5.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from snapshot_tools.check import build_unwrappers
from snapshot_tools.errors import Error, KMSUnavailable, UsageError
from snapshot_tools.forms import ENCRYPTED_PREFIX
from snapshot_tools.keysets import load_keyset
from snapshot_tools.providers import aescbc, aesgcm, kms_prefix, kmsv2, secretbox, static_prefix
from snapshot_tools.resolve import Resolver
from snapshot_tools.resources import parse_etcd_key
from snapshot_tools.rewrite import copy_snapshot, kv_transform, kv_verify
from snapshot_tools.snapshot import Snapshot

if TYPE_CHECKING:
    from collections.abc import Sequence

    from snapshot_tools.config import EncryptionConfig, ProviderEntry
    from snapshot_tools.kms import Unwrapper
    from snapshot_tools.resolve import Resolution
    from snapshot_tools.resources import ResourceRef
    from snapshot_tools.snapshot import Record

IDENTITY = "identity"
MAX_LISTED = 20


class RewriteRefused(Error):
    """Values the rewrite cannot handle as asked; nothing was written."""

    exit_code = 1

    def __init__(self, what: str, keys: list[str], hint: str) -> None:
        shown = ", ".join(keys[:MAX_LISTED]) + (f" and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else "")
        super().__init__(f"{len(keys)} {what}: {shown}; {hint}; nothing was written")
        self.keys = keys


@dataclass
class RewriteOptions:
    """Everything ``reencrypt``/``decrypt`` need; ``to=None`` means decrypt (identity)."""

    snapshot: str
    configs: Sequence[str]
    output: str
    to: str | None = None
    force: bool = False
    latest_only: bool = False
    kms: dict[str, str] = field(default_factory=dict)
    keyrings: dict[str, str] = field(default_factory=dict)
    decrypt_uncovered: bool = False
    skip_unreadable: bool = False
    etcd_prefix: str = "/registry"


@dataclass
class RewriteSummary:
    """What a rewrite did; no key material, no values."""

    output: str
    transitions: dict[tuple[str, str], int] = field(default_factory=dict)  # (source, target) -> n
    revisions_rewritten: int = 0
    unchanged: int = 0
    skipped_unreadable: list[str] = field(default_factory=list)
    decrypted_uncovered: list[str] = field(default_factory=list)
    latest_only: bool = False
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    records: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "output": self.output,
            "rewritten": [
                {"from": src, "to": dst, "revisions": n} for (src, dst), n in sorted(self.transitions.items())
            ],
            "revisions_rewritten": self.revisions_rewritten,
            "records": self.records,
            "skipped_unreadable": self.skipped_unreadable,
            "decrypted_uncovered": self.decrypted_uncovered,
            "latest_only": self.latest_only,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "seconds": round(self.seconds, 3),
        }


class _Writer:
    """Writes plaintext the way the target config's write provider does."""

    label = IDENTITY

    def write(self, plaintext: bytes, etcd_key: bytes) -> bytes:
        return plaintext


class _StaticWriter(_Writer):
    def __init__(self, entry: ProviderEntry) -> None:
        self.key = entry.keys[0]
        self.form = entry.kind
        self.prefix = static_prefix(self.form, self.key.name)
        self.label = f"{self.form}/{self.key.name} ({self.key.fingerprint})"

    def write(self, plaintext: bytes, etcd_key: bytes) -> bytes:
        if self.form == "aescbc":
            return self.prefix + aescbc.encrypt(self.key.secret, plaintext)
        if self.form == "aesgcm":
            return self.prefix + aesgcm.encrypt(self.key.secret, plaintext, etcd_key)
        return self.prefix + secretbox.encrypt(self.key.secret, plaintext)


class _KMSv2Writer(_Writer):
    """One fresh seed per run, wrapped once, shared by every object (as an apiserver does)."""

    def __init__(self, name: str, unwrapper: Unwrapper) -> None:
        self.seed = os.urandom(32)
        wrap = getattr(unwrapper, "wrap_v2", None)
        if wrap is None:
            raise UsageError(f"KMS provider {name!r} cannot wrap a new data key here")
        self.wrapped = wrap(self.seed)
        self.prefix = kms_prefix("v2", name)
        self.label = f"kms-v2/{name}"

    def write(self, plaintext: bytes, etcd_key: bytes) -> bytes:
        w = self.wrapped
        return self.prefix + kmsv2.encrypt(
            self.seed,
            plaintext,
            etcd_key,
            encrypted_dek_source=w.ciphertext,
            key_id=w.key_id,
            annotations=w.annotations or None,
        )


class _Target:
    """Which writer the new config uses per group-resource (``None``: not covered)."""

    def __init__(self, config: EncryptionConfig | None, unwrappers: dict[str, Unwrapper]) -> None:
        self.config = config
        self.unwrappers = unwrappers
        self._identity = _Writer()
        self._by_gr: dict[tuple[str, str] | None, _Writer | None] = {}
        self._kms: dict[str, _Writer] = {}

    def writer(self, ref: ResourceRef | None) -> _Writer | None:
        if self.config is None:  # decrypt: everything becomes plaintext
            return self._identity
        gr = (ref.group, ref.resource) if ref is not None else None
        if gr not in self._by_gr:
            entry = self.config.write_provider(*gr) if gr is not None else None
            self._by_gr[gr] = self._make(entry)
        return self._by_gr[gr]

    def _make(self, entry: ProviderEntry | None) -> _Writer | None:
        if entry is None:
            return None
        if entry.kind == IDENTITY:
            return self._identity
        if entry.kind != "kms":
            return _StaticWriter(entry)
        kms = entry.kms
        assert kms is not None
        if kms.api_version != "v2":
            raise UsageError(
                f"KMS provider {kms.name!r} is apiVersion v1 (deprecated, off by default since 1.29); "
                "write with a KMS v2 provider instead"
            )
        if kms.name not in self._kms:
            unwrapper = self.unwrappers.get(kms.name)
            if unwrapper is None:
                raise UsageError(f"no way to reach KMS provider {kms.name!r}: pass --kms or --keyring")
            self._kms[kms.name] = _KMSv2Writer(kms.name, unwrapper)
        return self._kms[kms.name]


def _source_label(res: Resolution) -> str:
    if res.provider == IDENTITY:
        return IDENTITY
    fp = getattr(res.key, "fingerprint", None)
    if res.provider.startswith("kms"):
        return f"{res.provider}/{res.key_name}"
    return f"{res.provider}/{res.key_name}" + (f" ({fp})" if fp else "")


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def run_rewrite(opts: RewriteOptions) -> RewriteSummary:
    """Rewrite the snapshot at ``opts.output``; see the module docstring.

    Raises:
        RewriteRefused: unreadable values (without ``skip_unreadable``) or encrypted values of
            resources the new config does not cover (without ``decrypt_uncovered``).
        KMSUnavailable: a KMS needed to read or to wrap could not be reached.
    """
    started = time.monotonic()
    paths = ([opts.to] if opts.to else []) + list(opts.configs)
    keyset = load_keyset(paths)
    unwrappers = build_unwrappers(keyset, opts.kms, opts.keyrings)
    reader = Resolver(keyset, unwrappers, keep_plaintext=True)
    target_config = keyset.configs[0] if opts.to else None
    target = _Target(target_config, unwrappers)
    # The verifier knows only the target config: what a restored cluster would have.
    checker = Resolver(load_keyset([opts.to]), unwrappers, keep_plaintext=True) if opts.to else None
    summary = RewriteSummary(output=str(opts.output), latest_only=opts.latest_only)
    expected: dict[tuple[int, int], bytes] = {}
    unreadable: list[str] = []
    unavailable: list[str] = []
    uncovered: list[str] = []

    with Snapshot.open(opts.snapshot) as snap:
        newest = {(r.main, r.sub) for r in snap.latest()} if opts.latest_only else None

        def replace(rec: Record) -> bytes | None:
            if newest is not None and (rec.main, rec.sub) not in newest:
                return None
            ref = parse_etcd_key(rec.key, opts.etcd_prefix)
            if not reader.is_reported(rec.value, ref):
                return None  # plaintext of a resource no config covers: not ours to touch
            where = f"{rec.key.decode('utf-8', 'backslashreplace')}@{rec.mod_revision}"
            res = reader.resolve(rec.key, rec.value, ref)
            if res.verdict == "unreadable":
                (unavailable if res.reason == "kms-unavailable" else unreadable).append(f"{where} ({res.reason})")
                return None
            writer = target.writer(ref)
            if writer is None:
                if not rec.value.startswith(ENCRYPTED_PREFIX):
                    return None
                if not opts.decrypt_uncovered:
                    uncovered.append(where)
                    return None
                summary.decrypted_uncovered.append(where)
                writer = target._identity
            assert res.plaintext is not None
            new_value = writer.write(res.plaintext, rec.key)
            if new_value == rec.value:
                summary.unchanged += 1
                return None
            edge = (_source_label(res), writer.label)
            summary.transitions[edge] = summary.transitions.get(edge, 0) + 1
            summary.revisions_rewritten += 1
            expected[(rec.main, rec.sub)] = _digest(res.plaintext)
            return new_value

        def check(rec: Record) -> bool:
            want = expected.get((rec.main, rec.sub))
            if want is None:
                return False
            if checker is None or not rec.value.startswith(ENCRYPTED_PREFIX):
                return _digest(rec.value) == want
            ref = parse_etcd_key(rec.key, opts.etcd_prefix)
            got = checker.resolve(rec.key, rec.value, ref)
            return got.plaintext is not None and _digest(got.plaintext) == want

        def before_commit() -> None:
            if unavailable:
                raise KMSUnavailable(
                    f"{len(unavailable)} values need a KMS that could not be reached "
                    f"(first: {unavailable[0]}); nothing was written"
                )
            if uncovered:
                raise RewriteRefused(
                    "encrypted values of resources the new config does not cover",
                    uncovered,
                    "add them to the new config or pass --decrypt-uncovered to write them as plaintext",
                )
            if unreadable and not opts.skip_unreadable:
                raise RewriteRefused(
                    "unreadable values", unreadable, "give the configs that hold their keys, or --skip-unreadable"
                )

        result = copy_snapshot(
            snap,
            opts.output,
            kv_transform(replace),
            force=opts.force,
            verify=kv_verify(check),
            before_commit=before_commit,
        )
    summary.skipped_unreadable = unreadable
    summary.records = result.records
    summary.bytes_in = result.input_size
    summary.bytes_out = result.size
    summary.seconds = time.monotonic() - started
    for unwrapper in unwrappers.values():
        close = getattr(unwrapper, "close", None)
        if close is not None:
            close()
    return summary
