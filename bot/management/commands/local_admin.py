"""Make sure a local install has an admin login, and say how to use it."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Local mode only: create an 'admin' superuser with a random password if none exists."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("local_admin is for local mode (DEBUG=true); use createsuperuser")
        users = get_user_model().objects
        if users.filter(is_superuser=True).exists():
            names = ", ".join(users.filter(is_superuser=True).values_list("username", flat=True))
            self.stdout.write(
                f"Admin login: {names} (forgot the password? "
                f"python manage.py changepassword {names.split(', ')[0]})"
            )
            return
        password = secrets.token_urlsafe(12)
        users.create_superuser("admin", email="", password=password)
        self.stdout.write(
            self.style.SUCCESS(f"Created admin login: user 'admin', password '{password}'")
            + " (shown once; change it with: python manage.py changepassword admin)"
        )
