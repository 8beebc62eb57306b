"""YAML as definitions read it: safe, duplicate keys refused, few implicit types, bounded.

A definitions file is configuration, not data: `read_yaml` refuses one larger than
`MAX_FILE_BYTES`, holding more than `MAX_VALUES` values, nested deeper than `MAX_DEPTH`, or whose
aliases would expand it by more than `MAX_ALIAS_EXPANSION` values (a "billion laughs"
document), each with one line, before building anything from it.
"""

from __future__ import annotations

import re
from typing import Any, Final

import yaml

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # PyYAML built without libyaml: same behaviour, slower
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]


class _Loader(_BaseLoader):
    """Safe YAML with fewer surprises for configuration.

    Duplicate keys are errors (PyYAML silently keeps the last). Only true/false are booleans
    (`NO` as a country code stays a string) and dates stay strings: values end up as environment
    variables, so the text the user wrote is what they expect to see.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


_MERGE_TAG = "tag:yaml.org,2002:merge"
_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


MAX_FILE_BYTES: Final = 5 * 1024 * 1024  # one definitions file
MAX_DEPTH: Final = 64  # nested mappings and lists (definitions need about 5)
MAX_ALIAS_EXPANSION: Final = 100_000  # values aliases may add to a document, all expanded
# Values as written (scalars, lists, mappings, aliases), counted on the parser's events before
# anything is built: what bounds the memory a file may take (about 400 bytes per value built).
MAX_VALUES: Final = 500_000


def size_problem(size: int) -> str | None:
    """Why a file of `size` bytes is not read as definitions (one line), or None."""
    if size > MAX_FILE_BYTES:
        return (
            f"file is {size} bytes, more than the limit of {MAX_FILE_BYTES} "
            f"({MAX_FILE_BYTES // (1024 * 1024)} MiB) for a definitions file"
        )
    return None


def read_yaml(content: bytes | str) -> tuple[Any, str]:
    """The YAML document, or a one-line problem naming the line (or the limit exceeded)."""
    problem = size_problem(len(content))
    if problem is not None:
        return None, problem
    try:
        problem = _count_problem(content)
        if problem is not None:
            return None, problem
        loader = _Loader(content)
        try:
            node = loader.get_single_node()
            if node is None:
                return None, ""
            problem = _shape_problem(node)
            if problem is not None:
                return None, problem
            return loader.construct_document(node), ""
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "syntax error"
        context = ""
        if exc.context and exc.problem and exc.context_mark:
            context = f" ({exc.context} started at line {exc.context_mark.line + 1})"
        return None, f"invalid YAML{where}: {what}{context}"
    except yaml.YAMLError as exc:
        return None, "invalid YAML: " + " ".join(str(exc).split())
    except RecursionError:  # (the pure-Python parser only: libyaml bounds nesting itself)
        return None, f"invalid YAML: nested more than {MAX_DEPTH} levels deep"
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return None, "invalid YAML: " + " ".join(str(exc).split())[:200]


_VALUE_EVENTS = (yaml.ScalarEvent, yaml.CollectionStartEvent, yaml.AliasEvent)


def _count_problem(content: bytes | str) -> str | None:
    """More than MAX_VALUES values: one line, found while streaming events (building nothing,
    stopping at the first value too many)."""
    if 2 * len(content) <= MAX_VALUES:  # (no room for that many: skip the extra pass)
        return None
    count = 0
    for event in yaml.parse(content, Loader=_BaseLoader):
        if isinstance(event, _VALUE_EVENTS):
            count += 1
            if count > MAX_VALUES:
                line = event.start_mark.line + 1 if event.start_mark else 0
                return (
                    f"more than {MAX_VALUES} values (at line {line}): the limit for a "
                    "definitions file"
                )
    return None


def _shape_problem(root: yaml.Node) -> str | None:
    """Too deep, recursive, or aliases expanding too much: one line, else None.

    Aliases make the node tree a graph that shares nodes; the document as built (and as every
    later walk sees it) holds a shared node as many times as it is reached, and is as deep as
    its deepest expanded path: that is what the limits bound. Each node is visited once, with
    no recursion (post-order on an explicit stack).
    """
    size: dict[int, int] = {}  # the node's expanded size (capped)
    height: dict[int, int] = {}  # its expanded depth
    open_nodes: set[int] = set()  # on the current path: meeting one again is a cycle
    distinct = 0
    stack: list[yaml.Node] = [root]
    cap = 2 * MAX_ALIAS_EXPANSION + 10**6
    while stack:
        node = stack[-1]
        key = id(node)
        if key in size:
            stack.pop()
            continue
        children = _children(node)
        if key not in open_nodes:
            open_nodes.add(key)
            for child in children:
                if id(child) in open_nodes:
                    return "an alias refers to a value that contains it (a recursive document)"
                if id(child) not in size:
                    stack.append(child)
            continue
        stack.pop()
        open_nodes.discard(key)
        distinct += 1
        size[key] = min(cap, 1 + sum(size[id(c)] for c in children))
        height[key] = 1 + max((height[id(c)] for c in children), default=0)
        if height[key] > MAX_DEPTH:
            line = node.start_mark.line + 1
            return f"nested more than {MAX_DEPTH} levels deep (at line {line})"
        if size[key] - distinct > MAX_ALIAS_EXPANSION:
            return (
                f"aliases expand the document by more than {MAX_ALIAS_EXPANSION} values "
                "(the limit for a definitions file)"
            )
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
