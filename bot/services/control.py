"""The operator's switches that concern no single post: the publishing pause and the
target accounts. Each change leaves an ``OperatorAction`` audit row."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from bot.models import Channel, OperatorAction, PipelineControl, TargetAccount

__all__ = ["ControlError", "set_publishing_paused", "target_add", "target_remove"]


class ControlError(Exception):
    """The change cannot be made; the message says why, for the operator."""


def set_publishing_paused(paused: bool, *, actor: str, channel: Channel, reason: str = "") -> bool:
    """Pause or resume publishing at once in every worker; False if it already was so."""
    with transaction.atomic():
        control, _ = PipelineControl.objects.select_for_update().get_or_create(pk=1)
        if control.publishing_paused == paused:
            return False
        control.publishing_paused = paused
        control.paused_reason = reason[:200] if paused else ""
        control.save(update_fields=["publishing_paused", "paused_reason", "updated_at"])
        OperatorAction.objects.create(
            action=OperatorAction.Action.PAUSE if paused else OperatorAction.Action.RESUME,
            actor=actor,
            channel=channel,
            detail=reason[:300],
        )
    return True


def target_add(username: str, *, actor: str, channel: Channel) -> TargetAccount:
    target = TargetAccount(username=username)
    target.clean()
    try:
        target.full_clean()
    except ValidationError as exc:
        raise ControlError("; ".join(exc.messages)) from exc
    with transaction.atomic():
        target.save()
        OperatorAction.objects.create(
            action=OperatorAction.Action.ADD_TARGET,
            actor=actor,
            channel=channel,
            detail=f"@{target.username}",
        )
    return target


def target_remove(username: str, *, actor: str, channel: Channel) -> None:
    name = username.strip().lstrip("@").lower()
    with transaction.atomic():
        deleted, _ = TargetAccount.objects.filter(username=name).delete()
        if not deleted:
            raise ControlError(f"@{name} is not a target account.")
        OperatorAction.objects.create(
            action=OperatorAction.Action.REMOVE_TARGET,
            actor=actor,
            channel=channel,
            detail=f"@{name}",
        )
