"""Circuit breakers in the admin: every configured breaker with its state and controls.

The page lists breakers from the registry rather than table rows, because state may
live in Redis or process memory as well as the database. Actions call the breaker's
own controls; nothing here changes state by itself.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse

from resilience.alerts import alerts_redeliver
from resilience.breaker import CircuitBreaker
from resilience.models import AlertEvent, BreakerRecord
from resilience.registry import all_breakers, get_breaker

ACTIONS = {
    "reset": ("Reset", CircuitBreaker.reset),
    "force_open": ("Force open", CircuitBreaker.force_open),
    "force_closed": ("Force closed", CircuitBreaker.force_closed),
    "disable": ("Disable", CircuitBreaker.disable),
}


@admin.register(BreakerRecord)
class BreakerAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            return self._act(request)
        context = {
            **self.admin_site.each_context(request),
            "title": "Circuit breakers",
            "opts": self.model._meta,
            "breakers": [breaker.get_status() for breaker in all_breakers()],
            "actions": [(key, label) for key, (label, _) in ACTIONS.items()],
            "can_change": self.has_change_permission(request),
        }
        return TemplateResponse(request, "admin/resilience/breakers.html", context)

    def _act(self, request: HttpRequest) -> HttpResponse:
        if not self.has_change_permission(request):
            raise PermissionDenied
        action, name = request.POST.get("action", ""), request.POST.get("breaker", "")
        if action not in ACTIONS:
            messages.error(request, f"Unknown action {action!r}.")
        else:
            try:
                breaker = get_breaker(name)
            except KeyError as exc:
                messages.error(request, str(exc.args[0]))
            else:
                label, control = ACTIONS[action]
                control(breaker)
                messages.success(request, f"{label}: {name} is now {breaker.state}.")
        return HttpResponseRedirect(request.path)


@admin.register(AlertEvent)
class AlertEventAdmin(admin.ModelAdmin):
    """What the owner was told, newest first: read-only, the record of what went wrong.

    The one action sends failed alerts again (``alerts_redeliver``)."""

    list_display = [
        "created_at",
        "kind",
        "subject",
        "status",
        "repeats",
        "suppressed_before",
        "delivered_at",
    ]
    list_filter = ["status", "kind"]
    search_fields = ["subject", "message"]
    readonly_fields = [
        "kind",
        "subject",
        "message",
        "details",
        "created_at",
        "repeats",
        "suppressed_before",
        "suppressed_since",
        "status",
        "queued_at",
        "attempts",
        "next_attempt_at",
        "last_error",
        "delivered_at",
        "delivered_ref",
    ]
    actions = ["deliver_again"]

    @admin.action(description="Deliver again (failed alerts only)", permissions=["deliver"])
    def deliver_again(self, request: HttpRequest, queryset: QuerySet[AlertEvent]) -> None:
        count = alerts_redeliver(queryset)
        messages.success(request, f"{count} failed alert(s) queued to be sent again.")

    def has_deliver_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("resilience.change_alertevent")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
