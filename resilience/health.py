"""Health checks that read stored state, and the one runner behind every probe.

Each check is one small django-health-check (4.8) class that raises a typed exception:
``ServiceWarning`` when Reply Guy works but is degraded (an outside service down or
failing, work piling up: it waits, nothing is lost), ``ServiceUnavailable`` when it
cannot work (its database or cache is gone). None of them calls X, the model or
Telegram: they read the breakers' shared state and the call counts
(``resilience.calls``), so a probe answers at once while those services hang.

Checks run on the request's own thread (``sync_to_async``, thread-sensitive), so they
use its database connection instead of opening one per check in a thread pool. A check
that fails logs one line (no traceback) and raises no alert: the pipeline alerts about
the same problems where they happen.

``HealthView`` is django-health-check's view with our status codes: 200 when every check
passed or only warned (degraded), 503 when one failed. ``run_checks`` is the runner
behind it and behind ``/health/status/``; ``manage.py health_check <url name>
--no-http`` runs the same classes through django-health-check's own command.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import timeit
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from health_check import checks
from health_check.base import HealthCheck, HealthCheckResult
from health_check.exceptions import HealthCheckException, ServiceUnavailable, ServiceWarning
from health_check.views import HealthCheckView

from resilience.calls import Calls, calls_by_breaker
from resilience.registry import get_breaker

__all__ = [
    "Breaker",
    "Cache",
    "Check",
    "Database",
    "HealthView",
    "Severity",
    "breaker_summary",
    "log_results",
    "quiet",
    "run_checks",
    "severity",
]

log = logging.getLogger(__name__)

# How long a check may take before it counts as failed: stored state answers in
# milliseconds, so a slow one means the store itself is in trouble.
CHECK_TIMEOUT = timedelta(seconds=3)
# Breaker states in which the service's calls are refused.
REFUSING = ("open", "forced_open")


class Severity:
    OK = "healthy"
    DEGRADED = "degraded"
    ERROR = "error"


def severity(error: HealthCheckException | None) -> str:
    if error is None:
        return Severity.OK
    if isinstance(error, ServiceWarning):
        return Severity.DEGRADED
    return Severity.ERROR


def worst(levels: Iterable[str]) -> str:
    order = [Severity.OK, Severity.DEGRADED, Severity.ERROR]
    return max(levels, key=order.index, default=Severity.OK)


@dataclasses.dataclass
class Check(HealthCheck):
    """Our checks' base: ``probe`` runs on the request's thread; failures log one line."""

    timeout = CHECK_TIMEOUT

    async def run(self) -> None:
        await sync_to_async(self.probe)()

    def probe(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define probe()")

    async def get_result(self, executor: Executor | None = None) -> HealthCheckResult:
        # django-health-check's own get_result logs each failure with its traceback; a
        # probe that fails every ten seconds for an hour must not fill the log, so the
        # probe logs one line for all its checks (``log_results``).
        start = timeit.default_timer()
        error: HealthCheckException | None
        try:
            await asyncio.wait_for(self.run(), self.timeout.total_seconds())
        except HealthCheckException as exc:
            error = exc
        except TimeoutError:
            error = ServiceUnavailable(f"no answer within {self.timeout.total_seconds():g} s")
        except Exception as exc:
            # Only the type: an unexpected message may carry anything. The traceback
            # is there for whoever turns DEBUG logging on.
            error = HealthCheckException(f"unexpected {type(exc).__name__}")
            log.debug("health check %r raised", self, exc_info=True)
        else:
            error = None
        return HealthCheckResult(check=self, error=error, time_taken=timeit.default_timer() - start)


@dataclasses.dataclass
class Database(Check, checks.Database):
    """``SELECT 1`` on the default database (django-health-check's query)."""

    def probe(self) -> None:
        checks.Database.run(self)


@dataclasses.dataclass
class Cache(Check, checks.Cache):
    """A write and a read of a fresh key in the shared cache (django-health-check's)."""

    timeout: timedelta = dataclasses.field(default=CHECK_TIMEOUT, repr=False)

    async def run(self) -> None:
        try:
            await checks.Cache.run(self)
        except DatabaseError as exc:
            # The database cache's table: django-health-check expects Redis errors only.
            raise ServiceUnavailable("the cache's database table cannot be reached") from exc


@dataclasses.dataclass
class Breaker(Check):
    """A shared breaker's state and how long ago its service last answered.

    Warns (degraded) when calls are refused (open, forced open), being tried again (half
    open), unprotected by an operator's choice (forced closed, disabled), failing without
    an answer for ``failing_after``, or when the breaker's store cannot be read. A
    service that is merely idle is fine however long ago it last answered.
    """

    name: str
    failing_after: timedelta = dataclasses.field(default=timedelta(minutes=10), repr=False)

    def probe(self) -> None:
        summary = breaker_summary(self.name)
        breaker = summary["circuit_breaker"]
        state = breaker["state"]
        if not breaker["store_ok"]:
            raise ServiceWarning("the breaker's shared store cannot be read")
        if state in REFUSING:
            wait = breaker["retry_after"]
            when = f"trying again in {wait:g} s" if wait is not None else "until an operator acts"
            raise ServiceWarning(f"{state}: calls refused, {when}")
        if state == "half_open":
            raise ServiceWarning("half open: trial calls decide whether it closes")
        if state in ("forced_closed", "disabled"):
            raise ServiceWarning(f"{state} by an operator: failures do not stop calls")
        age = summary["last_success_age_seconds"]
        if breaker["failures"] and (age is None or age > self.failing_after.total_seconds()):
            since = "never answered" if age is None else f"no answer for {age / 60:.0f} min"
            n = breaker["failures"]
            raise ServiceWarning(f"{n} failure{'' if n == 1 else 's'} in a row, {since}")


def breaker_summary(
    name: str, *, calls: dict[str, Calls] | None = None, now: float | None = None
) -> dict[str, Any]:
    """A breaker as health output shows it: never its last error (which may quote a
    credential a server echoed) nor its store's error text."""
    now = time.time() if now is None else now
    status = get_breaker(name).get_status()
    if calls is None:
        calls = calls_by_breaker() if status["shared"] else {}
    counted = calls.get(name, Calls())
    last_ok = counted.last_ok_at
    return {
        "circuit_breaker": {
            "state": status["state"],
            "failures": status["failures"],
            "failure_threshold": status["failure_threshold"],
            "opened_at": status["opened_at"],
            "retry_after": status["retry_after"],
            "last_failure_at": status["last_failure_at"],
            "total_failures": status["total_failures"],
            "opened_count": status["opened_count"],
            "store": status["store"],
            "shared": status["shared"],
            "store_ok": status["store_error"] is None,
        },
        "last_success_at": _iso(last_ok),
        "last_success_age_seconds": None if last_ok is None else round(now - last_ok.timestamp()),
    }


def log_results(probe: str, results: Sequence[HealthCheckResult]) -> None:
    """One line for a probe whose checks did not all pass: WARNING when one failed,
    INFO when they only warned. Never an alert: the pipeline alerts where it happens."""
    bad = [r for r in results if r.error is not None]
    if not bad:
        return
    failed = any(severity(r.error) == Severity.ERROR for r in bad)
    log.log(
        logging.WARNING if failed else logging.INFO,
        "health %s %s: %s",
        probe,
        Severity.ERROR if failed else Severity.DEGRADED,
        "; ".join(f"{r.check!r} {r.error}" for r in bad),
    )


def quiet(response: HttpResponse) -> HttpResponse:
    """Keep Django from logging a probe's 503 at ERROR, as it does for every 5xx: the
    probe has logged its own line, and an ERROR line is what error trackers alert on."""
    response._has_been_logged = True  # type: ignore[attr-defined]  # django.utils.log
    return response


async def run_checks(specs: Sequence[Any]) -> list[HealthCheckResult]:
    """Every check at once (each bounded by its own timeout); ``specs`` as the view's
    ``checks`` (classes, or (class, options)), instantiated by the view's own code."""
    view = HealthCheckView(checks=specs)
    return list(await asyncio.gather(*(check.get_result() for check in view.get_checks())))


class HealthView(HealthCheckView):
    """django-health-check's view (``?format=json``, text, HTML) with probe status codes:
    a warning is degraded, not down, so only a failed check answers 503."""

    async def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = await super().get(request, *args, **kwargs)
        log_results(request.path, self.results)
        if response.status_code == 500:  # django-health-check's "some check raised"
            failed = any(severity(r.error) == Severity.ERROR for r in self.results)
            response.status_code = 503 if failed else 200
        return quiet(response)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="seconds")
