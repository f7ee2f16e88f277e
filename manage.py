#!/usr/bin/env python
"""Django's command-line utility for Reply Guy.

Reads ``.env`` and the local settings ``make run`` wrote (``replyguy.localenv``), so a
command run by hand sees the same service; a setting that cannot be used stops it with
one line naming the variable.
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "replyguy.settings")
    from django.core.exceptions import ImproperlyConfigured

    from replyguy.localenv import EnvFileError, load_env_files

    try:
        ignored = load_env_files()
        if ignored:
            print(f"Reply Guy: {ignored}", file=sys.stderr)
        from django.conf import settings

        settings.INSTALLED_APPS  # noqa: B018 (reads the settings: a bad value stops here)
    except (EnvFileError, ImproperlyConfigured) as error:
        sys.exit(f"Reply Guy cannot start: {error}")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
