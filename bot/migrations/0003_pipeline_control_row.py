from django.db import migrations


def create_row(apps, schema_editor):
    apps.get_model("bot", "PipelineControl").objects.get_or_create(pk=1)


class Migration(migrations.Migration):
    dependencies = [("bot", "0002_schedules")]

    operations = [migrations.RunPython(create_row, migrations.RunPython.noop)]
