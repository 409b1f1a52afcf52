from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from timestamps import keys
from timestamps.models import SigningKey

ROTATABLE = [p.value for p in SigningKey.Purpose]


class Command(BaseCommand):
    help = "Retire the current key of a purpose and make a new one current; public parts stay published."

    def add_arguments(self, parser: CommandParser) -> None:
        # No `choices` here: argparse rejects an empty list against them.
        parser.add_argument("purposes", nargs="*", help=f"any of {', '.join(ROTATABLE)}; default: tsa, log and verdict")
        parser.add_argument("--from-file", type=Path, help="import this PEM private key instead of generating one")
        parser.add_argument("--init", action="store_true", help="only create keys that do not exist yet")

    def handle(self, *args: Any, **options: Any) -> None:
        purposes = options["purposes"] or ["tsa", "log", "verdict"]
        unknown = sorted(set(purposes) - set(ROTATABLE))
        if unknown:
            raise CommandError(f"unknown purpose {', '.join(unknown)}: choose from {', '.join(ROTATABLE)}")
        if options["from_file"] and len(purposes) != 1:
            raise CommandError("--from-file needs exactly one purpose")
        for purpose in purposes:
            try:
                if options["init"]:
                    record = keys.key_current(purpose).record
                    self.stdout.write(f"{purpose}: current key {record.kid[:16]}")
                    continue
                record = keys.key_rotate(purpose=purpose, private_key_file=options["from_file"])
            except keys.KeyConfigurationError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(
                self.style.SUCCESS(f"{purpose}: new current key {record.kid[:16]}; the previous one is retired")
            )
