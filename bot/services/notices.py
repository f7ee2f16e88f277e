"""Telling the owner when a service refuses our setup, and catching refusals nobody listed."""

from __future__ import annotations

import logging
import time

from bot.clients.errors import ClientError, ErrorKind, Reason
from resilience import ServiceError, get_breaker
from resilience.alerts import AlertKind, raise_alert
from resilience.errors import CONFIGURATION_HOLD
from resilience.streaks import error_signature, streak_broken, streak_extended

log = logging.getLogger(__name__)

# The breaker guarding each client's service.
BREAKERS = {"x": "twitter_api", "llm": "ai_service", "telegram": "telegram"}
SERVICE_NAMES = {"x": "X", "llm": "the model server", "telegram": "Telegram"}


class RepeatedFailure(ClientError):
    """The same refusal on several items in a row, taken as our setup's (already told)."""


def notice_service_error(exc: ServiceError) -> None:
    """Tell the owner what is theirs to know: a refusal of our setup (bad key, read-only
    app, unknown model) to fix, and a rate limit that makes calls wait."""
    name = SERVICE_NAMES.get(exc.service, exc.service)
    signature = error_signature(exc.status, str(exc.args[0]))
    if exc.reason == Reason.RATE_LIMITED:
        until = time.strftime("%H:%M UTC", time.gmtime(exc.retry_at)) if exc.retry_at else "later"
        raise_alert(
            kind=AlertKind.RATE_LIMIT_EXCEEDED,
            subject=f"{exc.service} {signature}",
            message=f"{name} rate-limited Reply Guy; calls to it wait until {until}: {exc}",
            details={"service": exc.service, "status": exc.status, "retry_at": until},
        )
    if exc.reason != Reason.CONFIGURATION or isinstance(exc, RepeatedFailure):
        return
    raise_alert(
        kind=AlertKind.CONFIGURATION_REFUSED,
        # A different refusal of the same service is a new alert, not a repeat.
        subject=f"{exc.service} {signature}",
        message=f"{name} refuses Reply Guy's configuration; nothing is lost, items wait: {exc}",
        details={"service": exc.service, "status": exc.status, "error": str(exc.args[0])},
    )


def as_configuration_error(stage: str, item: str, exc: ClientError) -> ClientError | None:
    """The same permanent error on several different items in a row is a setup problem.

    Returns the error to treat the item with instead (transient, configuration), having
    held the service's breaker open; None when it is the item's own. The caller's wait
    path tells the owner (``notice_service_error``).
    """
    if exc.kind is not ErrorKind.PERMANENT:
        return None
    scope = f"{stage}:{exc.service}"
    if not streak_extended(scope, error_signature(exc.status, str(exc.args[0])), item):
        return None
    retry_at = time.time() + CONFIGURATION_HOLD
    breaker = BREAKERS.get(exc.service)
    if breaker is not None:
        get_breaker(breaker).open_until(retry_at)
    converted = RepeatedFailure(
        f"the same error on several different items in a row, so probably our setup: {exc}",
        kind=ErrorKind.TRANSIENT,
        service=exc.service,
        status=exc.status,
        retry_at=retry_at,
        reason=Reason.CONFIGURATION,
    )
    log.warning("%s: %s", stage, converted)
    name = SERVICE_NAMES.get(exc.service, exc.service)
    raise_alert(
        kind=AlertKind.MULTIPLE_FAILURES,
        subject=scope,
        message=(
            f"{name} refused several different replies in a row at {stage} with the same "
            f"error, so it is probably Reply Guy's setup (a proxy, a policy, a plan), not "
            f"theirs. Calls wait {CONFIGURATION_HOLD // 60} minutes and nothing is spent: {exc}"
        ),
        details={"stage": stage, "service": exc.service, "status": exc.status},
    )
    return converted


def item_succeeded(stage: str, service: str) -> None:
    streak_broken(f"{stage}:{service}")
