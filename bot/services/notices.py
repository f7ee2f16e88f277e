"""Telling the owner when a service refuses our setup, and catching refusals nobody listed."""

from __future__ import annotations

import logging
import time

from bot.clients.errors import ClientError, ErrorKind, Reason
from resilience import ServiceError, get_breaker
from resilience.alerts import raise_alert
from resilience.errors import CONFIGURATION_HOLD
from resilience.streaks import error_signature, streak_broken, streak_extended

log = logging.getLogger(__name__)

# The breaker guarding each client's service.
BREAKERS = {"x": "twitter_api", "llm": "ai_service", "telegram": "telegram"}
SERVICE_NAMES = {"x": "X", "llm": "the model server", "telegram": "Telegram"}


def notice_service_error(exc: ServiceError) -> None:
    """A refusal of our setup (bad key, read-only app, unknown model) is the owner's to fix."""
    if exc.reason != Reason.CONFIGURATION:
        return
    name = SERVICE_NAMES.get(exc.service, exc.service)
    raise_alert(
        kind="configuration_refused",
        # A different refusal of the same service is a new alert, not a repeat.
        subject=f"{exc.service} {error_signature(exc.status, str(exc.args[0]))}",
        message=f"{name} refuses Reply Guy's configuration; nothing is lost, items wait: {exc}",
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
    converted = ClientError(
        f"the same error on several different items in a row, so probably our setup: {exc}",
        kind=ErrorKind.TRANSIENT,
        service=exc.service,
        status=exc.status,
        retry_at=retry_at,
        reason=Reason.CONFIGURATION,
    )
    log.warning("%s: %s", stage, converted)
    return converted


def item_succeeded(stage: str, service: str) -> None:
    streak_broken(f"{stage}:{service}")
