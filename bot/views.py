"""The Telegram webhook: Telegram POSTs each update here when a webhook is set.

It answers at once: the update is kept (a redelivery is recognised by its
``update_id``) and handled by a task, so a slow Telegram or database never makes
Telegram wait, time out and send it again.
"""

from __future__ import annotations

import hmac
import json
import logging

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from bot.telegram.updates import receive

security = logging.getLogger("replyguy.security")
log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)


@csrf_exempt
@require_POST
def telegram_webhook(request: HttpRequest) -> HttpResponse:
    expected = settings.TELEGRAM_WEBHOOK_SECRET
    given = request.headers.get(SECRET_HEADER, "")
    if not expected:
        security.warning("security: webhook call refused: TELEGRAM_WEBHOOK_SECRET is not set")
        return HttpResponse("the webhook is off: TELEGRAM_WEBHOOK_SECRET is not set", status=403)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        security.warning(
            "security: webhook call refused from %s: %s secret",
            request.META.get("REMOTE_ADDR", "?"),
            "a wrong" if given else "no",
        )
        return HttpResponse("forbidden", status=403)
    try:
        payload = json.loads(request.body)
    except ValueError:
        return HttpResponse("not JSON", status=400)
    if receive(payload):
        transaction.on_commit(_handle_soon)
    return JsonResponse({"ok": True})


def _handle_soon() -> None:
    from django_q.tasks import async_task

    try:
        async_task("bot.tasks.handle_telegram_updates", task_name="telegram: handle update")
    except Exception as exc:  # the minute sweep handles it anyway
        log.warning("telegram: could not queue the update's handling (%s); the sweep will", exc)
