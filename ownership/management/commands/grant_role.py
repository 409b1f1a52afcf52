from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ownership.roles import Role, role_grant


class Command(BaseCommand):
    help = "Give an existing user a role: owner, arbiter or staff (an operator)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("role", choices=[role.value for role in Role])

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = get_user_model().objects.get(username=options["username"])
        except get_user_model().DoesNotExist:
            raise CommandError(f"there is no user named {options['username']!r}") from None
        role_grant(user=user, role=Role(options["role"]))
        self.stdout.write(self.style.SUCCESS(f"{user.get_username()} now holds the {options['role']} role"))
