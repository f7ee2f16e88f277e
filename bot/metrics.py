"""Prometheus collectors for the pipeline: the queue, the dead letters, the publish lag, the
workers' heartbeat, and X's usage today.

Read at scrape time from the database and the shared cache, like
``resilience.metrics``, so every web process gives the same numbers. No label names a
tweet: statuses and X's endpoints are small fixed sets.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily

from bot.health import publish_lag_seconds
from bot.models import FailedTweet, FailedTweetStatus, QueuedTweet, Status
from bot.selectors import publishing_paused
from bot.services.heartbeat import last_beat
from bot.services.x_usage import usage_today
from resilience.metrics import Metric, Source

__all__ = ["Pipeline", "XUsageToday"]


class Pipeline(Source):
    name = "pipeline"

    def families(self) -> Iterable[Metric]:
        queue = GaugeMetricFamily(
            "replyguy_queue_tweets", "Queued tweets by status.", labels=["status"]
        )
        for status, n in _by_status(QueuedTweet, Status.values):
            queue.add_metric([status], n)
        dead = GaugeMetricFamily(
            "replyguy_dead_letters", "Dead-letter rows by status.", labels=["status"]
        )
        for status, n in _by_status(FailedTweet, FailedTweetStatus.values):
            dead.add_metric([status], n)
        lag = GaugeMetricFamily(
            "replyguy_publish_lag_seconds",
            "How long the oldest due approved reply has been due (0 when none is).",
            value=publish_lag_seconds() or 0.0,
        )
        paused = GaugeMetricFamily(
            "replyguy_publishing_paused",
            "1 while publishing is paused.",
            value=1 if publishing_paused() else 0,
        )
        families: list[Metric] = [queue, dead, lag, paused]
        beat = last_beat()
        if beat is not None:
            families.append(
                GaugeMetricFamily(
                    "replyguy_worker_heartbeat_timestamp_seconds",
                    "When a django-q2 worker last ran the notify task (Unix time).",
                    value=beat,
                )
            )
        return families


class XUsageToday(Source):
    """X's calls and their estimated cost today (X's billing day: UTC), by endpoint.

    Gauges: they start again from 0 at 00:00 UTC, as X's budget does.
    """

    name = "x_usage"

    def families(self) -> Iterable[Metric]:
        usage = usage_today()
        calls = GaugeMetricFamily(
            "replyguy_x_api_calls_today",
            "Requests that reached X today (UTC day), by endpoint.",
            labels=["endpoint"],
        )
        units = GaugeMetricFamily(
            "replyguy_x_api_units_today",
            "Posts or users X returned or created today (what X bills), by endpoint.",
            labels=["endpoint"],
        )
        cost = GaugeMetricFamily(
            "replyguy_x_api_cost_today_usd",
            "Estimated cost of today's X usage in US dollars (our estimate, not X's invoice).",
            labels=["endpoint"],
        )
        for endpoint, used in sorted(usage.by_endpoint.items()):
            calls.add_metric([endpoint], used.calls)
            units.add_metric([endpoint], used.units)
            cost.add_metric([endpoint], used.cost_usd)
        families: list[Metric] = [calls, units, cost]
        if settings.X_DAILY_BUDGET_USD is not None:
            families.append(
                GaugeMetricFamily(
                    "replyguy_x_api_daily_budget_usd",
                    "X_DAILY_BUDGET_USD: discovery stops for the day when the estimate reaches it.",
                    value=settings.X_DAILY_BUDGET_USD,
                )
            )
        return families


def _by_status(model: type[QueuedTweet] | type[FailedTweet], statuses: list[str]) -> list:
    """Every status with its row count, zeros included (one grouped query)."""
    counts = dict(model.objects.values_list("status").annotate(n=Count("id")).order_by())
    return [(status, counts.get(status, 0)) for status in statuses]
