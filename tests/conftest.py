"""Shared fixtures: an isolated data folder, users with roles, log-table hygiene."""

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

REQUIRE_SERVICES = os.environ.get("MODELCOURT_REQUIRE_SERVICES") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip PostgreSQL-only tests on SQLite, unless services are required (CI): then they fail."""
    from django.conf import settings

    on_postgres = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
    if on_postgres or REQUIRE_SERVICES:
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL=postgres://... (CI does)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _isolated_settings() -> Iterator[None]:
    """Keys, uploads and caches of the test run stay out of ./data; static files come from the apps.

    pytest-django reads the settings before this file is imported, so they are overridden here.
    A process-local cache keeps concurrent test runs from clearing each other's throttle counters.
    """
    from django.conf import settings
    from django.test import override_settings

    with tempfile.TemporaryDirectory(prefix="modelcourt-test-") as workdir:
        overrides = override_settings(
            MODELCOURT_KEY_DIR=Path(workdir) / "keys",
            MEDIA_ROOT=Path(workdir) / "media",
            CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
            STORAGES={
                **settings.STORAGES,
                "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
            },
            WHITENOISE_USE_FINDERS=True,
        )
        overrides.enable()
        try:
            yield
        finally:
            overrides.disable()


@pytest.fixture(autouse=True)
def _fresh_throttles() -> None:
    """Throttle counters live in the cache; each test starts from zero."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _append_only_triggers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Keep the append-only triggers in place for every database test.

    Transactional tests end by emptying every table, which the triggers refuse: this fixture is
    set up after the database fixture and torn down before it, so it drops them just before the
    flush; the next database test puts them back.
    """
    used = set(request.fixturenames)
    marker = request.node.get_closest_marker("django_db")
    transactional = bool({"transactional_db", "live_server"} & used) or bool(
        marker and marker.kwargs.get("transaction")
    )
    if marker is not None:
        request.getfixturevalue("_django_db_helper")
    elif transactional:
        request.getfixturevalue("transactional_db")
    elif "db" in used:
        request.getfixturevalue("db")
    else:
        yield
        return
    from django.db import connection

    from timestamps import dbtriggers

    if not dbtriggers.installed(connection):
        dbtriggers.install(connection)
    yield
    if transactional:
        dbtriggers.uninstall(connection)


@pytest.fixture
def api_client():  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    return APIClient()


def _user(username: str, *roles: str):  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model

    from ownership.roles import Role, role_grant

    user = get_user_model().objects.create_user(username=username, password="correct horse battery")
    for role in roles:
        role_grant(user=user, role=Role(role))
    return user


@pytest.fixture
def owner(db):  # type: ignore[no-untyped-def]
    return _user("olivia", "owner")


@pytest.fixture
def arbiter(db):  # type: ignore[no-untyped-def]
    return _user("arthur", "arbiter")


@pytest.fixture
def staff(db):  # type: ignore[no-untyped-def]
    return _user("stella", "staff")


@pytest.fixture(autouse=True)
def _example_names_resolve_publicly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Endpoint URLs in tests name example.org hosts; filing resolves them, and this machine has no DNS."""
    real = socket.getaddrinfo

    def resolve(host: object, port: object, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and (host in ("example.org", "x.example") or host.endswith(".example.org")):
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("93.184.215.14", port or 0))]
        return real(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port that listens but never accepts: anything connecting to it is queued, and seen."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def nothing_connected(sock: socket.socket) -> bool:
    try:
        connection, _ = sock.accept()
    except BlockingIOError:
        return True
    connection.close()
    return False
