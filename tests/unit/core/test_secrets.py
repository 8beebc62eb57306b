"""Secret references and masking (core.secrets): properties over arbitrary text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.secrets import (
    StreamMasker,
    Unresolved,
    mask,
    mask_tail,
    mask_value,
    parse_secrets,
    reference,
    referenced,
    resolve_references,
    secrets_from_mapping,
)

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
# Small alphabets make occurrences, overlaps and near-misses common.
small_text = st.text(alphabet="ab*x\n", max_size=40)
secret_values = st.text(alphabet="ab*x", min_size=1, max_size=6)
any_secret = st.one_of(secret_values, st.text(min_size=1, max_size=12))


@given(names, st.text(max_size=20), st.text(max_size=20))
def test_references_round_trip(name: str, before: str, after: str) -> None:
    value = before.replace("${", "") + reference(name) + after.replace("${", "")
    assert referenced(reference(name)) == [name]
    assert name in referenced(value)
    env, _ = resolve_references({"V": value}, lambda n: f"<{n}>" if n == name else "?")
    assert f"<{name}>" in env["V"] and reference(name) not in env["V"]


@given(small_text, st.lists(secret_values, min_size=1, max_size=3), st.data())
def test_masking_never_leaves_a_secret(text: str, secrets: list[str], data: st.DataObject) -> None:
    # The text holds every secret at least once, at any place (overlapping ones too).
    for secret in secrets:
        at = data.draw(st.integers(0, len(text)))
        text = text[:at] + secret + text[at:]
    masked = mask(text, secrets)
    for secret in secrets:
        assert secret not in masked


@given(st.text(max_size=60), st.lists(any_secret, min_size=1, max_size=3))
def test_masking_any_text(text: str, secrets: list[str]) -> None:
    masked = mask(text + secrets[0] + text, secrets)
    assert all(s not in masked for s in secrets)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | small_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(small_text, inner, max_size=3),
    max_leaves=12,
)


@given(json_like, st.lists(secret_values, min_size=1, max_size=3))
def test_masking_a_decision_leaves_no_secret_in_any_string(
    value: object, secrets: list[str]
) -> None:
    # An evaluation point's decision: strings anywhere, mapping keys included.
    def strings(v: object) -> list[str]:
        if isinstance(v, str):
            return [v]
        if isinstance(v, dict):
            return [s for k, x in v.items() for s in (*strings(k), *strings(x))]
        if isinstance(v, list):
            return [s for x in v for s in strings(x)]
        return []

    masked = mask_value({"k": value, secrets[0]: [secrets[-1]]}, secrets)
    assert all(secret not in text for text in strings(masked) for secret in secrets)
    assert mask_value(value, ["\0never"]) == value  # nothing else changes


def test_overlapping_occurrences_are_masked_as_one() -> None:
    assert mask("xaaaay", ["aaa"]) == "x***y"
    assert mask("abab-ab", ["aba", "b-a"]) == "***b"
    assert mask("a*b", ["*"]) == "a###b"  # (a mask of `*` would spell the secret again)


@given(
    small_text,
    st.lists(secret_values, min_size=1, max_size=3),
    st.data(),
)
def test_streamed_masking_never_leaves_a_secret_across_chunks(
    text: str, secrets: list[str], data: st.DataObject
) -> None:
    for secret in secrets:
        at = data.draw(st.integers(0, len(text)))
        text = text[:at] + secret + text[at:]
    raw = text.encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    masker = StreamMasker(secrets)
    out = b""
    at = 0
    for cut in [*cuts, len(raw)]:
        out += masker.feed(raw[at:cut])
        at = cut
    out += masker.finish()
    for secret in secrets:
        assert secret.encode() not in out
    # Nothing but the secrets is lost: unmasked, the text comes through whole.
    assert StreamMasker([]).feed(raw) == raw


def test_streamed_masking_matches_mask_for_one_chunk() -> None:
    masker = StreamMasker(["s3cr3t"])
    assert masker.feed(b"token=s3c") == b"token="  # (may be the start of the secret)
    assert masker.feed(b"r3t!\nok\n") == b"***!\nok\n"
    assert masker.finish() == b""
    masker = StreamMasker(["s3cr3t"])
    assert masker.feed(b"token=s3") + masker.finish() == b"token=s3"


def test_a_tail_cut_inside_a_secret_is_masked() -> None:
    assert mask_tail("cr3t-value and more", ["s3cr3t-value"]) == "*** and more"
    assert mask_tail("plain", ["s3cr3t"]) == "plain"


def test_an_unknown_secret_is_named_never_a_value() -> None:
    with pytest.raises(Unresolved, match=r"secret DB_PASSWORD .*DSN"):
        resolve_references({"DSN": "pg://u:${secret:DB_PASSWORD}@h"}, lambda _: None)
    env, used = resolve_references(
        {"DSN": "pg://u:${secret:PW}@h/${secret:PW}", "X": "${HOME}"}, {"PW": "pw"}.get
    )
    assert env == {"DSN": "pg://u:pw@h/pw", "X": "${HOME}"} and used == ["pw"]


def test_secrets_files() -> None:
    assert parse_secrets("# c\n\nA=x=y\nB= sp \n") == {"A": "x=y", "B": " sp "}
    with pytest.raises(ValueError, match="line 2") as caught:
        parse_secrets("A=1\nnot a secret line hunter2\n")
    assert "hunter2" not in str(caught.value)
    assert secrets_from_mapping({"A": "x", "N": 3}) == {"A": "x", "N": "3"}
    with pytest.raises(ValueError, match="B: expected a string"):
        secrets_from_mapping({"B": ["hunter2"]})
