"""Text from outside (X, the model, an owner's form) made safe to store and compare."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["clean_text"]

# A lone surrogate cannot be encoded as UTF-8 (PostgreSQL, twitter-text and HTTP all refuse it).
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """``value`` without NUL (PostgreSQL refuses it) or lone surrogates, in NFC form.

    Nothing is shortened: a long value stays data, never an error.
    """
    if not value:
        return value
    value = value.replace("\x00", "")
    value = _LONE_SURROGATE.sub("\ufffd", value)
    return unicodedata.normalize("NFC", value)
