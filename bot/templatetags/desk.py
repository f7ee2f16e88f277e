"""Template tags of the owner's desk: the dashboard's reads and the paused banner."""

from __future__ import annotations

from django import template

from bot.dashboard import Dashboard, dashboard
from bot.selectors import publishing_paused
from bot.services.scheduling import paused_words

register = template.Library()


@register.simple_tag
def desk_dashboard() -> Dashboard:
    return dashboard()


@register.simple_tag
def publishing_pause() -> str:
    """Why publishing is paused, or "" while it runs: one small read per admin page."""
    return paused_words() if publishing_paused() else ""
