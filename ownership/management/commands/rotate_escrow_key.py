from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ownership import escrow, services


class Command(BaseCommand):
    help = "Put a new escrow key in front and re-seal all escrowed evidence with it (old keys still decrypt)."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            count = services.escrow_rotate()
        except escrow.EscrowError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"re-sealed {count} evidence sets under the new escrow key"))
