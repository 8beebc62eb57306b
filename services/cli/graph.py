"""`cyclonetix graph`: print the graph a run would execute, without scheduling anything."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import msgspec

from core.definitions import DEFAULT_QUEUE
from core.graph import GraphError, dag_graph, outcome_graph, overrides_from
from services.cli.main import CliError
from services.cli.validate import add_definitions_option, definitions_dir, load_or_report

if TYPE_CHECKING:
    from collections.abc import Sequence

    from core.graph import TaskNode

DESCRIPTION = (
    "Resolve the graph of an outcome (a task and everything it needs) or of a DAG, with "
    "parameters merged as a run would see them, and print it as JSON or as a Graphviz digraph "
    "(`cyclonetix graph DIR --outcome deploy_model --format dot | dot -Tsvg > graph.svg`)."
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "graph",
        help="print the resolved graph of an outcome or a DAG",
        description=DESCRIPTION,
    )
    add_definitions_option(parser)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--outcome", metavar="TASK", help="a task id, or TASK:PARAMETER_SET, to make happen"
    )
    target.add_argument("--dag", metavar="DAG", help="a DAG id")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="[TASK.]KEY=VALUE",
        help="override a parameter for every task, or for one task (repeatable)",
    )
    parser.add_argument(
        "--format", choices=("json", "dot"), default="json", help="output format (default json)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = definitions_dir(args)
    defs = load_or_report(path)
    if defs is None:
        return 1
    try:
        overrides = overrides_from(args.param)
        if args.outcome is not None:
            nodes = outcome_graph(defs, args.outcome, overrides)
            title = args.outcome
        else:
            nodes = dag_graph(defs, args.dag, overrides)
            title = args.dag
    except GraphError as exc:
        raise CliError(str(exc)) from None
    if args.format == "dot":
        print(to_dot(title, nodes), end="")
    else:
        print(msgspec.json.format(msgspec.json.encode(list(nodes)), indent=2).decode())
    return 0


def to_dot(title: str, nodes: Sequence[TaskNode]) -> str:
    """A Graphviz digraph; edges run from a dependency to the task that needs it."""
    lines = [
        f"digraph {_quote(title)} {{",
        "  rankdir=LR;",
        '  node [shape=box, style=rounded, fontname="sans-serif"];',
    ]
    for node in nodes:
        label = [node.name or node.id]
        if node.name and node.name != node.id:
            label.append(node.id)
        if node.queue != DEFAULT_QUEUE:
            label.append(f"queue: {node.queue}")
        shape = ", shape=diamond" if node.evaluation_point else ""
        lines.append(f"  {_quote(node.id)} [label={_quote(*label)}{shape}];")
    for node in nodes:
        lines.extend(f"  {_quote(dep)} -> {_quote(node.id)};" for dep in node.dependencies)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _quote(*lines: str) -> str:
    """A DOT string literal; several lines are joined with DOT's own line break."""
    escaped = (
        line.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n")
        for line in lines
    )
    return '"' + "\\n".join(escaped) + '"'
