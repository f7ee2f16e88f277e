"""Schedules for the Telegram side: the owner's outbox, and a sweep of kept updates."""

from django.db import migrations

SCHEDULES = {
    "telegram: notify the owner": ("bot.tasks.notify", 1),
    "telegram: handle kept updates": ("bot.tasks.handle_telegram_updates", 1),
}


def create_schedules(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    for name, (func, minutes) in SCHEDULES.items():
        Schedule.objects.update_or_create(
            name=name,
            defaults={"func": func, "schedule_type": "I", "minutes": minutes, "repeats": -1},
        )


def remove_schedules(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name__in=SCHEDULES).delete()


class Migration(migrations.Migration):
    dependencies = [("bot", "0009_telegram")]

    operations = [migrations.RunPython(create_schedules, remove_schedules)]
