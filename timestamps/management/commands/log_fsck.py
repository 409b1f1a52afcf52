from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from timestamps.models import LogAlarm
from timestamps.services import log_fsck


class Command(BaseCommand):
    help = (
        "Re-derive the Merkle log from its entries and check every stored node, the head, every checkpoint "
        "and every time-stamp token. Problems halt checkpoint signing until a clean run with --clear."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--clear", action="store_true", help="after a clean check, lift the halt on checkpoint signing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        halted = LogAlarm.objects.filter(id=1).exists()
        report = log_fsck(clear=options["clear"])
        if not report.clean:
            self.stderr.write(report.summary())
            raise CommandError(
                f"{len(report.problems) + report.omitted} problem(s) in the log of {report.size} entries; "
                "checkpoint signing is halted"
            )
        self.stdout.write(self.style.SUCCESS(f"log of {report.size} entries: clean"))
        if halted and options["clear"]:
            self.stdout.write("the halt on checkpoint signing is lifted")
        elif halted:
            self.stdout.write("checkpoint signing stays halted from an earlier check: rerun with --clear to lift it")
