"""Probes and metrics for the platform: liveness, readiness, every check, the status
document and Prometheus. Thin: the checks live in ``resilience.health`` and
``bot.health``, the collectors in ``resilience.metrics`` and ``bot.metrics``.

No view here calls X, the model or Telegram, and none raises an alert.
"""

from __future__ import annotations

import hmac

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bot.health import EVERY, READY, status_document
from bot.metrics import Pipeline, XUsageToday
from resilience.health import HealthView, log_results, quiet, run_checks
from resilience.metrics import Alerts, Breakers, StoredState

__all__ = ["every", "live", "metrics", "ready", "status"]


@require_GET
def live(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. No database, cache or check: a probe that restarts
    the process must not do so because something else is down."""
    response = JsonResponse({"status": "alive"})
    add_never_cache_headers(response)
    return response


ready = HealthView.as_view(checks=READY)
every = HealthView.as_view(checks=EVERY)


@require_GET
async def status(request: HttpRequest) -> HttpResponse:
    """The seed's per-service document; 503 when ``overall`` is ``error``."""
    results = await run_checks(EVERY)
    log_results(request.path, results)
    document = await sync_to_async(status_document)(results)
    response = JsonResponse(document, status=503 if document["overall"] == "error" else 200)
    add_never_cache_headers(response)
    return quiet(response)


def _registry() -> CollectorRegistry:
    # No auto-describe: registering must not run a collector (that would query at import).
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoredState([Breakers(), Alerts(), Pipeline(), XUsageToday()]))
    return registry


_REGISTRY = _registry()


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format, computed from shared state at scrape time.

    With ``METRICS_TOKEN`` set it wants ``Authorization: Bearer <token>`` (compared in
    constant time) and answers 401 without it.
    """
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            response = HttpResponse("401 Unauthorized\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    response = HttpResponse(generate_latest(_REGISTRY), content_type=CONTENT_TYPE_LATEST)
    add_never_cache_headers(response)
    return response
