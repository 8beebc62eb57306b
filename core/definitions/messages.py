"""Problems in definitions as `file: key: message` lines, and msgspec errors turned into them."""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Any

import msgspec
import msgspec.inspect

from core.definitions.model import ENV_NAME_PATTERN, ID_PATTERN
from core.errors import Invalid
from core.text import printable

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

_PATTERN_WORDS = {
    ID_PATTERN: "an id (1-128 letters, digits, '_' or '-', not starting with '-')",
    ENV_NAME_PATTERN: "a variable name (letters, digits and '_', not starting with a digit)",
}
_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "nothing",
}


class DefinitionError(msgspec.Struct, frozen=True):
    """One problem in the definitions: which file, which key (may be empty), what is wrong."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        # One line whatever the file name, key or message quote (`core.text.printable`).
        if self.key:
            return printable(f"{self.file}: {self.key}: {self.message}")
        return printable(f"{self.file}: {self.message}")


class DefinitionErrors(Invalid):
    """Definitions that cannot be used; `str()` gives one line per problem (the one `Invalid`
    whose message may have several lines)."""

    def __init__(self, errors: Sequence[DefinitionError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def suggest(name: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when something close exists, else empty (only on error paths)."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _yaml_type(obj: object) -> str:
    if isinstance(obj, bool):
        return "bool"
    if isinstance(obj, int):
        return "int"
    if isinstance(obj, float):
        return "float"
    if isinstance(obj, str):
        return "str"
    if isinstance(obj, list | tuple):
        return "array"
    if isinstance(obj, dict):
        return "object"
    return "null" if obj is None else type(obj).__name__


# --- msgspec validation errors -> file, key, message ------------------------------------------

_AT_RE = re.compile(r"^(?P<what>.*?) - at (?P<in_key>`key` in )?`(?P<path>\$[^`]*)`$", re.DOTALL)
_SEGMENT_RE = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_FIELD_RE = re.compile(r"^Object (missing required|contains unknown) field `([^`]+)`$")
_EXPECTED_RE = re.compile(r"^Expected `([^`]+)`(.*)$", re.DOTALL)
_REGEX_RE = re.compile(r"^ matching regex '(.*)'$", re.DOTALL)
_GOT_RE = re.compile(r"^, got `([^`]+)`$")
_LENGTH_RE = re.compile(r"^ of length (>=|<=) (\d+)$")

Segment = str | int | None  # field name, list index, or None for "some value of a mapping"


def validation_error(
    file: str, obj: Any, struct_type: type[msgspec.Struct], exc: msgspec.ValidationError
) -> DefinitionError:
    text = str(exc)
    match = _AT_RE.match(text)
    what, in_key, raw_path = (
        (match["what"], bool(match["in_key"]), match["path"]) if match else (text, False, "$")
    )
    segments: list[Segment] = []
    for seg in _SEGMENT_RE.finditer(raw_path[1:]):
        name, index = seg.group(1), seg.group(2)
        segments.append(name if name is not None else int(index) if index is not None else None)
    info = msgspec.inspect.type_info(struct_type)
    value, segments = _resolve_path(obj, info, segments)

    field = _FIELD_RE.match(what)
    if field:
        segments.append(field[2])
        if field[1] == "missing required":
            return DefinitionError(file, _key(segments), "missing required field")
        allowed = _struct_fields(_type_at(info, segments[:-1]))
        hint = suggest(field[2], allowed) or (
            f" (allowed: {', '.join(allowed)})" if allowed else ""
        )
        return DefinitionError(file, _key(segments), "unknown field" + hint)

    if in_key:
        key_type = _dict_key_type(_type_at(info, segments))
        bad = (
            next((k for k in value if not _matches(k, key_type)), None)
            if isinstance(value, dict)
            else None
        )
        return DefinitionError(
            file, _key(segments), f"invalid name {bad!r}: expected {_describe(what)}"
        )
    return DefinitionError(file, _key(segments), f"expected {_describe(what)}, got {show(value)}")


def _resolve_path(
    obj: Any, info: msgspec.inspect.Type, segments: list[Segment]
) -> tuple[Any, list[Segment]]:
    """The value at the path, naming the mapping key where msgspec only says `[...]`."""
    value = obj
    resolved: list[Segment] = []
    for seg in segments:
        if seg is None and isinstance(value, dict):
            value_type = _dict_value_type(_type_at(info, resolved))
            bad = next((k for k, v in value.items() if not _matches(v, value_type)), None)
            if bad is None:
                resolved.append(seg)
                value = None
                continue
            resolved.append(str(bad))
            value = value[bad]
        elif isinstance(seg, int) and isinstance(value, list) and seg < len(value):
            resolved.append(seg)
            value = value[seg]
        elif isinstance(seg, str) and isinstance(value, dict):
            resolved.append(seg)
            value = value.get(seg)
        else:
            resolved.append(seg)
            value = None
    return value, resolved


def _key(segments: list[Segment]) -> str:
    out = ""
    for seg in segments:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            name = "[...]" if seg is None else seg
            out += name if not out else f".{name}"
    return out


def _type_at(info: msgspec.inspect.Type, segments: list[Segment]) -> msgspec.inspect.Type | None:
    current: msgspec.inspect.Type | None = info
    for seg in segments:
        if current is None:
            return None
        options = current.types if isinstance(current, msgspec.inspect.UnionType) else (current,)
        following: msgspec.inspect.Type | None = None
        for option in options:
            if isinstance(option, msgspec.inspect.StructType) and isinstance(seg, str):
                following = next((f.type for f in option.fields if f.name == seg), None)
            elif isinstance(option, msgspec.inspect.DictType) and not isinstance(seg, int):
                following = option.value_type
            elif isinstance(
                option, msgspec.inspect.VarTupleType | msgspec.inspect.ListType
            ) and isinstance(seg, int):
                following = option.item_type
            if following is not None:
                break
        current = following
    return current


def _struct_fields(info: msgspec.inspect.Type | None) -> list[str]:
    options = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    for option in options:
        if isinstance(option, msgspec.inspect.StructType):
            return [f.encode_name for f in option.fields]
    return []


def _dict_key_type(info: msgspec.inspect.Type | None) -> msgspec.inspect.Type | None:
    return info.key_type if isinstance(info, msgspec.inspect.DictType) else None


def _dict_value_type(info: msgspec.inspect.Type | None) -> msgspec.inspect.Type | None:
    return info.value_type if isinstance(info, msgspec.inspect.DictType) else None


def _matches(value: object, info: msgspec.inspect.Type | None) -> bool:
    """A shallow check of scalars, enough to point at the offending mapping entry."""
    if isinstance(info, msgspec.inspect.UnionType):
        return any(_matches(value, t) for t in info.types)
    if isinstance(info, msgspec.inspect.StrType):
        pattern = info.pattern
        return isinstance(value, str) and (pattern is None or bool(re.search(pattern, value)))
    if isinstance(info, msgspec.inspect.BoolType):
        return isinstance(value, bool)
    if isinstance(info, msgspec.inspect.IntType):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(info, msgspec.inspect.FloatType):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(info, msgspec.inspect.NoneType):
        return value is None
    return True


def _describe(what: str) -> str:
    """msgspec's "Expected `int | object`, got `str`" -> "an integer or a mapping"."""
    match = _EXPECTED_RE.match(what)
    if not match:
        return what[:1].lower() + what[1:].replace("`", "")
    raw = [t.strip() for t in match[1].split("|")]
    if set(raw) == {"bool", "int", "float", "str"}:
        return "a single value (string, number or true/false)"
    names = [_TYPE_WORDS.get(t, t) for t in raw]
    words = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    rest = match[2]
    if _GOT_RE.match(rest):
        return words
    regex = _REGEX_RE.match(rest)
    if regex:
        return _PATTERN_WORDS.get(regex[1], f"{words} matching {regex[1]!r}")
    length = _LENGTH_RE.match(rest)
    if length:
        least = "at least" if length[1] == ">=" else "at most"
        item = "item" if length[2] == "1" else "items"
        return f"{words} with {least} {length[2]} {item}"
    return words + rest.replace("`", "")


def show(value: object) -> str:
    kind = _TYPE_WORDS.get(_yaml_type(value), _yaml_type(value))
    if isinstance(value, list) and not value:
        return "an empty list"
    if isinstance(value, dict | list) or value is None:
        return kind
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}"
