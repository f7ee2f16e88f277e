"""Reading an X source newest first down to its cursor, each post once, resumably.

X pages newest first and bills every post it returns. After each page, what the page
gave and the cursor are saved in one transaction, so the cursor never moves past a
post not read, and a read cut short (X failed on page 3) resumes below what it read
instead of reading it, and paying for it, again. See ``bot.models.Cursor``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.db import transaction

from bot.models import Cursor

if TYPE_CHECKING:
    from bot.clients.x import Page, Post

log = logging.getLogger(__name__)

# Pages of 100 read per pass at most; the rest waits for the next pass (X keeps the
# newest 3,200 posts of a timeline, so 50 pages always reach its end).
MAX_PAGES = 50

# (since_id, until_id, pagination token) -> one page
Fetch = Callable[[str | None, str | None, str | None], "Page"]


def read_to_cursor(
    source: str,
    fetch: Fetch,
    keep: Callable[[list[Post]], object],
    *,
    enough: Callable[[Page, Cursor], bool] = lambda page, cursor: False,
) -> bool:
    """Read ``source`` down to its cursor, calling ``keep`` with each page's posts.

    ``keep`` runs in the transaction that saves the cursor. ``enough(page, cursor)`` may
    end the read early (nothing older is wanted). True when nothing unread is left; a
    ``ServiceError`` from ``fetch`` goes to the caller, with every page before it kept.
    """
    cursor, _ = Cursor.objects.get_or_create(source=source)
    for _ in range(MAX_PAGES):
        if _read_page(cursor, fetch, keep, enough):
            return True
    log.warning("%s has over %d pages of new posts; the rest next time", source, MAX_PAGES)
    return False


def _read_page(
    cursor: Cursor,
    fetch: Fetch,
    keep: Callable[[list[Post]], object],
    enough: Callable[[Page, Cursor], bool],
) -> bool:
    """Read the newest unread page; True when nothing newer than the cursor is left.

    Unread are the posts above ``since_id`` and, while a read is under way, below
    ``until_id`` (or behind ``page_token``, after a page X sent back empty);
    ``top_id`` is the newest post that read has seen.
    """
    # A read under way below posts already seen; a token alone (after pages X sent back
    # empty) is the same read, not a gap with newer posts above it.
    gap = bool(cursor.until_id)
    page = fetch(cursor.since_id or None, cursor.until_id or None, cursor.page_token or None)
    # Only the absence of a token ends a read: X thins pages after cutting them, so an
    # empty page may still have older posts behind it.
    done = not page.next_token
    cursor.page_token = ""
    if page.posts:
        done = done or enough(page, cursor)
        ids = [int(post.id) for post in page.posts]
        cursor.top_id = cursor.top_id or str(max(ids))
        cursor.until_id = str(min(ids))
    elif not done:
        cursor.page_token = page.next_token or ""
    if done:
        cursor.since_id = cursor.top_id or cursor.since_id
        cursor.until_id = cursor.top_id = ""
    with transaction.atomic():
        keep(page.posts)
        cursor.save(update_fields=["since_id", "until_id", "top_id", "page_token", "updated_at"])
    # A finished gap leaves the posts above the old top still to read.
    return done and not gap
