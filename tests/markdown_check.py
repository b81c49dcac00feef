"""Parse markdown as GitHub would (CommonMark + tables) and check that data did not act on it."""

from __future__ import annotations

from markdown_it import MarkdownIt

MD = MarkdownIt("commonmark").enable("table")


def inline_tokens(text: str) -> list:
    tokens = []
    for block in MD.parse(text):
        tokens += block.children or []
    return tokens


def code_spans_of_safe_markdown(text: str) -> list[str]:
    """The code spans of `text`, after checking that no raw HTML, link or image is in it."""
    kinds = {t.type for t in inline_tokens(text)} | {t.type for t in MD.parse(text)}
    assert not kinds & {"html_inline", "html_block", "link_open", "image"}, f"raw HTML or a link from data: {kinds}"
    return [t.content for t in inline_tokens(text) if t.type == "code_inline"]
