"""The verdict rules of ``check``, as plain functions over small named types.

A value is judged the way a kube-apiserver started with the *current* config (the first one
given) would see it (DESIGN.md "Keys and verdicts"):

* ``current``: the current config would write it exactly like this now;
* ``stale``: the current config can read it but would write it differently;
* ``retired``: only an older config given can read it;
* ``unreadable``: nothing given reads it; the reason says why (:data:`REASONS`).

Nothing here decrypts: the readers (:mod:`snapshot_tools.readers`) find out *which* key or KMS
provider reads a value, and these functions say what that means. Each rule is one function, so
the table in ``tests/test_verdict.py`` can pin it row by row.

References: ``transformer.go`` ``prefixTransformers.TransformFromStorage`` (read order and the
stale flag), ``kmsv2/envelope.go`` (keyID staleness), spec sections 1.3, 6.4, 12.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Sequence

    from snapshot_tools.config_model import EncryptionConfig, ProviderEntry, StaticKey

__all__ = [
    "REASONS",
    "VERDICTS",
    "Coverage",
    "GroupResource",
    "Judgement",
    "coverage",
    "judge_kms",
    "judge_plaintext",
    "judge_static",
    "plaintext_writes",
    "unreadable",
]

VERDICTS = ("current", "stale", "retired", "unreadable")
REASONS = ("no-such-key", "wrong-key", "corrupt", "kms-unavailable", "plaintext-rejected")

# ``(group, resource)`` as the encryption config names it: ``("", "secrets")``.
GroupResource = tuple[str, str]


class Judgement(NamedTuple):
    """What a value is to the current config: a verdict, why when unreadable, and whether it is
    plaintext although the current config encrypts its resource."""

    verdict: str
    reason: str | None = None
    plaintext: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class Coverage:
    """How the given configs treat one group-resource; built once per resource.

    Compared and hashed by identity: readers key their memos by it.
    """

    covered_by_current: bool
    write_entry: ProviderEntry | None  # the current config's first provider; None: uncovered
    current_reads_plaintext: bool
    older_reads_plaintext: bool
    current_static: frozenset[tuple[str, str, bytes]]  # (provider, name, secret) it reads
    current_kms: frozenset[tuple[str, str]]  # (api_version, name) it reads
    covered_by_any: bool


def _reads_plaintext(entries: tuple[ProviderEntry, ...] | None) -> bool:
    # An uncovered resource gets the bare identity transformer: plaintext reads fine.
    return entries is None or any(e.kind == "identity" for e in entries)


def coverage(configs: Sequence[EncryptionConfig], gr: GroupResource | None) -> Coverage:
    """The :class:`Coverage` of ``gr`` (``None``: a key that is no API object) by ``configs``,
    the first being the current one."""
    if gr is None:
        lists: list[tuple[ProviderEntry, ...] | None] = [None] * len(configs)
    else:
        lists = [c.providers_for(gr[0], gr[1]) for c in configs]
    current, older = lists[0], lists[1:]
    static: set[tuple[str, str, bytes]] = set()
    kms: set[tuple[str, str]] = set()
    for entry in current or ():
        if entry.kms is not None:
            kms.add((entry.kms.api_version, entry.kms.name))
        else:
            static.update((k.provider, k.name, k.secret) for k in entry.keys)
    return Coverage(
        covered_by_current=current is not None,
        write_entry=current[0] if current else None,
        current_reads_plaintext=_reads_plaintext(current),
        older_reads_plaintext=any(_reads_plaintext(e) for e in older),
        current_static=frozenset(static),
        current_kms=frozenset(kms),
        covered_by_any=any(e is not None for e in lists),
    )


def judge_plaintext(cov: Coverage) -> Judgement:
    """A value stored without encryption."""
    first = cov.write_entry
    if first is None or first.kind == "identity":
        return Judgement("current")  # the current config writes plaintext too
    if cov.current_reads_plaintext:
        return Judgement("stale", plaintext=True)
    if cov.older_reads_plaintext:
        return Judgement("retired", plaintext=True)
    return Judgement("unreadable", "plaintext-rejected", plaintext=True)


def judge_static(cov: Coverage, key: StaticKey) -> Judgement:
    """A value that static ``key`` decrypts: current only under the write provider's first key
    (same name *and* material), stale when the current config lists the key, else retired."""
    if (key.provider, key.name, key.secret) not in cov.current_static:
        return Judgement("retired")
    first = cov.write_entry
    if first is not None and first.kind == key.provider and first.keys:
        k0 = first.keys[0]
        if k0.name == key.name and k0.secret == key.secret:
            return Judgement("current")
    return Judgement("stale")


def judge_kms(cov: Coverage, api_version: str, name: str, *, stale_form: bool) -> Judgement:
    """A value that KMS provider ``name`` (``api_version`` v1/v2) decrypts. ``stale_form``: the
    apiserver would rewrite it even under the same provider (KMS v1 CBC mode, a KMS v2 keyID that
    is not the KMS's current one, a DEK not in seed mode)."""
    if (api_version, name) not in cov.current_kms:
        return Judgement("retired")
    first = cov.write_entry
    is_first = first is not None and first.kms is not None and (
        first.kms.name == name and first.kms.api_version == api_version
    )
    return Judgement("current" if is_first and not stale_form else "stale")


def unreadable(reason: str) -> Judgement:
    """Nothing given reads the value; ``reason`` is one of :data:`REASONS`."""
    return Judgement("unreadable", reason)


def plaintext_writes(config: EncryptionConfig) -> list[str]:
    """The resource selectors of ``config`` (as written, in order) whose write provider, the first
    the apiserver uses for them, is ``identity``: new values of those resources go to etcd in
    plaintext. Resources no rule covers are written in plaintext too; those are counted apart."""
    out: list[str] = []
    for rule in config.rules:
        for selector, (group, resource) in zip(rule.resources, rule.group_resources, strict=True):
            first = config.write_provider(group, resource)
            if first is not None and first.kind == "identity" and selector not in out:
                out.append(selector)
    return out
