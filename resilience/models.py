from __future__ import annotations

from django.db import models
from django.utils import timezone


class BreakerRecord(models.Model):
    """Shared state of one circuit breaker (the database store).

    ``data`` holds ``resilience.state.BreakerState`` as JSON, the same document the
    Redis store keeps, so both stores apply the same transitions.
    """

    name = models.CharField(max_length=64, unique=True)
    data = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "resilience_breaker"
        verbose_name = "circuit breaker"
        verbose_name_plural = "circuit breakers"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AlertStatus(models.TextChoices):
    PENDING = "pending", "Waiting to be sent"
    SENDING = "sending", "Being sent"
    SENT = "sent", "Sent"
    FAILED = "failed", "Not delivered"


class AlertEvent(models.Model):
    """Something the owner must hear about: the outbox row, written in the transaction
    that found the problem and delivered afterwards (``resilience.alerts``)."""

    kind = models.CharField(max_length=64)
    subject = models.CharField(max_length=200)
    message = models.TextField()
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Repeats of this alert within its cooldown window, counted instead of recorded.
    repeats = models.PositiveIntegerField("repeats held back", default=0)
    # The previous window's repeats, told in this alert's text, and when that window began.
    suppressed_before = models.PositiveIntegerField("held back before it", default=0)
    suppressed_since = models.DateTimeField(null=True, blank=True)

    status = models.CharField(
        max_length=16, choices=AlertStatus.choices, default=AlertStatus.PENDING
    )
    # When delivery was last asked for (created, or sent again from the admin): an alert
    # older than a day is not sent any more.
    queued_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Pending: not before then. Sending: the deliverer's lease runs out then.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    delivered_ref = models.CharField(max_length=64, blank=True)  # the notifier's message id
    # When staff marked it seen in the admin: the dashboard shows the unseen first.
    seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "resilience_alert"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"], name="resilience_alert_due")]

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}"


class AlertCooldown(models.Model):
    """One row per (kind, subject): when its current window began and its alert.

    The row is what makes "at most one alert per window" hold across processes: the one
    conditional update that moves ``window_started_at`` decides who records the alert.
    """

    kind = models.CharField(max_length=64)
    subject = models.CharField(max_length=200)
    window_started_at = models.DateTimeField()
    event = models.ForeignKey(
        AlertEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        db_table = "resilience_alert_cooldown"
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "subject"], name="resilience_alert_cooldown_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}"


class CallOutcome(models.TextChoices):
    # The service answered: a success, or an item-level refusal the breaker does not count.
    OK = "ok", "Answered"
    # The breaker refused the call: it never reached the service.
    REJECTED = "rejected", "Refused by the open breaker"


class CallCount(models.Model):
    """Calls through a shared circuit breaker, by outcome, added up across processes.

    Each process adds what it counted at most every ``CircuitBreaker.report_every``
    seconds with one ``UPDATE ... SET calls = calls + n`` (``resilience.calls``), so any
    number of processes count into the same row and none is lost. Service failures are
    not here: the breaker's own state counts them (``total_failures``).
    """

    breaker = models.CharField(max_length=64)
    outcome = models.CharField(max_length=10, choices=CallOutcome.choices)
    calls = models.PositiveBigIntegerField(default=0)
    # For ``ok``: when the service last answered (at most a snapshot TTL early).
    last_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "resilience_call_count"
        constraints = [
            models.UniqueConstraint(fields=["breaker", "outcome"], name="resilience_call_count_key")
        ]

    def __str__(self) -> str:
        return f"{self.breaker} {self.outcome}: {self.calls}"
