"""Text from outside (the directory, peers) made safe to show: labels, pages, alerts, e-mail, logs."""

from __future__ import annotations

#: C0/C1 controls and DEL (CR/LF split lines and headers, ESC drives terminals), the Unicode line and
#: paragraph separators, and the bidirectional embedding/override/isolate controls that reorder what a
#: reader sees.
UNSAFE_CODES = frozenset(
    (*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
)
_REPLACED = dict.fromkeys(UNSAFE_CODES, "\ufffd")
_ESCAPED = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in UNSAFE_CODES} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def safe_text(value: str) -> str:
    """`value` with every unsafe character replaced by U+FFFD (the replacement character)."""
    return value.translate(_REPLACED)


def escape_unsafe(value: str) -> str:
    """`value` with every unsafe character written as an escape (`\\n`, `\\x1b`, `\\u202e`)."""
    return value.translate(_ESCAPED)
