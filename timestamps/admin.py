from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from timestamps.models import Checkpoint, LogAlarm, LogEntry, SigningKey, TimestampToken


class ReadOnlyAdmin(admin.ModelAdmin):
    """The trust layer is changed only by its services; the admin only looks."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(SigningKey)
class SigningKeyAdmin(ReadOnlyAdmin):
    list_display = ["purpose", "kid", "algorithm", "status", "created_at", "retired_at"]
    list_filter = ["purpose", "status"]


@admin.register(LogEntry)
class LogEntryAdmin(ReadOnlyAdmin):
    list_display = ["index", "created_at"]


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ["size", "key", "created_at"]


@admin.register(TimestampToken)
class TimestampTokenAdmin(ReadOnlyAdmin):
    list_display = ["serial", "hash_algorithm", "gen_time", "key"]


@admin.register(LogAlarm)
class LogAlarmAdmin(ReadOnlyAdmin):
    """Shown so staff see why checkpoints stopped; only `manage.py log_fsck --clear` lowers it."""

    list_display = ["raised_at", "problems"]
