"""Template tags of the owner's desk: the dashboard's reads and the paused banner."""

from __future__ import annotations

from datetime import datetime, timedelta

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

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


@register.filter
def ago(when: datetime | None) -> str:
    """ "under a minute ago", "5 minutes ago", "2 hours, 3 minutes ago"."""
    if when is None:
        return ""
    if timezone.now() - when < timedelta(minutes=1):
        return "under a minute ago"
    return f"{timesince(when)} ago"
