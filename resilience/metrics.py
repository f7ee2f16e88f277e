"""Prometheus collectors for the shared breakers, their calls and the alerts.

Everything is read at scrape time from shared state (the breakers' store, the call
counts, the alert table), never from this process's memory, so every web process
answers a scrape with the same numbers, however many processes and machines made them.
A breaker whose state is not shared (the ``database`` breaker without Redis: each
process has its own) is left out for the same reason.

Names follow Prometheus conventions: ``replyguy_`` prefix, ``_total`` on counters,
base units, labels from small fixed sets (breaker names, outcomes, alert kinds).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from django.db import DatabaseError
from django.db.models import Count, Sum
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from resilience.calls import Calls, calls_by_breaker
from resilience.models import AlertEvent, AlertStatus
from resilience.registry import all_breakers
from resilience.state import Mode, State
from resilience.stores import StoreUnavailable

__all__ = ["Alerts", "Breakers", "Source", "StoredState"]

log = logging.getLogger(__name__)

Metric = CounterMetricFamily | GaugeMetricFamily
BREAKER_STATES = [*(s.value for s in State), *(m.value for m in Mode if m is not Mode.NORMAL)]


class Source:
    """One kind of stored state, read for a scrape: ``families`` builds its metrics."""

    name = ""

    def families(self) -> Iterable[Metric]:
        raise NotImplementedError


class StoredState(Collector):
    """Every source's metrics, read at scrape time; a source whose store fails is left out
    of that scrape (one line logged) and ``replyguy_scrape_source_up`` says so, so a
    scrape with the database down still answers."""

    def __init__(self, sources: Iterable[Source]) -> None:
        self.sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "replyguy_scrape_source_up",
            "Whether this source of stored state could be read for the scrape.",
            labels=["source"],
        )
        for source in self.sources:
            try:
                built = list(source.families())
            except (DatabaseError, StoreUnavailable) as exc:
                log.warning("metrics: %s could not be read: %s", source.name, type(exc).__name__)
                up.add_metric([source.name], 0)
                continue
            up.add_metric([source.name], 1)
            yield from built
        yield up


class Breakers(Source):
    """Each shared breaker's state, trips, and calls by outcome."""

    name = "breakers"

    def __init__(self, calls: Callable[[], dict[str, Calls]] = calls_by_breaker) -> None:
        self._calls = calls

    def families(self) -> Iterable[Metric]:
        state = GaugeMetricFamily(
            "replyguy_breaker_state",
            "1 for the breaker's current state (operator modes included), 0 for the others.",
            labels=["service", "state"],
        )
        failures = GaugeMetricFamily(
            "replyguy_breaker_consecutive_failures",
            "Failures in a row counted by the closed breaker.",
            labels=["service"],
        )
        opened = CounterMetricFamily(
            "replyguy_breaker_opened",
            "Times the breaker opened.",
            labels=["service"],
        )
        calls = CounterMetricFamily(
            "replyguy_service_calls",
            "Calls through the breaker: ok (the service answered, item-level refusals "
            "included), failure (a service-level failure), rejected (refused by the "
            "breaker, never sent). Each process adds its ok and rejected calls at most "
            "every 30 s, with its next call.",
            labels=["service", "outcome"],
        )
        last_ok = GaugeMetricFamily(
            "replyguy_service_last_success_timestamp_seconds",
            "When the service last answered (Unix time).",
            labels=["service"],
        )
        counted = self._calls()
        for breaker in all_breakers():
            status = breaker.get_status()
            if not status["shared"]:
                continue  # one process's own state: a scrape of another would differ
            name = breaker.name
            for value in BREAKER_STATES:
                state.add_metric([name, value], 1 if status["state"] == value else 0)
            failures.add_metric([name], status["failures"])
            opened.add_metric([name], status["opened_count"])
            mine = counted.get(name, Calls())
            calls.add_metric([name, "ok"], mine.ok)
            calls.add_metric([name, "failure"], status["total_failures"])
            calls.add_metric([name, "rejected"], mine.rejected)
            if mine.last_ok_at is not None:
                last_ok.add_metric([name], mine.last_ok_at.timestamp())
        return [state, failures, opened, calls, last_ok]


class Alerts(Source):
    """Alerts recorded, sent, held back as repeats, and not (yet) delivered, by kind."""

    name = "alerts"

    def families(self) -> Iterable[Metric]:
        raised = CounterMetricFamily(
            "replyguy_alerts_raised",
            "Alerts recorded (one per kind and subject per cooldown).",
            labels=["kind"],
        )
        sent = CounterMetricFamily("replyguy_alerts_sent", "Alerts delivered.", labels=["kind"])
        suppressed = CounterMetricFamily(
            "replyguy_alerts_suppressed",
            "Repeats held back by the cooldown (counted in the next alert).",
            labels=["kind"],
        )
        undelivered = GaugeMetricFamily(
            "replyguy_alerts_undelivered",
            "Alerts waiting to be sent, being sent, or given up on.",
            labels=["kind", "status"],
        )
        rows = (
            AlertEvent.objects.values_list("kind", "status")
            .annotate(n=Count("id"), repeats=Sum("repeats"))
            .order_by()
        )
        totals: dict[str, list[int]] = {}
        for kind, status, n, repeats in rows:
            total = totals.setdefault(kind, [0, 0, 0])
            total[0] += n
            total[2] += repeats or 0
            if status == AlertStatus.SENT:
                total[1] += n
            else:
                undelivered.add_metric([kind, status], n)
        for kind, (n, delivered, repeats) in sorted(totals.items()):
            raised.add_metric([kind], n)
            sent.add_metric([kind], delivered)
            suppressed.add_metric([kind], repeats)
        return [raised, sent, suppressed, undelivered]
