"""Circuit breakers in the admin: every configured breaker with its state and controls.

The page lists breakers from the registry rather than table rows, because state may
live in Redis or process memory as well as the database. Actions call the breaker's
own controls; nothing here changes state by itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils import timezone

from resilience.alerts import alerts_redeliver
from resilience.breaker import CircuitBreaker
from resilience.models import AlertEvent, AlertStatus, BreakerRecord
from resilience.registry import all_breakers, get_breaker

__all__ = ["ACTIONS", "AlertEventAdmin", "BreakerAdmin", "breaker_in_words"]

ACTIONS = {
    "reset": ("Reset", CircuitBreaker.reset),
    "force_open": ("Force open", CircuitBreaker.force_open),
    "force_closed": ("Force closed", CircuitBreaker.force_closed),
    "disable": ("Disable", CircuitBreaker.disable),
}
# Actions that take away traffic or the protection: asked to confirm, with what they do.
CONFIRM = {
    "force_open": "Every call to {name} is refused at once, by every worker, until someone "
    "presses Reset. Nothing that needs it (publishing, drafting, alerts) gets through.",
    "disable": "The breaker stops protecting {name}: every call goes through even while the "
    "service is failing, and failures are no longer counted, until someone presses Reset.",
}
STATES = {
    "closed": "Closed: calls go through.",
    "open": "Open: calls are refused until {open_until}; then a few trial calls decide.",
    "half_open": "Half-open: a few trial calls decide whether it closes again.",
    "forced_open": "Forced open by an operator: every call is refused until Reset.",
    "forced_closed": "Forced closed by an operator: every call goes through, whatever "
    "happens, until Reset.",
    "disabled": "Disabled by an operator: no protection and nothing counted until Reset.",
}


def breaker_in_words(status: dict[str, Any]) -> dict[str, Any]:
    """A breaker's ``get_status()`` with its state in words and since when (if known)."""
    opened = _moment(status.get("opened_at"))
    until = _moment(status.get("open_until"))
    since = {"open": opened, "half_open": until}.get(status["state"])
    words = STATES.get(status["state"], status["state"]).format(
        open_until=_clock(until) if until else "its timeout"
    )
    last_failure = _moment(status.get("last_failure_at"))
    return {**status, "words": words, "since": since, "last_failure": last_failure}


def _moment(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _clock(when: datetime) -> str:
    return timezone.localtime(when).strftime("%H:%M:%S")


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
            "breakers": [breaker_in_words(breaker.get_status()) for breaker in all_breakers()],
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
                if action in CONFIRM and request.POST.get("confirmed") != "yes":
                    return self._confirm(request, action, name)
                control(breaker)
                words = breaker_in_words(breaker.get_status())["words"]
                messages.success(request, f"{label}: {name} is now {breaker.state}. {words}")
        return HttpResponseRedirect(request.path)

    def _confirm(self, request: HttpRequest, action: str, name: str) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": f"{ACTIONS[action][0]} {name}?",
            "opts": self.model._meta,
            "action": action,
            "label": ACTIONS[action][0],
            "breaker": breaker_in_words(get_breaker(name).get_status()),
            "consequence": CONFIRM[action].format(name=name),
        }
        return TemplateResponse(request, "admin/resilience/breaker_confirm.html", context)


class RepeatsFilter(admin.SimpleListFilter):
    title = "repeats held back"
    parameter_name = "repeats"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Some held back (repeats)"), ("no", "None held back")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[AlertEvent]) -> Any:
        if self.value() == "yes":
            return queryset.filter(Q(repeats__gt=0) | Q(suppressed_before__gt=0))
        if self.value() == "no":
            return queryset.filter(repeats=0, suppressed_before=0)
        return queryset


class SeenFilter(admin.SimpleListFilter):
    title = "seen"
    parameter_name = "seen"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", "Not seen yet"), ("yes", "Seen")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[AlertEvent]) -> Any:
        if self.value() in ("yes", "no"):
            return queryset.filter(seen_at__isnull=self.value() == "no")
        return queryset


@admin.register(AlertEvent)
class AlertEventAdmin(admin.ModelAdmin):
    """What the owner was told, newest first: read-only, the record of what went wrong.

    Actions: mark as seen (the dashboard counts the unseen), and send failed alerts
    again (``alerts_redeliver``)."""

    list_display = ["created", "kind", "subject", "short_message", "delivery", "held_back", "seen"]
    list_display_links = ["created", "kind"]
    list_filter = ["status", RepeatsFilter, SeenFilter, "kind", "created_at"]
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
        "seen_at",
    ]
    actions = ["mark_seen", "deliver_again"]

    @admin.display(description="message")
    def short_message(self, obj: AlertEvent) -> str:
        return obj.message if len(obj.message) <= 140 else obj.message[:139] + "…"

    @admin.display(description="raised", ordering="created_at")
    def created(self, obj: AlertEvent) -> str:
        return timezone.localtime(obj.created_at).strftime("%Y-%m-%d %H:%M")

    @admin.display(description="repeats held back")
    def held_back(self, obj: AlertEvent) -> str:
        parts = [f"{obj.repeats} since"] if obj.repeats else []
        parts += [f"{obj.suppressed_before} before"] if obj.suppressed_before else []
        return ", ".join(parts) or "-"

    @admin.display(description="delivery", ordering="status")
    def delivery(self, obj: AlertEvent) -> str:
        if obj.status == AlertStatus.FAILED:
            return f"Not delivered: {obj.last_error}" if obj.last_error else "Not delivered"
        return obj.get_status_display()

    @admin.display(description="seen", boolean=True, ordering="seen_at")
    def seen(self, obj: AlertEvent) -> bool:
        return obj.seen_at is not None

    @admin.action(description="Mark as seen", permissions=["deliver"])
    def mark_seen(self, request: HttpRequest, queryset: QuerySet[AlertEvent]) -> None:
        # A read marker for the owner, not a delivery state: nothing else depends on it.
        count = queryset.filter(seen_at__isnull=True).update(seen_at=timezone.now())
        messages.success(request, f"{count} alert(s) marked as seen.")

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
