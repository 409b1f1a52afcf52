"""Arbiter, owner and public pages of disputes and verdicts."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
