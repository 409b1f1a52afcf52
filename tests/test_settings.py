"""Settings from the environment: the embedded default and production."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _settings_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL"}}
    env.update({"MODELCOURT_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings", **extra})
    return env


def _read(tmp_path: Path, expression: str, **extra: str) -> str:
    code = f"import django; django.setup(); from django.conf import settings as s; print({expression})"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_settings_env(tmp_path, **extra),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def test_no_variables_give_sqlite_and_the_filesystem_broker(tmp_path: Path) -> None:
    assert _read(tmp_path, "s.DATABASES['default']['ENGINE']") == "django.db.backends.sqlite3"
    assert _read(tmp_path, "s.CELERY_BROKER_URL") == "filesystem://"
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_urls_select_postgres_and_redis(tmp_path: Path) -> None:
    extra = {"DATABASE_URL": "postgres://u:p@db:5432/mc", "CELERY_BROKER_URL": "redis://r:6379/0"}
    assert _read(tmp_path, "s.DATABASES['default']['ENGINE']", **extra) == "django.db.backends.postgresql"
    assert _read(tmp_path, "s.CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout']", **extra) == str(6 * 3600)


def test_production_settings_pass_the_deploy_check(tmp_path: Path) -> None:
    env = _settings_env(
        tmp_path,
        MODELCOURT_SECURE="1",
        SECRET_KEY="a-long-random-production-secret-" + "x9Qz" * 12,
        ALLOWED_HOSTS="court.example.org",
        DATABASE_URL="postgres://u:p@db:5432/mc",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    env = _settings_env(tmp_path, MODELCOURT_SECURE="1")
    env.pop("SECRET_KEY", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr
