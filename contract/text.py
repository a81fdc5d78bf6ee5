"""Untrusted text shown as text: prompts, names, notes and errors that come from the queue, in Markdown, HTML or a
terminal.

A task's fields are written by whoever submits it (and, on a Space, by anyone with write access to the queue), yet
they are read by the owner: in the app's Markdown (Gradio renders it with GFM: links, images, bare URLs, raw HTML,
``$$`` maths), in the model card on the Hub, and in the terminal of ``python -m scheduler``. Every such place goes
through one of these functions, so that the text shows as typed and does nothing:

- ``md_text``: inline Markdown text. The characters that start Markdown or HTML (``\\ ` * _ [ ] ( ) < > & ! | ~
  $ : @ #``; ``- + =`` or ``1.`` at the start) become numeric character references, which a Markdown renderer
  shows as the character but never reads as markup: ``:`` and ``@`` so that no bare URL or e-mail address becomes
  a link, ``$`` so that Gradio starts no maths. Words, ``-``, ``.`` and ``/`` stay as they are (readable source).
- ``md_code``: an inline code span that nothing inside can close (its fence is longer than any run of backticks in
  the text); for where the text should look like code (ids, a prompt to copy). ``in_table`` escapes ``|`` too.
- ``html_text``: HTML-escaped text, for values put into HTML.
- ``printable``: control characters and bidi overrides (``contract.params.CONTROL_CHARS``) as visible escapes
  (``\\x1b``, ``\\u202e``), for a terminal; the three functions above apply it too.

Torch-free and dependency-free, for the app and the trainer (the model card) alike.
"""

from __future__ import annotations

import html
import re

from contract.params import CONTROL_CHARS

#: characters that can start Markdown, HTML, an autolink or Gradio's maths anywhere in a line
_MARKUP = frozenset("\\`*[]()<>&!|~$:@#")
#: at the start of a line: a list item, a heading underline, an ordered list item ("1. ", "1) ")
_LINE_START = re.compile(r"[-+=]|\d{1,9}[.)](?:\s|$)")


_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _visible(char: str) -> str:
    """``\\n``, ``\\x1b``, ``\\u202e``: how Python writes the character in a string."""
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def printable(text: object, keep_newlines: bool = False) -> str:
    """``text`` with each control character and bidi override written as a visible escape (``\\x1b``); with
    ``keep_newlines`` a newline stays one (for multi-line messages)."""
    return CONTROL_CHARS.sub(lambda m: m.group() if keep_newlines and m.group() == "\n" else _visible(m.group()),
                             str(text))  # fmt: skip


def _one_line(text: object) -> str:
    """``text`` on one line: every run of whitespace (newlines included) one space, controls made visible."""
    return printable(" ".join(str(text).split()))


def _reference(char: str) -> str:
    return f"&#{ord(char)};"


def md_text(text: object) -> str:
    """``text`` as inline Markdown that renders as the same text and makes no link, image, HTML, emphasis or maths
    (on one line: newlines become spaces)."""
    line = _one_line(text)
    out = []
    for i, char in enumerate(line):
        intraword = char == "_" and 0 < i < len(line) - 1 and line[i - 1].isalnum() and line[i + 1].isalnum()
        www = char == "." and line[max(0, i - 3) : i].lower() == "www"  # a GFM "www." autolink
        if (char in _MARKUP or (char == "_" and not intraword) or www
                or (i == 0 and _LINE_START.match(line))):  # fmt: skip
            out.append(_reference(char))
        else:
            out.append(char)
    return "".join(out)


def md_code(text: object, in_table: bool = False) -> str:
    """``text`` as an inline code span (shown literally by any Markdown renderer); ``in_table``: inside a GFM table
    cell, where ``|`` would end the cell even in code. Empty text gives an empty string."""
    line = _one_line(text)
    if not line:
        return ""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", line)), default=0) + 1)
    pad = " " if line.startswith("`") or line.endswith("`") else ""
    span = f"{fence}{pad}{line}{pad}{fence}"
    return span.replace("|", "\\|") if in_table else span


def html_text(text: object) -> str:
    """``text`` escaped for HTML (quotes too), control characters made visible."""
    return html.escape(printable(text))
