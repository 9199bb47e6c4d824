"""Text that is safe to show on a terminal, whatever bytes it came from.

etcd keys, file names and config fields are user data: a crafted key can hold ESC, BEL, CR or a
bidi override that rewrites the operator's screen. Every human output (tables, one-line errors,
stderr lists) passes such text through :func:`printable`; JSON output needs no help, since the
JSON encoder escapes control characters itself.

Shared by both CLIs (``snapshot_tools`` may import ``kms_plugin``, not the reverse).
"""

from __future__ import annotations

__all__ = ["printable"]


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every non-printable character (and ``\\``) escaped as ``\\xNN``/``\\uNNNN``.

    Non-printable is Python's ``str.isprintable``: control characters (C0, C1, DEL), format
    characters (bidi overrides, zero-width), line and paragraph separators, unassigned code points
    and lone surrogates. The space is kept. A backslash is doubled so the escaping is unambiguous.
    """
    if text.isprintable() and "\\" not in text:
        return text  # the common case costs one scan
    return "".join(ch if ch.isprintable() and ch != "\\" else ("\\\\" if ch == "\\" else _escape(ch)) for ch in text)
