"""X's rule for a postable reply, for model drafts and owner edits alike (pure: no HTTP)."""

from __future__ import annotations

import pytest

from bot.replies import (
    LINK_COST_NOTE,
    MAX_WEIGHTED_LENGTH,
    SIMILAR,
    InvalidReply,
    links_in,
    most_similar,
    similarity,
    validate_reply,
)

URL = "https://example.com/" + "a" * 200  # 220 characters, weighed 23


def refusal(text: str, *, allow_links: bool = False) -> str:
    with pytest.raises(InvalidReply) as caught:
        validate_reply(text, allow_links=allow_links)
    return str(caught.value)


# --- validate_reply -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # What the model's cleaner strips is an owner's own words here: kept as written.
        "Answer: no, and here is why.",
        'Reply: "Label then quotes."',
        '"Straight quotes."',
        "\u201cCurly quotes.\u201d",
        "'Single quotes, and it's fine.'",
        "Here's my reply: Fine.",
        "Tweet 2: Numbered label.",
        '"Fast" is relative, "cheap" too',
    ],
)
def test_an_owners_text_is_posted_as_written(text):
    assert validate_reply(text, allow_links=False) == text


def test_only_surrounding_whitespace_is_stripped():
    assert validate_reply("  \n Two lines,\nkept.\t ", allow_links=False) == "Two lines,\nkept."


def test_nul_and_lone_surrogates_are_cleaned_not_refused():
    assert validate_reply("No\x00 NUL here", allow_links=False) == "No NUL here"
    assert validate_reply("Half an emoji \ud83d", allow_links=False) == "Half an emoji \ufffd"


def test_text_is_normalized_to_nfc():
    assert validate_reply("cafe\u0301", allow_links=False) == "caf\u00e9"


@pytest.mark.parametrize("text", ["", "   ", "\x00", "\n\t"])
def test_empty_is_refused(text):
    assert refusal(text) == "empty"


def test_length_is_x_weighted():
    assert MAX_WEIGHTED_LENGTH == 280
    assert validate_reply("x" * 280, allow_links=False)
    assert refusal("x" * 291) == "too long (291 weighted characters, the limit is 280)"
    assert validate_reply("中" * 140, allow_links=False) == "中" * 140  # CJK weighs 2
    assert refusal("中" * 141) == "too long (282 weighted characters, the limit is 280)"
    assert validate_reply("😀" * 140, allow_links=False)  # an emoji weighs 2
    assert "282 weighted" in refusal("😀" * 141)
    assert validate_reply("👍🏽" * 140, allow_links=False), "an emoji sequence is one emoji"


def test_a_url_weighs_23_whatever_its_length():
    assert validate_reply(f"{'x' * 256} {URL}", allow_links=True)  # 256 + 1 + 23 = 280
    assert "281 weighted" in refusal(f"{'x' * 257} {URL}", allow_links=True)


def test_characters_x_refuses():
    assert refusal("Hidden \ufffe character") == "contains characters X does not accept"
    assert refusal("Byte order mark \ufeff inside") == "contains characters X does not accept"


@pytest.mark.parametrize(
    "text",
    ["Read https://example.com/post first", "More on example.com", "see www.example.org/x"],
)
def test_links_are_refused_unless_allowed(text):
    message = refusal(text)
    assert message == (
        "contains a link (X bills $0.20 for a post with a link instead of $0.015);"
        " links are off: set ALLOW_LINKS_IN_REPLIES=true to allow them"
    )
    assert validate_reply(text, allow_links=True) == text


def test_what_is_not_a_link():
    for text in ("node.js rocks", "e.g. this", "mail bob@example.com", "v1.2.3", "I said hi.Then"):
        assert validate_reply(text, allow_links=False) == text


def test_a_refusal_is_a_value_error():
    with pytest.raises(ValueError, match="empty"):
        validate_reply("", allow_links=True)


# --- links_in -----------------------------------------------------------------------------


def test_links_in_finds_what_x_counts():
    text = "See https://example.com/a?b=1. Or x.com, or www.example.org/x, not node.js."
    assert links_in(text) == ["https://example.com/a?b=1", "x.com", "www.example.org/x"]
    assert links_in("No links at all.") == []
    assert links_in("Broken \ud83d https://example.com") == ["https://example.com"]


def test_link_cost_note_is_a_sentence():
    assert LINK_COST_NOTE == "X bills $0.20 for a post with a link instead of $0.015."


# --- similarity ---------------------------------------------------------------------------

TWELVE = "incremental builds save me hours every week on our big rust workspace"


def replaced(text: str, index: int, word: str = "changed") -> str:
    words = text.split()
    words[index] = word
    return " ".join(words)


def test_identical_texts_are_1():
    assert similarity(TWELVE, TWELVE) == 1.0
    assert similarity(TWELVE, TWELVE.upper() + "!!") == 1.0, "case and punctuation aside"
    assert similarity("🔥", "🔥") == 1.0


def test_one_changed_word_in_twelve():
    assert len(TWELVE.split()) == 12  # 10 shingles of 3 words
    # A middle word sits in 3 shingles: 7 shared of 13.
    assert similarity(TWELVE, replaced(TWELVE, 6)) == pytest.approx(7 / 13)  # 0.54
    # The second word sits in 2: 8 of 12; the last in 1: 9 of 11.
    assert similarity(TWELVE, replaced(TWELVE, 1)) == pytest.approx(8 / 12)  # 0.67
    assert similarity(TWELVE, replaced(TWELVE, 11)) == pytest.approx(9 / 11)  # 0.82
    assert (
        similarity(TWELVE, replaced(TWELVE, 11))
        >= SIMILAR
        > similarity(TWELVE, replaced(TWELVE, 1))
    )


def test_unrelated_texts_score_low():
    other = "sourdough starters need patience and a warm kitchen to rise well overnight"
    assert similarity(TWELVE, other) == 0.0
    # Shared small words alone do not make replies alike.
    assert similarity("this is the way to do it", "this is the worst idea ever") < 0.2
    assert similarity("🔥", "👍") == 0.0


def test_short_texts_compare_word_sets():
    assert similarity("Great point", "great point, agreed") == pytest.approx(2 / 3)
    assert similarity("Yes!", "No.") == 0.0


def test_similarity_is_symmetric_and_bounded():
    pairs = [(TWELVE, replaced(TWELVE, 3)), ("Great point", TWELVE), ("", "a b c")]
    for a, b in pairs:
        assert similarity(a, b) == similarity(b, a)
        assert 0.0 <= similarity(a, b) <= 1.0


def test_most_similar():
    close, far = replaced(TWELVE, 11), "sourdough starters need patience"
    assert most_similar(TWELVE, [far, close, replaced(TWELVE, 6)]) == (
        pytest.approx(9 / 11),
        close,
    )
    assert most_similar(TWELVE, iter([far])) == (0.0, far), "any iterable"
    assert most_similar(TWELVE, []) is None
