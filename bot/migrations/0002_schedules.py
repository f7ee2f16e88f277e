"""Create every pipeline stage's schedule, so `migrate` alone leaves a working system."""

from django.db import migrations

# name -> (task, every N minutes)
SCHEDULES = {
    "pipeline: discover": ("bot.tasks.discover", 2),
    "pipeline: draft": ("bot.tasks.draft", 1),
    "pipeline: schedule": ("bot.tasks.schedule", 1),
    "pipeline: publish": ("bot.tasks.publish", 1),
    "pipeline: reconcile": ("bot.tasks.reconcile", 2),
    "pipeline: retry dead letters": ("bot.tasks.retry_dead_letters", 5),
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
    dependencies = [
        ("bot", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_schedules, remove_schedules)]
