"""The workers' heartbeat: when a django-q2 worker last ran a task, in the shared cache.

Read by whoever is not a worker (the Telegram poller, health checks) to tell the owner
when the workers fall silent.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.core.cache import cache

from resilience.alerts import AlertKind, raise_alert

__all__ = ["SILENT_AFTER", "beat", "check_workers", "last_beat"]

log = logging.getLogger(__name__)

KEY = "replyguy:worker:heartbeat"
# The notify task runs every minute: five without one means no worker is running.
SILENT_AFTER = timedelta(minutes=5)


def beat(now: float | None = None) -> None:
    try:
        cache.set(KEY, time.time() if now is None else now, timeout=None)
    except Exception as exc:  # a heartbeat never stops the work it reports on
        log.warning("could not record the worker heartbeat: %s", exc)


def last_beat() -> float | None:
    try:
        value = cache.get(KEY)
    except Exception as exc:
        log.warning("could not read the worker heartbeat: %s", exc)
        return None
    return float(value) if isinstance(value, int | float) else None


def check_workers(*, since: float, now: float | None = None) -> bool:
    """Raise ``worker_silent`` when no worker beat for ``SILENT_AFTER``; True if silent.

    ``since`` is when the caller started watching: a worker never seen is silent only
    once the caller has waited that long itself.
    """
    now = time.time() if now is None else now
    last = last_beat()
    quiet_for = now - (last if last is not None else since)
    if quiet_for < SILENT_AFTER.total_seconds():
        return False
    minutes = int(quiet_for // 60)
    raise_alert(
        kind=AlertKind.WORKER_SILENT,
        subject="django-q2 workers",
        message=(
            f"No django-q2 worker has run a task for {minutes} minutes: nothing is drafted, "
            "published or reconciled. Start one (`python manage.py qcluster`, the Procfile's "
            "worker) or look at its log."
        ),
        details={"last_heartbeat": last, "silent_minutes": minutes},
    )
    return True
