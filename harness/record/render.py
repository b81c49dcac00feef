"""Untrusted text for each place it is shown: one function per sink, used by every writer.

Scenario names, YAML keys, prompts, model output, error messages and paths are data. They
may hold control characters, line breaks, backticks, `|`, `<`, `[/]`; none of it may act on
the sink it lands in:

- terminal: `terminal()` escapes every character that is not printable (what Python's
  `repr` escapes: C0/C1 controls such as ESC, line breaks, bidi and other invisible format
  characters, lone surrogates) as `\\x1b`, `\\n`, `\\u202e`. Data can neither drive the
  terminal nor forge a line of a CI log. `terminal_text()` wraps it in a rich `Text`,
  which rich never parses as markup (so `[main]` and `[/]` print as they are).
- markdown: data only ever lands inside a code span (`markdown_code`) or a fenced block
  (`markdown_block`) whose fence is longer than any backtick run in it, so it cannot end
  the span, and no HTML, link or emphasis in it is ever interpreted. In a table cell `|` is
  escaped and line breaks are shown as `\\n`, so a row stays one row.
- XML: `xml()` replaces every character XML 1.0 forbids (NUL, ESC and the other C0
  controls, lone surrogates, U+FFFE/U+FFFF) and other invisible controls with the same
  visible escapes; ElementTree escapes `<`, `&` and quotes. junit.xml always parses.

JSON needs nothing: `json.dumps` escapes everything (run.json and cases.jsonl), and what is
read back is shown through the functions above.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BACKTICK_RUN = re.compile(r"`+")


def _escape_char(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(value: object, keep: str = "") -> str:
    """`value` as text with every non-printable character escaped, except those in `keep`."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else _escape_char(c) for c in text)


# --- terminal ----------------------------------------------------------------------------------

def terminal(value: object, *, indent: str | None = None) -> str:
    """One line for a terminal or log: nothing in it is a control sequence or a line break.

    With `indent` (non-empty), line breaks are kept and every following line starts with
    `indent`, so a multi-line message stays readable and can still never start a line of
    its own at column 0 (a forged `[99/99] passed` line)."""
    if not indent:
        return escape(value)
    lines = escape(value, keep="\n").split("\n")
    return ("\n" + indent).join(lines)


def shorten(text: str, width: int) -> str:
    """`text` in at most `width` characters, cut at a word boundary and marked with "..."
    (mid-word only where the first word alone is longer than half of `width`)."""
    if len(text) <= width:
        return text
    cut = text[: width - 3]
    if not text[width - 3].isspace():  # the cut falls inside a word: end at the last whole one
        space = cut.rfind(" ")
        if space >= width // 2:
            cut = cut[:space]
    return cut.rstrip(" ,;:") + "..."


def terminal_text(value: object, style: str = "", *, indent: str | None = None) -> Text:
    """`terminal(value)` as a rich Text: printed literally, never read as rich markup."""
    from rich.text import Text

    return Text(terminal(value, indent=indent), style=style)


# --- markdown ----------------------------------------------------------------------------------

def markdown_code(value: object, *, table: bool = False) -> str:
    """An inline code span holding `value` literally (CommonMark / GitHub markdown).

    The fence is one backtick longer than the longest run of backticks inside, padded with a
    space where the content starts or ends with a backtick or a space, so the span always
    ends where it should. Line breaks are escaped (a blank line would end the paragraph, a
    newline would end a table row). `table=True` escapes `|`, which GitHub's table parser
    splits cells on even inside code spans (the `\\|` is shown as `|`)."""
    text = escape(value)
    if table:
        text = text.replace("|", "\\|")
    if not text:
        return "` `"
    longest = max((len(run) for run in _BACKTICK_RUN.findall(text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_block(value: object) -> str:
    """A fenced code block holding `value` literally, line breaks kept. The fence is longer
    than any backtick run inside, so no line of the content can close it."""
    text = escape(value, keep="\n\t")
    longest = max((len(run) for run in _BACKTICK_RUN.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


# --- XML ---------------------------------------------------------------------------------------

def xml(value: object) -> str:
    """Text or an attribute value for an XML 1.0 document: characters XML forbids, and other
    invisible controls, become visible escapes; tabs and line breaks stay (ElementTree
    writes them as character references inside attributes)."""
    return escape(value, keep="\n\t")
