"""The evaluation-point decision file is an input: parsed strictly, then stored leniently."""

from __future__ import annotations

import pytest

from core.errors import Invalid
from core.evaluation import EvaluationDecision, parse_decision
from core.events import EvaluationResult


def test_a_full_decision_becomes_the_stored_result() -> None:
    data = (
        b'{"next_tasks": ["deploy", "notify:loud"], "parameters": {"deploy": {"TARGET": "x"}},'
        b' "context_updates": {"MODEL": "m1"}, "metadata": {"score": 0.9, "by": ["a"]}}'
    )
    assert parse_decision(data) == EvaluationResult(
        next_tasks=("deploy", "notify:loud"),
        parameters={"deploy": {"TARGET": "x"}},
        context_updates={"MODEL": "m1"},
        metadata={"score": 0.9, "by": ["a"]},
    )


def test_every_key_is_optional() -> None:
    assert parse_decision(b"{}") == EvaluationResult()


def test_the_input_type_is_strict_and_the_stored_type_is_not() -> None:
    assert EvaluationDecision.__struct_config__.forbid_unknown_fields
    assert not EvaluationResult.__struct_config__.forbid_unknown_fields
    assert set(EvaluationDecision.__struct_fields__) == set(EvaluationResult.__struct_fields__)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"next_task": ["deploy"]}', "unknown key 'next_task' (did you mean 'next_tasks'?)"),
        (
            b'{"next_tasks": [], "surprise": 1}',
            "unknown key 'surprise' (allowed: next_tasks, parameters, context_updates, metadata)",
        ),
        (b'{"next_tasks": "deploy"}', "Expected `array`, got `str` - at `$.next_tasks`"),
        (b'{"parameters": {"deploy": {"N": 3}}}', "Expected `str`, got `int`"),
        (b'["deploy"]', "Expected `object`, got `array`"),
        (b"{oops", "not JSON: "),
    ],
)
def test_a_bad_decision_is_invalid_with_a_one_line_message(data: bytes, message: str) -> None:
    with pytest.raises(Invalid) as info:
        parse_decision(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
