from django.apps import AppConfig


class TimestampsConfig(AppConfig):
    name = "timestamps"
    verbose_name = "Timestamps and transparency log"
