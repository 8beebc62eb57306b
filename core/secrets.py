"""Secret references and masking. Pure: no I/O.

A parameter or context variable whose value holds `${secret:NAME}` (NAME: letters, digits and
`_`, not starting with a digit) is a reference: the run (events, read model, pages, API) keeps
only that text, and the agent replaces it at run time with the secret's value
(`resolve_references`, given a lookup into the agent's own secrets). A value may hold several
references and other text (`postgres://app:${secret:DB_PASSWORD}@db/app`).

Whatever a command writes is masked before it is stored: every occurrence of a secret's value,
overlapping ones included, becomes `***` (`mask`, or `StreamMasker` for output that arrives in
chunks, where an occurrence may straddle two chunks).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, AnyStr, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

REFERENCE: Final = re.compile(r"\$\{secret:([A-Za-z_][A-Za-z0-9_]*)\}")
MASK: Final = "***"
_MASK_CHARS: Final = "*#x?~"  # the mask's character: the first one no secret holds


def reference(name: str) -> str:
    """The text that refers to secret `name`: `${secret:NAME}`."""
    return f"${{secret:{name}}}"


def referenced(value: str) -> list[str]:
    """The names of the secrets `value` refers to, in order, each once."""
    return list(dict.fromkeys(m.group(1) for m in REFERENCE.finditer(value)))


class Unresolved(Exception):
    """A secret could not be resolved: its one-line message names it (never a value)."""


def resolve_references(
    env: Mapping[str, str], lookup: Callable[[str], str | None]
) -> tuple[dict[str, str], list[str]]:
    """`env` with every `${secret:NAME}` replaced by `lookup(NAME)`, and the values used.

    Raises Unresolved (naming the variable and the secret) when `lookup` returns None."""
    values: dict[str, str] = {}
    resolved: dict[str, str] = {}
    for name, value in env.items():
        if "${secret:" not in value:
            resolved[name] = value
            continue
        for secret in referenced(value):
            if secret not in values:
                found = lookup(secret)
                if found is None:
                    raise Unresolved(
                        f"secret {secret} (referenced by {name}) is not known to this agent: "
                        f"set CYCLONETIX_SECRET_{secret} or put it in its secrets file"
                    )
                values[secret] = found
        resolved[name] = REFERENCE.sub(lambda m: values[m.group(1)], value)
    return resolved, [v for v in values.values() if v]


def _covered(data: AnyStr, secrets: Iterable[AnyStr]) -> list[tuple[int, int]]:
    """The merged spans of `data` covered by an occurrence of a secret (overlaps included)."""
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        if not secret:
            continue
        i = data.find(secret)
        while i >= 0:
            spans.append((i, i + len(secret)))
            i = data.find(secret, i + 1)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def mask_token(secrets: Iterable[str | bytes]) -> str:
    """`***`, or three of another character when a secret holds `*` (a mask made of a
    secret's own characters could, next to the text around it, spell the secret again)."""
    used: set[str] = set()
    for secret in secrets:
        used.update(secret.decode("utf-8", "replace") if isinstance(secret, bytes) else secret)
    for char in _MASK_CHARS:
        if char not in used:
            return char * 3
    code = 0x2022  # (ever more unusual characters: some is in no secret)
    while chr(code) in used:
        code += 1
    return chr(code) * 3


def _replace(data: AnyStr, spans: Sequence[tuple[int, int]], token: AnyStr) -> AnyStr:
    parts: list[AnyStr] = []
    at = 0
    for start, end in spans:
        parts.append(data[at:start])
        parts.append(token)
        at = end
    parts.append(data[at:])
    return data[:0].join(parts)


def mask(text: str, secrets: Sequence[str]) -> str:
    """`text` with every stretch covered by a secret's value replaced by one mask (`***`)."""
    spans = _covered(text, secrets)
    return _replace(text, spans, mask_token(secrets)) if spans else text


def mask_value(value: object, secrets: Sequence[str]) -> object:
    """`value` (JSON-like: strings, numbers, lists, mappings) with `mask` applied to every
    string in it, mapping keys included: an evaluation point's decision is stored too."""
    if isinstance(value, str):
        return mask(value, secrets)
    if isinstance(value, dict):
        return {mask_value(k, secrets): mask_value(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_value(v, secrets) for v in value)
    return value


def mask_tail(text: str, secrets: Sequence[str]) -> str:
    """`mask` for the end of a longer text: a start that may be the end of a cut secret (a
    proper suffix of one, at least 3 characters or the whole of a short secret) is masked too."""
    cut = 0
    for secret in secrets:
        for k in range(len(secret) - 1, 0, -1):
            if k > cut and text.startswith(secret[-k:]) and (k >= 3 or len(secret) <= 3):
                cut = k
                break
    token = mask_token(secrets)
    if not cut:
        return mask(text, secrets)
    return token + mask(text[cut:], secrets)


class StreamMasker:
    """Masks secrets in output that arrives in chunks (bytes).

    `feed` returns what may be stored now: an end of a chunk that could be the start of a
    secret is held back until the next chunk (or `finish`) tells; an occurrence straddling
    chunks is masked as one. Concatenated, the outputs equal `mask` of the whole input, but
    for where a mask is split (never a secret in clear)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s for s in secrets if s]
        self._secrets = [s.encode("utf-8", "surrogatepass") for s in self.secrets]
        self._token = mask_token(self._secrets).encode("utf-8")
        self._pending = b""
        self._covered = 0  # bytes at the start of _pending inside an earlier occurrence
        self._masking = False  # the last output ended in a mask

    @property
    def active(self) -> bool:
        return bool(self._secrets)

    def feed(self, chunk: bytes) -> bytes:
        if not self._secrets:
            return chunk
        data = self._pending + chunk
        return self._emit(data, len(data) - self._held(data))

    def finish(self) -> bytes:
        data, self._pending = self._pending, b""
        return self._emit(data, len(data)) if data else b""

    def _held(self, data: bytes) -> int:
        """The longest end of `data` that is a proper start of a secret."""
        held = 0
        for secret in self._secrets:
            for k in range(min(len(secret) - 1, len(data)), held, -1):
                if data.endswith(secret[:k]):
                    held = k
                    break
        return held

    def _emit(self, data: bytes, cut: int) -> bytes:
        spans = _covered(data, self._secrets)
        if self._covered:
            spans = _merge([(0, self._covered), *spans])
        out: list[tuple[int, int]] = []
        covered = 0
        for start, end in spans:
            if start >= cut:
                break
            out.append((start, min(end, cut)))
            if end > cut:
                covered = end - cut
        piece = _replace(data[:cut], out, self._token)
        if self._masking and out and out[0][0] == 0 and self._covered:
            piece = piece[len(self._token) :]  # (the mask goes on from the last output)
        if cut:
            self._masking = bool(out) and out[-1][1] == cut
        self._pending = data[cut:]
        self._covered = covered
        return piece


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_secrets(text: str) -> dict[str, str]:
    """A `KEY=VALUE` secrets file: one secret a line, the value everything after the first `=`
    (kept as written); blank lines and lines starting with `#` are skipped. Raises ValueError
    (one line naming the line number, never its content)."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, eq, value = line.partition("=")
        name = name.strip()
        if not eq or not _NAME.fullmatch(name):
            raise ValueError(f"line {number}: expected NAME=VALUE (NAME: letters, digits, '_')")
        found[name] = value
    return found


def secrets_from_mapping(document: object) -> dict[str, str]:
    """A YAML secrets file's document: a mapping of NAME to a string (or number). Raises
    ValueError (one line naming the key, never a value)."""
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ValueError("expected a mapping of NAME: value")
    found: dict[str, str] = {}
    for name, value in document.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"key {str(name)[:60]!r}: expected a NAME (letters, digits, '_')")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"{name}: expected a string")
        found[name] = str(value)
    return found
