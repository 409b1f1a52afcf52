"""Regressions for weaknesses found by attacking a running instance as an ordinary user."""
