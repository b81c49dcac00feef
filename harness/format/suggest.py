"""The one "did you mean": the closest known name to a mistyped one, for every hint the
harness prints (scenario keys and engines, CLI options and filters, model families, the
testing API's marker and budgets)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# difflib's ratio (2 * matching characters / total length). 0.6 keeps one-letter slips
# (sed/seed 0.86, simm/sim 0.86, cuda0/cuda:0 0.91) and leaves unrelated words without a
# hint (--bogus/--timeout 0.5).
CUTOFF = 0.6


def closest(word: object, known: Iterable[str]) -> str | None:
    """The known name closest to `word`, or None when none is close (or `word` is no string)."""
    if not isinstance(word, str):
        return None
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=CUTOFF)
    return close[0] if close else None


def did_you_mean(word: object, known: Iterable[str], otherwise: str) -> str:
    """`did you mean 'x'?` for the closest known name, else `otherwise`."""
    close = closest(word, known)
    return f"did you mean {close!r}?" if close is not None else otherwise
