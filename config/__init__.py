"""Celery's Django recipe: every process that loads the settings (web, manage.py, workers) uses our Celery app."""

from workers.celery import app as celery_app

__all__ = ("celery_app",)
