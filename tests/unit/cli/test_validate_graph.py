"""`cyclonetix validate` and `cyclonetix graph`, the definitions folder reader, the examples."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from core.definitions import DefinitionErrors
from core.graph import extend_graph, outcome_graph, resolve_context, task_environment
from services.cli import graph, validate
from services.cli.main import CliError
from services.definitions_files import (
    examples_dir,
    load_definitions_folder,
    read_definitions_folder,
)
from services.settings import CONFIG_ENV, FIELDS

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

EXAMPLES = examples_dir()


def cli(argv: Sequence[str]) -> int:
    """Run a subcommand the way services.cli.main does, with only the commands under test."""
    parser = argparse.ArgumentParser(prog="cyclonetix")
    sub = parser.add_subparsers(dest="command", required=True)
    validate.register(sub)
    graph.register(sub)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"cyclonetix: error: {exc}", file=sys.stderr)
        return exc.code
    return code


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


DIAMOND = {
    "tasks/a.yaml": "id: a\ncommand: echo a\n",
    "tasks/b.yaml": "id: b\nname: 'Say \"hi\" \\ bye'\ncommand: echo b\ndependencies: [a]\n",
    "tasks/c.yaml": "id: c\ncommand: echo c\ndependencies: [a]\nqueue: gpu\n",
    "tasks/d.yaml": "id: d\ncommand: echo d\ndependencies: [b, c]\nevaluation_point: true\n",
}


@pytest.fixture(autouse=True)
def _no_settings_from_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (CONFIG_ENV, *(field.env for field in FIELDS)):
        monkeypatch.delenv(name, raising=False)


# --- validate ---------------------------------------------------------------------------------


def test_validate_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert EXAMPLES.name == "examples" and EXAMPLES.parent.name == "infra"
    assert cli(["validate"]) == 0
    out = capsys.readouterr().out
    assert out == f"ok: 13 tasks, 2 dags, 2 contexts, 1 parameter set in {EXAMPLES}\n"


def test_validate_takes_the_folder_as_argument_option_or_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, DIAMOND)
    assert cli(["validate", str(tmp_path)]) == 0
    assert cli(["validate", "-d", str(tmp_path)]) == 0
    assert cli(["validate", "--definitions", str(tmp_path)]) == 0
    monkeypatch.setenv("CYCLONETIX_DEFINITIONS", str(tmp_path))
    assert cli(["validate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"ok: 4 tasks, 0 dags, 0 contexts, 0 parameter sets in {tmp_path}"] * 4


def test_validate_refuses_two_different_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["validate", str(tmp_path), "-d", str(tmp_path / "other")]) == 2
    assert "two definitions folders given" in capsys.readouterr().err


def test_validate_reports_every_error_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        tmp_path,
        {
            **DIAMOND,
            "tasks/e.yaml": "id: e\ncommand: x\ndependencies: [ghost]\n",
            "tasks/f.yaml": "id: f\ncommand: x\ncolour: red\n",
            "dags/nightly.yaml": "id: nightly\ncontext: prod\ntasks: [{id: a}]\n",
            "notes/stray.yaml": "id: x\n",
        },
    )
    assert cli(["validate", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "dags/nightly.yaml: context: unknown context 'prod'",
        "notes/stray.yaml: not in a definitions folder: put it under tasks/, dags/, contexts/ "
        "or parameter_sets/",
        "tasks/e.yaml: dependencies[0]: unknown task 'ghost'",
        "tasks/f.yaml: colour: unknown field (allowed: id, command, name, description, "
        "dependencies, parameters, parameter_sets, queue, retries, timeout_seconds, "
        "evaluation_point, tags, schedule, notify)",
        f"4 errors in {tmp_path}",
    ]


def test_validate_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert cli(["validate", str(missing)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{missing}: no such definitions folder",
        f"1 error in {missing}",
    ]


# --- reading a folder -------------------------------------------------------------------------


def test_read_folder_recurses_and_skips_hidden_and_other_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "tasks/etl/deep/x.yml": "id: x\ncommand: echo\n",
            "tasks/y.yaml": "id: y\ncommand: echo\n",
            "tasks/.y.yaml.swp": "garbage",
            "tasks/notes.txt": "ignored",
            ".git/config.yaml": "ignored: true",
            "tasks/.hidden/z.yaml": "ignored",
        },
    )
    assert sorted(read_definitions_folder(tmp_path)) == ["tasks/etl/deep/x.yml", "tasks/y.yaml"]
    defs = load_definitions_folder(tmp_path)  # no contexts/, dags/ or parameter_sets/: fine
    assert sorted(defs.tasks) == ["x", "y"]
    assert defs.source("tasks", "x") == "tasks/etl/deep/x.yml"


def test_read_folder_follows_symlinked_folders_once(tmp_path: Path) -> None:
    write(tmp_path / "shared", {"a.yaml": "id: a\ncommand: echo\n"})
    root = tmp_path / "defs"
    (root / "tasks").mkdir(parents=True)
    (root / "tasks" / "shared").symlink_to(tmp_path / "shared")
    (root / "tasks" / "shared_again").symlink_to(tmp_path / "shared")
    (tmp_path / "shared" / "loop").symlink_to(tmp_path / "shared")
    assert list(read_definitions_folder(root)) == ["tasks/shared/a.yaml"]


def test_missing_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DefinitionErrors) as info:
        read_definitions_folder(tmp_path / "absent")
    assert str(info.value) == f"{tmp_path / 'absent'}: no such definitions folder"


# --- graph ------------------------------------------------------------------------------------


def test_graph_dot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, DIAMOND)
    assert cli(["graph", "-d", str(tmp_path), "--outcome", "d", "--format", "dot"]) == 0
    assert capsys.readouterr().out == (
        'digraph "d" {\n'
        "  rankdir=LR;\n"
        '  node [shape=box, style=rounded, fontname="sans-serif"];\n'
        '  "a" [label="a"];\n'
        '  "b" [label="Say \\"hi\\" \\\\ bye\\nb"];\n'
        '  "c" [label="c\\nqueue: gpu"];\n'
        '  "d" [label="d", shape=diamond];\n'
        '  "a" -> "b";\n'
        '  "a" -> "c";\n'
        '  "b" -> "d";\n'
        '  "c" -> "d";\n'
        "}\n"
    )


def test_graph_json_is_the_resolved_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, {**DIAMOND, "tasks/a.yaml": "id: a\ncommand: echo\nparameters: {N: 1}\n"})
    argv = ["graph", "-d", str(tmp_path), "--outcome", "b", "--param", "a.N=2", "--param", "M=x"]
    assert cli(argv) == 0
    nodes = json.loads(capsys.readouterr().out)
    assert [n["id"] for n in nodes] == ["a", "b"]
    assert nodes[0]["parameters"] == {"N": "2", "M": "x"}
    assert nodes[1]["dependencies"] == ["a"]


def test_graph_of_a_dag_in_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["graph", "--dag", "nightly_etl"]) == 0
    nodes = {n["id"]: n for n in json.loads(capsys.readouterr().out)}
    assert list(nodes) == ["extract", "transform", "load"]
    assert nodes["transform"]["parameters"]["MODE"] == "full"


def test_graph_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, DIAMOND)
    assert cli(["graph", "-d", str(tmp_path), "--outcome", "dd"]) == 2
    assert capsys.readouterr().err == "cyclonetix: error: unknown task 'dd' (did you mean 'd'?)\n"
    assert cli(["graph", "-d", str(tmp_path), "--outcome", "d", "--param", "oops"]) == 2
    assert capsys.readouterr().err == (
        "cyclonetix: error: invalid --param 'oops': expected KEY=VALUE or TASK.KEY=VALUE\n"
    )


def test_graph_on_invalid_definitions_prints_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, {"tasks/a.yaml": "id: a\ncommand: x\ndependencies: [a]\n"})
    assert cli(["graph", "-d", str(tmp_path), "--outcome", "a"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "tasks/a.yaml: dependencies[0]: dependency cycle: a -> a",
        f"1 error in {tmp_path}",
    ]


def test_graph_needs_exactly_one_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli(["graph", "--outcome", "a", "--dag", "b"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("validate", "graph"):
        with pytest.raises(SystemExit):
            cli([command, "--help"])
        out = capsys.readouterr().out
        assert "--definitions DIR" in out
        assert len(out.splitlines()) > 8


# --- the examples run as `cyclonetix dev` would run them ---------------------------------------


def test_every_example_command_runs_with_plain_sh(tmp_path: Path) -> None:
    defs = load_definitions_folder(EXAMPLES)
    context = resolve_context(
        defs, "production", run_id="example-run", now=dt.datetime.now(dt.UTC), entropy=b"x"
    )
    targets = ["load", "deploy_model", "compare_models", "diamond_d", "flaky_fetch"]
    nodes = {n.id: n for target in targets for n in outcome_graph(defs, target)}
    assert set(defs.tasks) <= {n.task_id for n in nodes.values()}
    for node in nodes.values():
        eval_file = tmp_path / f"{node.id}.json"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TMPDIR": str(tmp_path),
            "CYCLONETIX_EVAL_RESULT": str(eval_file),
            # The last allowed attempt: flaky_fetch fails on purpose before that.
            **task_environment(context, node, run_id="example-run", attempt=node.retries.count + 1),
        }
        # Examples stay instant for demos: nothing waits on purpose (the timeout only stops
        # waiting for one that hangs; how fast a command runs is not this test's business).
        assert "sleep" not in node.command, node.id
        done = subprocess.run(
            ["/bin/sh", "-c", node.command],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        assert done.returncode == 0, (node.id, done.stderr)
        assert done.stdout.strip(), f"{node.id} prints nothing"
        assert "$" not in done.stdout, f"{node.id}: a variable did not reach the command"
        if node.evaluation_point:
            decision = json.loads(eval_file.read_text())
            added = extend_graph(
                nodes,
                defs,
                after=node.id,
                next_tasks=decision["next_tasks"],
                parameters=decision.get("parameters", {}),
            )
            assert all(n.id in defs.tasks for n in added)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluate_model.json"]


def test_flaky_example_fails_before_its_last_attempt(tmp_path: Path) -> None:
    defs = load_definitions_folder(EXAMPLES)
    (node,) = outcome_graph(defs, "flaky_fetch")
    assert node.retries.count >= 1 and node.timeout_seconds is not None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env |= task_environment({}, node, run_id="r", attempt=1)
    done = subprocess.run(
        ["/bin/sh", "-c", node.command], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "simulated network error" in done.stderr
