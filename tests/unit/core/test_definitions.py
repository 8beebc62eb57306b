"""Loading definitions: every bad input names its file and key, all problems in one pass."""

from __future__ import annotations

import textwrap

import pytest

from core.definitions import (
    ContextDef,
    DefinitionError,
    DefinitionErrors,
    Definitions,
    RetryPolicy,
    TaskDef,
    check_definitions,
    find_cycles,
    load_definitions,
    parse_definitions,
)


def y(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def errors_of(files: dict[str, str]) -> list[str]:
    defs, errors = parse_definitions(files)
    return [str(e) for e in errors + check_definitions(defs)]


def only_error(files: dict[str, str]) -> str:
    errors = errors_of(files)
    assert len(errors) == 1, errors
    return errors[0]


GOOD = {
    "tasks/a.yaml": "id: a\ncommand: echo a\n",
    "tasks/b.yaml": "id: b\ncommand: echo b\ndependencies: [a]\n",
}


# --- a valid set ------------------------------------------------------------------------------


def test_a_valid_set_loads_every_kind() -> None:
    defs = load_definitions(
        {
            **GOOD,
            "tasks/etl/nested/c.yml": y("""
                id: c
                command: echo "$X"
                dependencies: [b, 'a:big']
                parameters: {X: 1, FLAG: true}
                retries: {count: 2, delay_seconds: 1}
                timeout_seconds: 30
                schedule: '*/5 * * * *'
                """),
            "dags/d.yaml": y("""
                id: d
                context: prod
                schedule: {cron: '0 2 * * *', timezone: Europe/Paris}
                tasks:
                  - id: a
                  - id: b
                    parameters: {Y: two}
                  - id: inline
                    command: echo inline
                    dependencies: [b]
                """),
            "contexts/base.yaml": "id: base\nvariables: {ENV: dev}\n",
            "contexts/prod.yaml": "id: prod\nextends: base\nvariables: {ENV: prod}\n",
            "parameter_sets/big.yaml": "id: big\nparameters: {X: 100}\n",
            "README.md": "not a definition: ignored",
        }
    )
    assert sorted(defs.tasks) == ["a", "b", "c"]
    assert defs.tasks["c"].retry_policy == RetryPolicy(count=2, delay_seconds=1)
    assert defs.tasks["c"].parameters == {"X": 1, "FLAG": True}
    assert defs.dags["d"].tasks[1].parameters == {"Y": "two"}
    assert defs.contexts["prod"] == ContextDef(id="prod", extends="base", variables={"ENV": "prod"})
    assert defs.parameter_sets["big"].parameters == {"X": 100}
    assert defs.source("tasks", "c") == "tasks/etl/nested/c.yml"
    assert defs.source("tasks", "in_memory") == "tasks/in_memory"


def test_content_may_be_bytes_or_text() -> None:
    defs = load_definitions({"tasks/a.yaml": b"id: a\ncommand: echo \xc3\xa9\n"})
    assert defs.tasks["a"].command == "echo é"


def test_no_contexts_or_dags_is_fine() -> None:
    assert load_definitions(GOOD).contexts == {}


def test_yes_no_and_dates_stay_strings() -> None:
    # Values become environment variables: `NO` (Norway) must not turn into "false".
    defs = load_definitions(
        {"tasks/a.yaml": "id: a\ncommand: x\nparameters: {COUNTRY: NO, DAY: 2024-01-31, ON: on}\n"}
    )
    assert defs.tasks["a"].parameters == {"COUNTRY": "NO", "DAY": "2024-01-31", "ON": "on"}


# --- one test per class of bad input ----------------------------------------------------------


def test_unknown_key_names_file_key_and_suggests() -> None:
    assert only_error({"tasks/a.yaml": "id: a\ncommand: x\ndependancies: []\n"}) == (
        "tasks/a.yaml: dependancies: unknown field (did you mean 'dependencies'?)"
    )


def test_unknown_nested_key_lists_the_allowed_fields() -> None:
    assert only_error({"tasks/a.yaml": "id: a\ncommand: x\nretries: {count: 1, wait: 2}\n"}) == (
        "tasks/a.yaml: retries.wait: unknown field "
        "(allowed: count, delay_seconds, backoff, max_delay_seconds)"
    )


def test_unknown_key_in_a_dag_entry() -> None:
    files = {**GOOD, "dags/d.yaml": "id: d\ntasks:\n  - id: a\n    queeu: gpu\n"}
    assert only_error(files) == "dags/d.yaml: tasks[0].queeu: unknown field (did you mean 'queue'?)"


def test_wrong_type_names_the_nested_key_and_value() -> None:
    assert only_error({"tasks/a.yaml": "id: a\ncommand: x\nretries: {count: three}\n"}) == (
        "tasks/a.yaml: retries.count: expected an integer, got a string 'three'"
    )


def test_wrong_type_inside_a_mapping_names_the_entry() -> None:
    assert only_error({"tasks/a.yaml": "id: a\ncommand: x\nparameters: {A: 1, B: [1, 2]}\n"}) == (
        "tasks/a.yaml: parameters.B: expected a single value (string, number or true/false), "
        "got a list"
    )


def test_bad_parameter_name() -> None:
    assert only_error({"tasks/a.yaml": "id: a\ncommand: x\nparameters: {1ST: 1}\n"}) == (
        "tasks/a.yaml: parameters: invalid name '1ST': expected a variable name "
        "(letters, digits and '_', not starting with a digit)"
    )


def test_bad_id() -> None:
    assert only_error({"tasks/a.yaml": "id: 'a.b'\ncommand: x\n"}) == (
        "tasks/a.yaml: id: expected an id (1-128 letters, digits, '_' or '-', not starting "
        "with '-'), got a string 'a.b'"
    )


def test_out_of_range_value() -> None:
    assert only_error({"tasks/a.yaml": "id: a\ncommand: x\ntimeout_seconds: 0\n"}) == (
        "tasks/a.yaml: timeout_seconds: expected a number > 0.0, got an integer 0"
    )


def test_yes_is_not_a_boolean() -> None:
    assert only_error({"tasks/a.yaml": "id: a\ncommand: x\nevaluation_point: yes\n"}) == (
        "tasks/a.yaml: evaluation_point: expected true or false, got a string 'yes'"
    )


def test_missing_required_field() -> None:
    assert (
        only_error({"tasks/a.yaml": "id: a\n"}) == "tasks/a.yaml: command: missing required field"
    )


def test_missing_required_field_in_a_nested_struct() -> None:
    files = {"dags/d.yaml": "id: d\nschedule: {timezone: UTC}\ntasks: [{id: x, command: y}]\n"}
    assert only_error(files) == "dags/d.yaml: schedule.cron: missing required field"


def test_empty_dag() -> None:
    assert only_error({"dags/d.yaml": "id: d\ntasks: []\n"}) == (
        "dags/d.yaml: tasks: expected a list with at least 1 item, got an empty list"
    )


def test_duplicate_id_names_both_files() -> None:
    files = {**GOOD, "tasks/z/other_a.yml": "id: a\ncommand: echo again\n"}
    assert only_error(files) == (
        "tasks/z/other_a.yml: id: duplicate task id 'a': also defined in tasks/a.yaml"
    )


def test_same_id_in_different_kinds_is_fine() -> None:
    files = {**GOOD, "parameter_sets/a.yaml": "id: a\n", "contexts/a.yaml": "id: a\n"}
    assert errors_of(files) == []


def test_duplicate_yaml_key_names_the_key_and_line() -> None:
    assert only_error({"tasks/a.yaml": "id: a\ncommand: x\ncommand: y\n"}) == (
        "tasks/a.yaml: invalid YAML at line 3, column 1: duplicate key 'command'"
    )


def test_unknown_dependency() -> None:
    files = {**GOOD, "tasks/c.yaml": "id: c\ncommand: x\ndependencies: [a, bb]\n"}
    assert (
        only_error(files) == "tasks/c.yaml: dependencies[1]: unknown task 'bb' (did you mean 'b'?)"
    )


def test_malformed_and_repeated_dependencies() -> None:
    files = {**GOOD, "tasks/c.yaml": "id: c\ncommand: x\ndependencies: [a, 'a:b:c', a, '']\n"}
    assert errors_of(files) == [
        "tasks/c.yaml: dependencies[1]: invalid dependency 'a:b:c': "
        "expected TASK or TASK:PARAMETER_SET",
        "tasks/c.yaml: dependencies[2]: 'a' is listed twice",
        "tasks/c.yaml: dependencies[3]: invalid dependency '': expected TASK or TASK:PARAMETER_SET",
    ]


def test_unknown_parameter_set_in_a_dependency_and_in_parameter_sets() -> None:
    files = {
        **GOOD,
        "parameter_sets/large.yaml": "id: large\n",
        "tasks/c.yaml": y("""
            id: c
            command: x
            dependencies: ['a:larg']
            parameter_sets: [large, tiny]
            """),
    }
    assert errors_of(files) == [
        "tasks/c.yaml: dependencies[0]: unknown parameter set 'larg' in 'a:larg' "
        "(did you mean 'large'?)",
        "tasks/c.yaml: parameter_sets[1]: unknown parameter set 'tiny'",
    ]


def test_bad_cron_in_a_task() -> None:
    files = {"tasks/a.yaml": "id: a\ncommand: x\nschedule: '0 25 * * *'\n"}
    assert only_error(files) == (
        "tasks/a.yaml: schedule: invalid cron '0 25 * * *': "
        "hour field '25': 25 is out of range 0-23"
    )


def test_bad_cron_and_timezone_in_dags() -> None:
    files = {
        **GOOD,
        "dags/one.yaml": "id: one\nschedule: 'every day'\ntasks: [{id: a}]\n",
        "dags/two.yaml": y("""
            id: two
            schedule: {cron: '0 0 * * mon-fry', timezone: Europe/Pariss}
            tasks: [{id: a}]
            """),
    }
    assert errors_of(files) == [
        "dags/one.yaml: schedule: invalid cron 'every day': "
        "expected 5 fields (minute hour day-of-month month day-of-week), got 2",
        "dags/two.yaml: schedule.cron: invalid cron '0 0 * * mon-fry': "
        "day of week field 'mon-fry': 'fry' is not a number 0-7 "
        "(or a name: sun, mon, tue, wed, thu, fri, sat)",
        "dags/two.yaml: schedule.timezone: unknown timezone 'Europe/Pariss' "
        "(use an IANA name such as 'UTC' or 'Europe/London')",
    ]


def test_cycle_is_reported_with_its_whole_path() -> None:
    files = {
        "tasks/a.yaml": "id: a\ncommand: x\ndependencies: [b]\n",
        "tasks/b.yaml": "id: b\ncommand: x\ndependencies: [c]\n",
        "tasks/c.yaml": "id: c\ncommand: x\ndependencies: [other, a]\n",
        "tasks/other.yaml": "id: other\ncommand: x\n",
    }
    # `x -> y` reads "x depends on y"; the error sits on the edge that closes the loop.
    assert only_error(files) == "tasks/c.yaml: dependencies[1]: dependency cycle: a -> b -> c -> a"


def test_cycle_through_a_parameter_set_dependency() -> None:
    files = {
        "parameter_sets/big.yaml": "id: big\n",
        "tasks/a.yaml": "id: a\ncommand: x\ndependencies: ['b:big']\n",
        "tasks/b.yaml": "id: b\ncommand: x\ndependencies: [a]\n",
    }
    assert only_error(files) == "tasks/b.yaml: dependencies[0]: dependency cycle: a -> b -> a"


def test_self_dependency_is_a_cycle() -> None:
    assert only_error({"tasks/a.yaml": "id: a\ncommand: x\ndependencies: [a]\n"}) == (
        "tasks/a.yaml: dependencies[0]: dependency cycle: a -> a"
    )


def test_two_separate_cycles_are_both_reported() -> None:
    files = {
        "tasks/a.yaml": "id: a\ncommand: x\ndependencies: [b]\n",
        "tasks/b.yaml": "id: b\ncommand: x\ndependencies: [a]\n",
        "tasks/c.yaml": "id: c\ncommand: x\ndependencies: [d]\n",
        "tasks/d.yaml": "id: d\ncommand: x\ndependencies: [c]\n",
    }
    assert errors_of(files) == [
        "tasks/b.yaml: dependencies[0]: dependency cycle: a -> b -> a",
        "tasks/d.yaml: dependencies[0]: dependency cycle: c -> d -> c",
    ]


def test_a_very_long_chain_is_checked_without_recursion() -> None:
    n = 20_000
    tasks = {
        f"t{i}": TaskDef(id=f"t{i}", command="x", dependencies=(f"t{i + 1}",) if i < n - 1 else ())
        for i in range(n)
    }
    assert check_definitions(Definitions(tasks=tasks)) == []
    tasks["t19999"] = TaskDef(id="t19999", command="x", dependencies=("t0",))
    (error,) = check_definitions(Definitions(tasks=tasks))
    assert error.message.startswith("dependency cycle: t0 -> t1 -> t2 -> ")
    assert error.message.endswith(" -> t19998 -> t19999 -> t0")


def test_unknown_context_in_a_dag() -> None:
    files = {**GOOD, "contexts/production.yaml": "id: production\n"}
    files["dags/d.yaml"] = "id: d\ncontext: prodution\ntasks: [{id: a}]\n"
    assert only_error(files) == (
        "dags/d.yaml: context: unknown context 'prodution' (did you mean 'production'?)"
    )


def test_unknown_extends() -> None:
    files = {"contexts/prod.yaml": "id: prod\nextends: bsae\n", "contexts/base.yaml": "id: base\n"}
    assert only_error(files) == (
        "contexts/prod.yaml: extends: unknown context 'bsae' (did you mean 'base'?)"
    )


def test_extends_cycle() -> None:
    files = {
        "contexts/a.yaml": "id: a\nextends: b\n",
        "contexts/b.yaml": "id: b\nextends: c\n",
        "contexts/c.yaml": "id: c\nextends: a\n",
    }
    assert only_error(files) == "contexts/c.yaml: extends: inheritance cycle: a -> b -> c -> a"


def test_yaml_syntax_error_names_the_line() -> None:
    files = {"tasks/a.yaml": "id: a\ncommand: x\ndependencies: [b, c\nqueue: gpu\n"}
    assert only_error(files) == (
        "tasks/a.yaml: invalid YAML at line 4, column 6: did not find expected ',' or ']' "
        "(while parsing a flow sequence started at line 3)"
    )


def test_two_documents_in_one_file() -> None:
    error = only_error({"tasks/a.yaml": "id: a\ncommand: x\n---\nid: b\ncommand: y\n"})
    assert error.startswith("tasks/a.yaml: invalid YAML at line 3, column 1: ")
    assert "another document" in error


def test_empty_file_and_non_mapping() -> None:
    assert errors_of(
        {"tasks/a.yaml": "", "tasks/b.yaml": "- id: b\n", "contexts/c.yml": "42\n"}
    ) == [
        "contexts/c.yml: expected a mapping of context fields, got an integer 42",
        "tasks/a.yaml: expected a mapping of task fields, got an empty file",
        "tasks/b.yaml: expected a mapping of task fields, got a list",
    ]


def test_yaml_outside_the_kind_folders_is_an_error() -> None:
    assert errors_of({**GOOD, "task/x.yaml": "id: x\n", "x.yml": "id: x\n"}) == [
        "task/x.yaml: not in a definitions folder: put it under tasks/, dags/, contexts/ "
        "or parameter_sets/",
        "x.yml: not in a definitions folder: put it under tasks/, dags/, contexts/ "
        "or parameter_sets/",
    ]


# --- DAG rules --------------------------------------------------------------------------------


def test_dag_entry_with_no_task_file_and_no_command() -> None:
    files = {**GOOD, "dags/d.yaml": "id: d\ntasks: [{id: a}, {id: bb}]\n"}
    assert only_error(files) == (
        "dags/d.yaml: tasks[1]: 'bb' is not a task definition and has no command "
        "(give a command to define it inline) (did you mean 'b'?)"
    )


def test_dag_dependency_outside_the_dag_is_an_error() -> None:
    files = {
        **GOOD,
        "dags/d.yaml": y("""
            id: d
            tasks:
              - id: a
              - id: z
                command: echo z
                dependencies: [a, b]
            """),
    }
    assert (
        only_error(files) == "dags/d.yaml: tasks[1].dependencies[1]: 'b' is not a task of this DAG"
    )


def test_dag_reference_whose_task_file_needs_a_task_outside_the_dag() -> None:
    files = {**GOOD, "dags/d.yaml": "id: d\ntasks: [{id: b}]\n"}
    assert only_error(files) == (
        "dags/d.yaml: tasks[0]: 'b' depends on 'a' (in tasks/b.yaml), which is not a task of "
        "this DAG: add it to the DAG or override the dependencies here"
    )


def test_dag_entry_may_override_dependencies() -> None:
    files = {**GOOD, "dags/d.yaml": "id: d\ntasks: [{id: b, dependencies: []}]\n"}
    assert errors_of(files) == []


def test_duplicate_task_in_a_dag() -> None:
    files = {**GOOD, "dags/d.yaml": "id: d\ntasks: [{id: a}, {id: b}, {id: a}]\n"}
    assert only_error(files) == (
        "dags/d.yaml: tasks[2].id: task 'a' appears twice in this DAG (also tasks[0])"
    )


def test_cycle_made_by_dag_overrides() -> None:
    files = {**GOOD, "dags/d.yaml": "id: d\ntasks: [{id: a, dependencies: [b]}, {id: b}]\n"}
    assert (
        only_error(files) == "dags/d.yaml: tasks[0].dependencies[0]: dependency cycle: a -> b -> a"
    )


def test_task_file_cycle_is_not_reported_again_for_each_dag() -> None:
    files = {
        "tasks/a.yaml": "id: a\ncommand: x\ndependencies: [b]\n",
        "tasks/b.yaml": "id: b\ncommand: x\ndependencies: [a]\n",
        "dags/d.yaml": "id: d\ntasks: [{id: a}, {id: b}]\n",
    }
    assert only_error(files) == "tasks/b.yaml: dependencies[0]: dependency cycle: a -> b -> a"


# --- all at once ------------------------------------------------------------------------------


def test_every_error_in_every_file_is_reported_in_one_pass() -> None:
    files = {
        "tasks/a.yaml": "id: a\ncommand: x\nretrys: 2\n",
        "tasks/b.yaml": "id: b\ncommand: x\ndependencies: [a, ghost]\n",
        "tasks/c.yaml": "id: c\ncommand: [x\n",
        "tasks/d.yaml": "id: d\ncommand: x\ndependencies: [e]\n",
        "tasks/e.yaml": "id: e\ncommand: x\ndependencies: [d]\nschedule: nope\n",
        "dags/nightly.yaml": "id: nightly\ncontext: missing\ntasks: [{id: b}, {id: q}]\n",
        "contexts/prod.yaml": "id: prod\nextends: nothing\n",
        "other/stray.yaml": "id: stray\n",
    }
    with pytest.raises(DefinitionErrors) as info:
        load_definitions(files)
    expected = [
        "contexts/prod.yaml: extends: unknown context 'nothing'",
        "dags/nightly.yaml: context: unknown context 'missing'",
        "dags/nightly.yaml: tasks[0]: 'b' depends on 'a' (in tasks/b.yaml), which is not a task "
        "of this DAG: add it to the DAG or override the dependencies here",
        "dags/nightly.yaml: tasks[1]: 'q' is not a task definition and has no command "
        "(give a command to define it inline)",
        "other/stray.yaml: not in a definitions folder: put it under tasks/, dags/, contexts/ "
        "or parameter_sets/",
        "tasks/a.yaml: retrys: unknown field (did you mean 'retries'?)",
        "tasks/b.yaml: dependencies[1]: unknown task 'ghost'",
        "tasks/c.yaml: invalid YAML at line 3, column 1: did not find expected ',' or ']' "
        "(while parsing a flow sequence started at line 2)",
        "tasks/e.yaml: schedule: invalid cron 'nope': "
        "expected 5 fields (minute hour day-of-month month day-of-week), got 1",
        "tasks/e.yaml: dependencies[0]: dependency cycle: d -> e -> d",
    ]
    assert [str(e) for e in info.value.errors] == expected
    assert str(info.value) == "\n".join(expected)


def test_a_broken_file_does_not_make_its_id_unknown_elsewhere() -> None:
    # tasks/a.yaml fails to load; b's dependency on it must not add a second, misleading error.
    files = {"tasks/a.yaml": "id: a\n", "tasks/b.yaml": "id: b\ncommand: x\ndependencies: [a]\n"}
    assert errors_of(files) == ["tasks/a.yaml: command: missing required field"]


def test_definition_error_text() -> None:
    assert str(DefinitionError("tasks/a.yaml", "retries.count", "bad")) == (
        "tasks/a.yaml: retries.count: bad"
    )
    assert str(DefinitionError("x.yaml", "", "not in a definitions folder")) == (
        "x.yaml: not in a definitions folder"
    )
    errors = DefinitionErrors([DefinitionError("a", "k", "m1"), DefinitionError("b", "", "m2")])
    assert str(errors) == "a: k: m1\nb: m2"


def test_find_cycles_rotates_to_the_smallest_node() -> None:
    assert find_cycles({"c": ["a"], "a": ["b"], "b": ["c"]}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": ["b"], "b": []}) == []
