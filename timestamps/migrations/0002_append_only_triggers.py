from django.db import migrations

from timestamps import dbtriggers


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    dbtriggers.install(schema_editor.connection)


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    dbtriggers.uninstall(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [("timestamps", "0001_initial")]
    operations = [migrations.RunPython(install, uninstall)]
