"""`notify:` in task and DAG definitions: strict, and every mistake one clear line naming the
file and the key."""

from __future__ import annotations

import pytest

from core.definitions import DefinitionErrors, load_definitions
from core.definitions.model import NotifyDef

TASK = "id: t\ncommand: 'true'\n"
DAG = "id: d\ntasks: [{id: a, command: 'true'}]\n"


@pytest.mark.parametrize(
    ("notify", "message"),
    [
        (
            "[{url: 'ftp://h/x'}]",
            "notify[0].url: expected an http:// or https:// url, got 'ftp://h/x'",
        ),
        (
            "[{url: 'hooks.example.com/x'}]",
            "notify[0].url: expected an http:// or https:// url, got 'hooks.example.com/x'",
        ),
        (
            "[{url: 'http:///x'}]",
            "notify[0].url: invalid url 'http:///x': expected http(s)://HOST[:PORT]/PATH",
        ),
        (
            "[{url: 'http://h:port/x'}]",
            "notify[0].url: invalid url 'http://h:port/x': Port could not be cast to integer "
            "value as 'port'",
        ),
        (
            "[{url: 'https://h/x', on: [succeeded, finished]}]",
            "notify[0].on[1]: unknown outcome 'finished' (expected succeeded, failed, cancelled)",
        ),
        (
            "[{url: 'https://h/x', on: [faild]}]",
            "notify[0].on[0]: unknown outcome 'faild' (expected succeeded, failed, cancelled) "
            "(did you mean 'failed'?)",
        ),
        (
            "[{url: 'https://h/x', on: [failed, failed]}]",
            "notify[0].on[1]: 'failed' is listed twice",
        ),
        ("[]", "notify: expected a list with at least 1 item, got an empty list"),
        (
            "[{url: 'https://h/x', on: []}]",
            "notify[0].on: expected a list with at least 1 item, got an empty list",
        ),
        ("[{on: [failed]}]", "notify[0].url: missing required field"),
        (
            "[{url: 'https://h/x', secret_env: 'MY-SECRET'}]",
            "notify[0].secret_env: expected a variable name (letters, digits and '_', not "
            "starting with a digit), got a string 'MY-SECRET'",
        ),
        (
            "[{url: 'https://h/x', secret: abc}]",
            "notify[0].secret: unknown field (did you mean 'secret_env'?)",
        ),
        ("'https://h/x'", "notify: expected a list or nothing, got a string 'https://h/x'"),
    ],
)
@pytest.mark.parametrize(("folder", "head"), [("tasks", TASK), ("dags", DAG)])
def test_a_bad_notify_is_one_clear_line(folder: str, head: str, notify: str, message: str) -> None:
    with pytest.raises(DefinitionErrors) as raised:
        load_definitions({f"{folder}/x.yaml": f"{head}notify: {notify}\n"})
    assert str(raised.value) == f"{folder}/x.yaml: {message}"


def test_every_bad_webhook_is_reported_at_once() -> None:
    with pytest.raises(DefinitionErrors) as raised:
        load_definitions(
            {"dags/x.yaml": f"{DAG}notify: [{{url: 'ftp://a'}}, {{url: 'x', on: [done]}}]\n"}
        )
    assert len(raised.value.errors) == 3


def test_a_good_notify_loads_with_every_outcome_by_default() -> None:
    defs = load_definitions(
        {
            "tasks/t.yaml": f"{TASK}notify: [{{url: 'https://h/x'}}]\n",
            "dags/d.yaml": f"{DAG}notify:\n  - url: http://127.0.0.1:8080/hook\n"
            "    on: [failed]\n    secret_env: HOOK_SECRET\n",
        }
    )
    assert defs.tasks["t"].notify == (NotifyDef(url="https://h/x"),)
    assert defs.tasks["t"].notify[0].on == ("succeeded", "failed", "cancelled")
    assert defs.dags["d"].notify == (
        NotifyDef(url="http://127.0.0.1:8080/hook", on=("failed",), secret_env="HOOK_SECRET"),
    )
