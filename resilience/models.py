from __future__ import annotations

from django.db import models


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


class AlertEvent(models.Model):
    """Something the owner must hear about. Recorded first, delivered by the notifier."""

    kind = models.CharField(max_length=64)
    subject = models.CharField(max_length=200)
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "resilience_alert"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["delivered_at", "created_at"])]

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}"
