"""What a button carries: an action on one queued tweet, at the draft version it showed.

Telegram gives a button 64 bytes of ``callback_data``; ours are a few dozen at most:
``a:1234:5`` approves draft version 5 of queued tweet 1234, ``u:1234:5:1`` approves
its variant 1. A press is trusted for nothing but its numbers: the services decide.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Act(enum.StrEnum):
    APPROVE = "a"
    EDIT = "e"
    REGENERATE = "g"
    REJECT = "r"
    VARIANT = "u"
    POSTED_BY_HAND = "h"
    PAGE = "p"  # next page of a command's list: p:<command>:<page>


@dataclass(frozen=True)
class Press:
    act: Act
    tweet_id: int = 0
    version: int = 0
    variant: int = 0
    command: str = ""
    page: int = 0


def button(act: Act, tweet_id: int, version: int = 0, variant: int | None = None) -> str:
    parts = [act.value, str(tweet_id), str(version)]
    if variant is not None:
        parts.append(str(variant))
    return ":".join(parts)


def page_button(command: str, page: int) -> str:
    return f"{Act.PAGE.value}:{command}:{page}"


def parse(data: str) -> Press | None:
    """The press a button's data stands for, or None for anything we did not write."""
    parts = data.split(":")
    try:
        act = Act(parts[0])
        if act is Act.PAGE:
            command, page = parts[1], int(parts[2])
            return Press(act, command=command, page=page) if len(parts) == 3 and page >= 1 else None
        numbers = [int(part) for part in parts[1:]]
    except (ValueError, IndexError):
        return None
    if any(number < 0 for number in numbers):
        return None
    if act is Act.VARIANT and len(numbers) == 3:
        return Press(act, numbers[0], numbers[1], numbers[2])
    if act is not Act.VARIANT and len(numbers) == 2:
        return Press(act, numbers[0], numbers[1])
    return None
