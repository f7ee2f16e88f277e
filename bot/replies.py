"""X's rule for a reply text we may post, for a model's draft and an owner's edit alike.

Pure: no settings, no network, no client errors. The caller says whether links are
allowed (``ALLOW_LINKS_IN_REPLIES``) and turns ``InvalidReply`` into whatever it reports
(a permanent client error for a draft, a form error for an edit).

Lengths and links are counted as X counts them, with twitter-text v3: a URL weighs 23
whatever its length, CJK characters and emoji weigh 2, and a bare domain such as
``example.com`` is a link too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from twitter_text import extract_urls, parse_tweet

from bot.text import clean_text

__all__ = [
    "LINK_COST_NOTE",
    "MAX_WEIGHTED_LENGTH",
    "SIMILAR",
    "InvalidReply",
    "links_in",
    "most_similar",
    "similarity",
    "validate_reply",
]

MAX_WEIGHTED_LENGTH = 280  # X's limit, in twitter-text v3 weighted characters
# From this similarity on, two replies read as the same reply (see ``similarity``).
SIMILAR = 0.8

_LINK_COST = "X bills $0.20 for a post with a link instead of $0.015"
LINK_COST_NOTE = f"{_LINK_COST}."
_LINKS_OFF = (
    f"contains a link ({_LINK_COST}); links are off: set ALLOW_LINKS_IN_REPLIES=true to allow them"
)

_WORD = re.compile(r"\w+")
_SHINGLE = 3


class InvalidReply(ValueError):
    """The text cannot be posted as a reply; the message says why, for a person."""


def validate_reply(text: str, *, allow_links: bool) -> str:
    """The text to post: ``text`` made safe (``clean_text``) and stripped, nothing else.

    Raises InvalidReply when X would refuse it (empty, over 280 weighted characters,
    characters X does not accept) or when it holds a link and links are not allowed.
    """
    reply = clean_text(text).strip()
    if not reply:
        raise InvalidReply("empty")
    parsed = parse_tweet(reply)
    if parsed.weightedLength > MAX_WEIGHTED_LENGTH:
        raise InvalidReply(
            f"too long ({parsed.weightedLength} weighted characters,"
            f" the limit is {MAX_WEIGHTED_LENGTH})"
        )
    # Within the limit, twitter-text calls a text invalid only for characters X refuses.
    if not parsed.valid:
        raise InvalidReply("contains characters X does not accept")
    if not allow_links and links_in(reply):
        raise InvalidReply(_LINKS_OFF)
    return reply


def links_in(text: str) -> list[str]:
    """The URLs X would count (and bill) in ``text``, bare domains included, in order."""
    return extract_urls(clean_text(text))


def similarity(a: str, b: str) -> float:
    """How alike two texts read, from 0 (nothing shared) to 1 (the same words in order).

    The Jaccard index of their 3-word shingles (casefolded ``\\w+`` words), so a changed
    word costs only the shingles around it. When either text has fewer than 3 words,
    both are compared as word sets: a short reply has no shingles to share.
    """
    words_a, words_b = _words(a), _words(b)
    size = _SHINGLE if min(len(words_a), len(words_b)) >= _SHINGLE else 1
    shingles_a, shingles_b = _shingles(words_a, size), _shingles(words_b, size)
    union = shingles_a | shingles_b
    if not union:  # no words at all (emoji, punctuation): only the same text is alike
        return 1.0 if a.strip().casefold() == b.strip().casefold() else 0.0
    return len(shingles_a & shingles_b) / len(union)


def most_similar(text: str, others: Iterable[str]) -> tuple[float, str] | None:
    """The other text most like ``text`` with its ``similarity``, the first on a tie;
    None when there are no others."""
    best: tuple[float, str] | None = None
    for other in others:
        score = similarity(text, other)
        if best is None or score > best[0]:
            best = (score, other)
    return best


def _words(text: str) -> list[str]:
    # NFC first, so a composed and a decomposed accent are the same word.
    return _WORD.findall(clean_text(text).casefold())


def _shingles(words: list[str], size: int) -> set[tuple[str, ...]]:
    return {tuple(words[start : start + size]) for start in range(len(words) - size + 1)}
