"""Hostile input to the pure core: oversized, deep and alias-bomb YAML, NUL bytes and huge
values in parameters, denied environment variables, terminal escapes in what is printed.

Each refusal is one line naming the file (or parameter) and the limit; fuzzed, the YAML loader
and the trigger parser give a result or a clear problem, never an exception or a hang.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.definitions import (
    MAX_ALIAS_EXPANSION,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_VALUES,
    DefinitionErrors,
    load_definitions,
    parse_definitions,
    read_yaml,
)
from core.env_policy import (
    DEFAULT_DENIED_ENV,
    DEFAULT_ENV_POLICY,
    MAX_VALUE_BYTES,
    EnvPolicy,
    dispatch_env_problem,
    parse_deny_env,
)
from core.errors import Invalid
from core.graph import GraphError
from core.scheduling import plan_run
from core.text import printable, unsafe
from core.triggers import Rejection, TriggerRequest, parse_trigger

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TASK = "tasks/t.yaml"


def errors_of(files: dict[str, str | bytes], policy: EnvPolicy = DEFAULT_ENV_POLICY) -> list[str]:
    try:
        load_definitions(files, env_policy=policy)
    except DefinitionErrors as exc:
        return [str(e) for e in exc.errors]
    return []


def one_error(files: dict[str, str | bytes], policy: EnvPolicy = DEFAULT_ENV_POLICY) -> str:
    errors = errors_of(files, policy)
    assert len(errors) == 1, errors
    assert "\n" not in errors[0]
    return errors[0]


# -- YAML limits ----------------------------------------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    doc = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    previous = "a"
    for name in "bcdefghijklmnop"[:levels]:
        doc += f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]\n"
        previous = name
    return doc


def test_a_file_over_the_size_limit_is_one_line_naming_it_and_the_limit() -> None:
    big = b"id: t\ncommand: x\n" + b"# " + b"x" * MAX_FILE_BYTES + b"\n"
    error = one_error({TASK: big})
    assert error.startswith(f"{TASK}: file is {len(big)} bytes")
    assert f"limit of {MAX_FILE_BYTES}" in error and "5 MiB" in error


def test_a_file_of_too_many_values_is_refused_before_anything_is_built() -> None:
    started = time.monotonic()
    error = one_error({TASK: "id: t\ncommand: x\ntags: [" + "a," * MAX_VALUES + "a]\n"})
    assert time.monotonic() - started < 5
    assert error == f"{TASK}: more than {MAX_VALUES} values (at line 3): the limit for a " + (
        "definitions file"
    )


def test_a_billion_laughs_document_is_refused_quickly() -> None:
    started = time.monotonic()
    error = one_error({TASK: "id: t\ncommand: x\ntags: []\n" + billion_laughs()})
    assert time.monotonic() - started < 2
    assert error.startswith(f"{TASK}: aliases expand the document")
    assert str(MAX_ALIAS_EXPANSION) in error


def test_merge_key_laughs_are_refused_too() -> None:
    doc = "a: &a {x: 1, y: 2}\n"
    previous = "a"
    for name in "bcdefghijklmnopqrstuvwxyz":
        doc += f"{name}: &{name} {{<<: [*{previous}, *{previous}], {name}: 1}}\n"
        previous = name
    _, problem = read_yaml(doc)
    assert problem.startswith("aliases expand the document")


def test_a_few_aliases_are_fine() -> None:
    obj, problem = read_yaml("base: &b {x: 1}\none: *b\ntwo: {<<: *b, y: 2}\n")
    assert problem == ""
    assert obj == {"base": {"x": 1}, "one": {"x": 1}, "two": {"x": 1, "y": 2}}


@pytest.mark.parametrize(
    "doc",
    [
        "a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
        "".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 1)) + "  " * (MAX_DEPTH + 1) + "v",
        # Shallow text, deep once its aliases are expanded.
        "a: &a " + "[" * 40 + "]" * 40 + "\nb: &b " + "[" * 40 + "*a" + "]" * 40 + "\n",
    ],
    ids=["flow", "block", "through-aliases"],
)
def test_nesting_deeper_than_the_limit_is_refused(doc: str) -> None:
    error = one_error({TASK: doc})
    assert error.startswith(f"{TASK}: ")
    assert f"nested more than {MAX_DEPTH} levels deep" in error or "maximum nesting" in error


def test_a_recursive_alias_is_refused() -> None:
    _, problem = read_yaml("a: &a [1, *a]\n")
    assert "recursive" in problem


def test_an_integer_too_long_to_convert_is_a_yaml_problem() -> None:
    error = one_error({TASK: "id: t\ncommand: x\nparameters: {N: " + "9" * 5000 + "}\n"})
    assert error.startswith(f"{TASK}: invalid YAML")


# -- parameter values and denied names in definitions --------------------------------------------


def test_a_nul_byte_in_a_parameter_is_refused_at_validation() -> None:
    error = one_error({TASK: 'id: t\ncommand: x\nparameters: {NAME: "a\\0b"}\n'})
    assert error.startswith(f"{TASK}: parameters.NAME: ")
    assert "NUL" in error


def test_a_value_over_the_size_limit_is_refused() -> None:
    value = "x" * (MAX_VALUE_BYTES + 1)
    error = one_error({"contexts/c.yaml": f"id: c\nvariables: {{BIG: {value}}}\n"})
    assert error.startswith("contexts/c.yaml: variables.BIG: the value is")
    assert str(MAX_VALUE_BYTES) in error
    assert errors_of({"contexts/c.yaml": f"id: c\nvariables: {{BIG: {value[1:]}}}\n"}) == []


@pytest.mark.parametrize(
    ("files", "where"),
    [
        ({TASK: "id: t\ncommand: x\nparameters: {LD_PRELOAD: /tmp/x.so}\n"}, "parameters"),
        ({"contexts/c.yaml": "id: c\nvariables: {PATH: /tmp}\n"}, "variables"),
        ({"parameter_sets/s.yaml": "id: s\nparameters: {BASH_ENV: /x}\n"}, "parameters"),
        (
            {
                TASK: "id: t\ncommand: x\n",
                "dags/d.yaml": "id: d\ntasks: [{id: t, parameters: {DYLD_INSERT_LIBRARIES: x}}]\n",
            },
            "tasks[0].parameters",
        ),
        (
            {TASK: "id: t\ncommand: x\nschedule: {cron: '0 * * * *', params: {t.IFS: x}}\n"},
            "schedule.params",
        ),
        ({TASK: "id: t\ncommand: x\nparameters: {CYCLONETIX_RUN_ID: x}\n"}, "parameters"),
    ],
)
def test_a_denied_variable_is_refused_naming_it_and_where(
    files: dict[str, str | bytes], where: str
) -> None:
    error = one_error(files)
    file, key, message = error.split(": ", 2)
    assert key.startswith(where + ".")
    name = key.rpartition(".")[2]
    assert message.startswith(f"{name} is a denied environment variable")
    assert file in files


def test_every_default_denied_name_is_refused() -> None:
    for name in DEFAULT_DENIED_ENV:
        assert one_error({TASK: f"id: t\ncommand: x\nparameters: {{{name}: v}}\n"})


def test_an_installation_may_allow_a_default_name_and_deny_another() -> None:
    files: dict[str, str | bytes] = {
        TASK: "id: t\ncommand: x\nparameters: {PATH: /opt/bin, HTTP_PROXY: x}\n"
    }
    policy = parse_deny_env(" -PATH, HTTP_PROXY ,")
    assert one_error(files, policy).startswith(f"{TASK}: parameters.HTTP_PROXY: ")
    assert errors_of(files, parse_deny_env("-PATH")) == []
    assert not policy.denies("PATH") and policy.denies("HTTP_PROXY") and policy.denies("LD_X")
    assert parse_deny_env("-LD_PRELOAD").denies("LD_AUDIT")  # (only that name is allowed)
    assert not parse_deny_env("-LD_PRELOAD").denies("LD_PRELOAD")


@pytest.mark.parametrize("text", ["1BAD", "A-B", "-", "-CYCLONETIX_RUN_ID", "A B", "É"])
def test_a_bad_deny_env_entry_is_one_line(text: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_deny_env(text)
    assert str(caught.value).startswith("CYCLONETIX_DENY_ENV: ")
    assert "\n" not in str(caught.value)


def test_the_dispatch_check_lets_the_ids_cyclonetix_sets_through() -> None:
    env = {"CYCLONETIX_RUN_ID": "r", "CYCLONETIX_TASK_ID": "t", "CYCLONETIX_ATTEMPT": "1"}
    assert dispatch_env_problem({**env, "REGION": "eu"}) is None
    problem = dispatch_env_problem({**env, "LD_PRELOAD": "/x.so"})
    assert problem is not None and "LD_PRELOAD" in problem and "\n" not in problem
    assert dispatch_env_problem({"CYCLONETIX_EVAL_RESULT": "/x"}) is not None
    assert dispatch_env_problem({"A": "x\0"}) is not None


# -- schedule time: --param and triggers ---------------------------------------------------------

DEFS = load_definitions({TASK: "id: t\ncommand: echo $A\nparameters: {A: '1'}\n"})


def plan(*params: str, policy: EnvPolicy = DEFAULT_ENV_POLICY) -> object:
    return plan_run(
        DEFS,
        kind="outcome",
        target="t",
        now=T0,
        entropy=bytes(16),
        params=params,
        env_policy=policy,
    )


@pytest.mark.parametrize(
    ("param", "named"),
    [
        ("A=a\0b", "--param A: the value holds a NUL byte"),
        ("t.A=\0", "--param t.A: the value holds a NUL byte"),
        ("LD_PRELOAD=/tmp/x.so", "--param LD_PRELOAD: LD_PRELOAD is a denied"),
        ("t.PYTHONPATH=/x", "--param t.PYTHONPATH: PYTHONPATH is a denied"),
        ("A=" + "x" * (MAX_VALUE_BYTES + 1), "--param A: the value is"),
    ],
)
def test_a_bad_override_is_refused_at_schedule_time(param: str, named: str) -> None:
    with pytest.raises(GraphError) as caught:
        plan(param)
    assert str(caught.value).startswith(named)
    assert "\n" not in str(caught.value)


def test_an_installation_policy_applies_to_overrides() -> None:
    plan("PATH=/opt/bin", policy=parse_deny_env("-PATH"))
    with pytest.raises(GraphError):
        plan("A=1", policy=parse_deny_env("A"))


@given(st.text(max_size=30), st.text(max_size=30))
def test_any_value_holding_a_nul_is_refused_everywhere(before: str, after: str) -> None:
    value = before + "\0" + after
    with pytest.raises(GraphError, match="NUL"):
        plan(f"A={value}")
    errors = errors_of({TASK: "id: t\ncommand: x\nparameters: {A: " + json.dumps(value) + "}\n"})
    assert errors and all("NUL" in e or "invalid YAML" in e for e in errors)
    got = parse_trigger("outcome", "t", json.dumps({"params": {"A": value}}).encode(), 64 * 1024)
    assert isinstance(got, Rejection) and "params.A" in got.reason and "NUL" in got.reason


def test_a_trigger_param_too_large_is_refused_naming_it() -> None:
    body = json.dumps({"params": {"BIG": "x" * (MAX_VALUE_BYTES + 1)}}).encode()
    got = parse_trigger("outcome", "t", body, 10 * MAX_VALUE_BYTES)
    assert isinstance(got, Rejection) and got.reason.startswith("params.BIG: the value is")


# -- printable -----------------------------------------------------------------------------------


def test_printable_escapes_terminal_sequences() -> None:
    assert printable("a\x1b[2Jb\x9bc\x7f\td\ne") == "a\\x1b[2Jb\\x9bc\\x7f\\x09d\\x0ae"
    assert printable("right\u202eleft") == "right\\u202eleft"
    assert printable("plain ünïcødé ✓") == "plain ünïcødé ✓"


@given(st.text())
def test_printable_leaves_no_control_character(text: str) -> None:
    shown = printable(text)
    assert not any(unsafe(c) for c in shown)
    assert all(0x20 <= ord(c) != 0x7F and not 0x80 <= ord(c) < 0xA0 for c in shown)
    if not any(unsafe(c) for c in text):
        assert shown == text


# -- fuzzing -------------------------------------------------------------------------------------

_TOKENS = st.sampled_from(
    [
        "id: t",
        "command: x",
        "\n",
        "  ",
        "- ",
        ": ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&a ",
        "*a",
        "&b ",
        "*b",
        "<<: ",
        "? ",
        "!!binary ",
        "!!str ",
        "!!python/object ",
        "'",
        '"',
        "#",
        "---",
        "...",
        "%YAML 1.1\n",
        "|\n",
        ">\n",
        "parameters:",
        "variables:",
        "\\0",
        "\t",
        "\x00",
        "\x1b",
        "9" * 50,
        "1e999",
        "true",
        "null",
        "~",
        "é",
        "\ufeff",
        "tasks:",
    ]
)
_YAML_TEXT = st.lists(st.one_of(_TOKENS, st.text(max_size=8)), max_size=40).map("".join)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_FOLDERS = st.sampled_from(
    ["tasks/a.yaml", "dags/d.yaml", "contexts/c.yaml", "parameter_sets/p.yml"]
)


def _structured(value: object) -> str:
    return json.dumps(value)  # JSON is YAML: structures of any shape and type


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.dictionaries(
        _FOLDERS,
        st.one_of(_YAML_TEXT, _VALUES.map(_structured), st.binary(max_size=60)),
        max_size=4,
    )
)
def test_fuzzed_definitions_give_definitions_or_clear_errors(files: dict[str, str | bytes]) -> None:
    started = time.monotonic()
    try:
        load_definitions(files)
    except DefinitionErrors as exc:
        for error in exc.errors:
            assert str(error).split(": ", 1)[0] in files  # names the file
            assert "\n" not in str(error) and error.message
    parse_definitions(files)  # (the first pass alone never raises either)
    assert time.monotonic() - started < 2


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.one_of(
        st.binary(max_size=300),
        _VALUES.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(
            st.sampled_from(
                ["context", "params", "run_id", "idempotency_key", "requested_by", "x"]
            ),
            _VALUES,
            max_size=5,
        ).map(lambda d: json.dumps(d).encode()),
        st.dictionaries(st.text(max_size=12), _VALUES, max_size=4).map(
            lambda p: json.dumps({"params": p}).encode()
        ),
    ),
    st.integers(min_value=0, max_value=400),
)
def test_fuzzed_triggers_give_a_request_or_one_line_rejection(data: bytes, limit: int) -> None:
    got = parse_trigger("dag", "etl", data, limit)
    assert isinstance(got, TriggerRequest | Rejection)
    if isinstance(got, Rejection):
        assert got.reason and "\n" not in got.reason
    else:
        assert all("\0" not in p for p in got.params)
