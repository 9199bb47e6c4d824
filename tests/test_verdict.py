"""The verdict rules (snapshot_tools/verdict.py), row by row, as DESIGN.md "Keys and verdicts" states them.

Each row names the current config's providers for ``secrets``, an older config's (or none), what
read the value, and the verdict, reason and plaintext flag expected. Configs are built from the
data model directly, so every rule is pinned without any decryption.
"""

from __future__ import annotations

import pytest

from snapshot_tools.config_model import EncryptionConfig, KMSProvider, ProviderEntry, Rule, StaticKey
from snapshot_tools.verdict import Judgement, coverage, judge_kms, judge_plaintext, judge_static, unreadable

SECRETS = ("", "secrets")


def _key(name: str, secret: bytes, provider: str = "aescbc") -> StaticKey:
    return StaticKey(provider=provider, name=name, secret=secret, config="c.yaml", config_index=0, position="")


def _kms(name: str, version: str = "v2") -> KMSProvider:
    return KMSProvider(name=name, api_version=version, endpoint="unix:///x.sock", timeout_s=3.0, cachesize=None,
                       config="c.yaml", config_index=0, position="")  # fmt: skip


K1, K2 = _key("k1", b"1" * 32), _key("k2", b"2" * 32)
K1_OTHER = _key("k1", b"x" * 32)  # same name, other material
G1 = _key("k1", b"1" * 32, provider="aesgcm")  # same name and material, other provider
IDENTITY = ProviderEntry("identity")


def cbc(*keys: StaticKey) -> ProviderEntry:
    return ProviderEntry("aescbc", keys=keys)


def gcm(*keys: StaticKey) -> ProviderEntry:
    return ProviderEntry("aesgcm", keys=keys)


def kms(name: str, version: str = "v2") -> ProviderEntry:
    return ProviderEntry("kms", kms=_kms(name, version))


def _config(
    index: int, providers: tuple[ProviderEntry, ...] | None, resources: tuple[str, ...] = ("secrets",)
) -> EncryptionConfig:
    rules = () if providers is None else (Rule(resources, providers, ""),)
    return EncryptionConfig(path=f"c{index}.yaml", index=index, rules=rules)


def _cov(current: tuple[ProviderEntry, ...] | None, *older: tuple[ProviderEntry, ...] | None):
    return coverage([_config(0, current), *(_config(i, o) for i, o in enumerate(older, 1))], SECRETS)


PLAINTEXT_ROWS = [
    # current providers, older providers, expected
    (None, [], Judgement("current")),  # uncovered: the bare identity transformer writes plaintext
    ((IDENTITY, cbc(K1)), [], Judgement("current")),  # identity first writes plaintext
    ((cbc(K1), IDENTITY), [], Judgement("stale", plaintext=True)),
    ((cbc(K1),), [(IDENTITY,)], Judgement("retired", plaintext=True)),
    ((cbc(K1),), [None], Judgement("retired", plaintext=True)),  # an older config did not cover it
    ((cbc(K1),), [(cbc(K2),)], Judgement("unreadable", "plaintext-rejected", plaintext=True)),
    ((kms("p"),), [], Judgement("unreadable", "plaintext-rejected", plaintext=True)),
]


@pytest.mark.parametrize(("current", "older", "want"), PLAINTEXT_ROWS)
def test_plaintext(current, older, want) -> None:
    assert judge_plaintext(_cov(current, *older)) == want


STATIC_ROWS = [
    # current providers, older providers, key that read the value, expected verdict
    ((cbc(K1, K2),), [], K1, "current"),  # write provider, first key, same material
    ((cbc(K2, K1),), [], K1, "stale"),  # listed, but not the first key
    ((gcm(G1), cbc(K1)), [], K1, "stale"),  # listed, but not the write provider
    ((cbc(K1_OTHER), cbc(K1)), [], K1, "stale"),  # first key has the name, not the material
    ((cbc(K1_OTHER),), [(cbc(K1),)], K1, "retired"),  # name reused with other material
    ((cbc(K2),), [(cbc(K1),)], K1, "retired"),  # only an older config has it
    ((IDENTITY, cbc(K1)), [], K1, "stale"),  # readable, but the current config writes plaintext
    ((gcm(G1),), [(cbc(K1),)], K1, "retired"),  # same name and material under another provider
    ((gcm(G1),), [], G1, "current"),
]


@pytest.mark.parametrize(("current", "older", "key", "want"), STATIC_ROWS)
def test_static(current, older, key, want) -> None:
    assert judge_static(_cov(current, *older), key) == Judgement(want)


KMS_ROWS = [
    # current providers, older, (version, name, stale_form), expected verdict
    ((kms("p"),), [], ("v2", "p", False), "current"),
    ((kms("p"),), [], ("v2", "p", True), "stale"),  # keyID rotated, or not seed mode
    ((kms("q"), kms("p")), [], ("v2", "p", False), "stale"),  # listed, not first
    ((kms("p", "v1"),), [], ("v2", "p", False), "retired"),  # same name, other API version
    ((kms("q"),), [(kms("p"),)], ("v2", "p", False), "retired"),
    ((kms("p", "v1"),), [], ("v1", "p", False), "current"),  # KMS v1 in GCM mode
    ((kms("p", "v1"),), [], ("v1", "p", True), "stale"),  # KMS v1 in CBC mode
    ((cbc(K1), kms("p")), [], ("v2", "p", False), "stale"),
]


@pytest.mark.parametrize(("current", "older", "read", "want"), KMS_ROWS)
def test_kms(current, older, read, want) -> None:
    version, name, stale_form = read
    assert judge_kms(_cov(current, *older), version, name, stale_form=stale_form) == Judgement(want)


def test_unreadable_carries_reason() -> None:
    assert unreadable("wrong-key") == Judgement("unreadable", "wrong-key", False)


def test_coverage_facts() -> None:
    cov = _cov((cbc(K1), kms("p"), IDENTITY), (gcm(G1),), None)
    assert cov.covered_by_current and cov.covered_by_any
    assert cov.write_entry == cbc(K1)
    assert cov.current_reads_plaintext
    assert cov.older_reads_plaintext  # the third config does not cover secrets
    assert cov.current_static == {("aescbc", "k1", b"1" * 32)}
    assert cov.current_kms == {("v2", "p")}
    none = coverage([_config(0, (cbc(K1),))], None)  # not an API object key
    assert not none.covered_by_any and none.write_entry is None
    # Wildcards resolve as the apiserver does: exact, then group.*, then *.*.
    star = coverage([EncryptionConfig("c.yaml", 0, (Rule(("*.*",), (cbc(K2),), ""),))], SECRETS)
    assert star.write_entry == cbc(K2)
