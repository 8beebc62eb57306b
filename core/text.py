"""User-supplied text made safe to show on a terminal: control characters written as escapes.

Parameter values, names and messages come from definitions, triggers and commands; printed raw,
an escape sequence in one could rewrite the terminal (move the cursor, retitle the window, hide
lines). `printable` writes every C0 control character (tab and newline included: the output
is one line per item), DEL, every C1 control character and the bidirectional overrides as
`\\xNN` / `\\uNNNN`. Pure.
"""

from __future__ import annotations

from typing import Final

_CONTROLS: Final = [*range(0x00, 0x20), *range(0x7F, 0xA0)]
_BIDI: Final = [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029]
_TABLE: Final = {
    **{c: f"\\x{c:02x}" for c in _CONTROLS},
    **{c: f"\\u{c:04x}" for c in _BIDI},
}


def printable(text: str) -> str:
    """`text` with no control character left in it (each one as an escape); else unchanged."""
    if text.isprintable():  # (fast path: also false for some other characters, handled below)
        return text
    return text.translate(_TABLE)


def unsafe(char: str) -> bool:
    """A character `printable` escapes."""
    return ord(char) in _TABLE
