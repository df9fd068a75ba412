"""API keys (service/auth.py): parsing, identifying callers, fingerprints, new keys."""

from __future__ import annotations

import hashlib
import re

import pytest

from core.errors import ConfigError, Unauthorized
from service.auth import PREFIX, ApiKeys, digest, new_key


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_no_keys_means_anonymous() -> None:
    keys = ApiKeys("")
    assert not keys.enabled
    assert keys.identify(None) is None
    assert keys.identify("Key whatever") is None
    assert keys.identify("garbage") is None


@pytest.mark.parametrize("entries", ["", " ", ",", " , ,, ", []])
def test_blank_entries_are_no_keys(entries: str | list[str]) -> None:
    assert not ApiKeys(entries).enabled


@pytest.mark.parametrize(
    "entries",
    [
        "k1,k2",
        " k1 , k2 ",
        "k1,,k2,",
        f"k1,sha256:{_sha('k2')}",
        f"{PREFIX}{_sha('k1')},{PREFIX}{_sha('k2')}",
        ["k1", f"sha256:{_sha('k2')}"],
        [" k1 ", "", "k2"],
    ],
)
def test_plain_and_hashed_keys_are_accepted(entries: str | list[str]) -> None:
    keys = ApiKeys(entries)
    assert keys.enabled
    assert keys.identify("Key k1") is not None
    assert keys.identify("Key k2") is not None
    with pytest.raises(Unauthorized):
        keys.identify("Key k3")


def test_a_hashed_entry_is_not_a_plain_key() -> None:
    keys = ApiKeys(f"sha256:{_sha('k2')}")
    with pytest.raises(Unauthorized):
        keys.identify(f"Key sha256:{_sha('k2')}")  # presenting the stored form does not work
    assert keys.identify("Key k2") is not None


def test_bad_hex_digest_is_refused_at_start() -> None:
    with pytest.raises((ValueError, ConfigError)):
        ApiKeys("sha256:not-hex")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "k1",  # no scheme
        "Key",
        "Key ",
        "Key    ",
        "Basic k1",
        "Token k1",
        "Keyk1",
        "Key k2",  # wrong key
        "Key K1",  # keys are case-sensitive
        "Key k1x",
        "Bearer k1 k1",  # the key is everything after the scheme
    ],
)
def test_missing_or_wrong_credentials_are_unauthorized(header: str | None) -> None:
    keys = ApiKeys("k1")
    with pytest.raises(Unauthorized) as exc_info:
        keys.identify(header)
    assert exc_info.value.http_status == 401
    assert exc_info.value.code == "unauthorized"


def test_messages_tell_missing_from_wrong() -> None:
    keys = ApiKeys("k1")
    with pytest.raises(Unauthorized, match="Missing credentials"):
        keys.identify(None)
    with pytest.raises(Unauthorized, match="Invalid API key"):
        keys.identify("Key nope")


@pytest.mark.parametrize(
    "header", ["Key k1", "Bearer k1", "key k1", "BEARER k1", "  Key k1  ", "Key   k1"]
)
def test_key_and_bearer_give_the_same_fingerprint(header: str) -> None:
    keys = ApiKeys("k1,k2")
    fingerprint = keys.identify(header)
    assert fingerprint is not None
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
    assert fingerprint == keys.identify("Key k1")
    assert fingerprint == digest("k1")[:16]


def test_two_keys_have_different_fingerprints() -> None:
    keys = ApiKeys(f"k1,sha256:{_sha('k2')}")
    first, second = keys.identify("Key k1"), keys.identify("Bearer k2")
    assert first is not None
    assert second is not None
    assert first != second


def test_fingerprint_does_not_depend_on_how_the_key_was_configured() -> None:
    plain, hashed = ApiKeys("k1"), ApiKeys(f"sha256:{_sha('k1')}")
    assert plain.identify("Key k1") == hashed.identify("Key k1")


def test_fingerprint_does_not_reveal_the_key() -> None:
    fingerprint = ApiKeys("secret-key").identify("Key secret-key")
    assert fingerprint is not None
    assert "secret" not in fingerprint


def test_new_key_round_trip() -> None:
    key, stored = new_key()
    assert stored == PREFIX + digest(key)
    assert len(key) >= 32
    keys = ApiKeys(stored)
    assert keys.identify(f"Key {key}") == digest(key)[:16]
    assert keys.identify(f"Bearer {key}") == digest(key)[:16]
    with pytest.raises(Unauthorized):
        keys.identify(f"Key {stored}")


def test_new_keys_are_fresh() -> None:
    assert len({new_key()[0] for _ in range(20)}) == 20
