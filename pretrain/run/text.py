"""Strings read from files (encoder metadata, results, file names), made safe to print or to
put in Markdown: a terminal must not run their escape sequences, nor a report's table break
at their ``|`` or newlines."""

from __future__ import annotations


def printable(text: object, keep: str = "") -> str:
    """``text`` with each non-printable character (ANSI escapes, newlines, bidi controls, ...)
    written as ``repr`` writes it, e.g. ``\\x1b``, ``\\n``; the characters in ``keep`` stay."""
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in str(text))


def markdown_text(text: object) -> str:
    """``text`` as literal Markdown text on one line: printable, with backslashes and ``|``
    escaped so that it stays within its table cell."""
    return printable(text).replace("\\", "\\\\").replace("|", "\\|")
