"""Settings, all from the environment (12-factor).

No variables at all gives the embedded default: a SQLite file and Celery's
filesystem broker under the data folder, keys generated on first use.
Production sets DATABASE_URL, CELERY_BROKER_URL, SECRET_KEY,
MODELCOURT_SECURE=1 and friends; see README.md.
"""

import os
import re
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    """Read a boolean environment variable (1/true/yes/on)."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    """Read a comma-separated environment variable."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DATA_DIR = Path(os.environ.get("MODELCOURT_DATA_DIR", BASE_DIR / "data")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("MODELCOURT_DEBUG")
SECURE = env_bool("MODELCOURT_SECURE")


def _secret_key() -> str:
    # The embedded default keeps a generated key in the data folder so sessions
    # survive restarts; production must pass SECRET_KEY explicitly.
    if key := os.environ.get("SECRET_KEY"):
        return key
    if SECURE:
        raise RuntimeError("SECRET_KEY must be set when MODELCOURT_SECURE=1")
    path = DATA_DIR / "secret_key"
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process wrote it first
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(64))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "timestamps",
    "ownership",
    "verification",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "config" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "ownership.roles.roles_context",
            ],
        },
    },
]

# --- database ---------------------------------------------------------------
_default_db = f"sqlite:///{DATA_DIR / 'db.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", _default_db), conn_max_age=60, conn_health_checks=True
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web server and worker share the file: WAL lets readers run beside the
    # writer, IMMEDIATE transactions serialise writers instead of failing them.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- cache (throttling) -----------------------------------------------------
_cache_url = os.environ.get("CACHE_URL", "")
if _cache_url.startswith(("redis://", "rediss://")):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _cache_url}}
else:
    # A file cache is shared by every process on the host, which the throttles need; it must not
    # cull throttle counters under load (the default culls past 300 entries). Several web hosts
    # need CACHE_URL.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
            "OPTIONS": {"MAX_ENTRIES": 200_000},
        }
    }

# --- auth -------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "after-login"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("MODELCOURT_STATIC_ROOT", DATA_DIR / "static"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "config" / "static"]
MEDIA_ROOT = DATA_DIR / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
# Tests and `runserver` serve files straight from the apps, without collectstatic.
WHITENOISE_USE_FINDERS = DEBUG or env_bool("MODELCOURT_STATIC_FINDERS")
if WHITENOISE_USE_FINDERS:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

# --- security (production: MODELCOURT_SECURE=1 behind TLS) ------------------
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if SECURE:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("MODELCOURT_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("MODELCOURT_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# --- REST API ---------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PARSER_CLASSES": [
        "ownership.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "config.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
        "rest_framework.throttling.ScopedRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("MODELCOURT_THROTTLE_ANON", "120/min"),
        "user": os.environ.get("MODELCOURT_THROTTLE_USER", "1200/min"),
        "tsa": os.environ.get("MODELCOURT_THROTTLE_TSA", "600/min"),
        # failed web sign-ins per (address, username); `login-address` caps one address over all usernames
        "login": os.environ.get("MODELCOURT_THROTTLE_LOGIN", "20/min"),
        "login-address": os.environ.get("MODELCOURT_THROTTLE_LOGIN_ADDRESS", "100/min"),
        # sign-up attempts per client address
        "signup": os.environ.get("MODELCOURT_THROTTLE_SIGNUP", "10/hour"),
        # watermark generations per owner
        "evidence-generate": os.environ.get("MODELCOURT_THROTTLE_GENERATE", "30/hour"),
        "sighting": os.environ.get("MODELCOURT_THROTTLE_SIGHTING", "60/hour"),
        # bundle downloads, the API's and the web page's together, per client
        "verdict-bundle": os.environ.get("MODELCOURT_THROTTLE_BUNDLE", "60/min"),
    },
    # 0: throttles key on the peer address and ignore a client's X-Forwarded-For; behind N trusted
    # proxies set MODELCOURT_NUM_PROXIES=N.
    "NUM_PROXIES": int(os.environ.get("MODELCOURT_NUM_PROXIES", "0")),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "modelcourt API",
    "DESCRIPTION": "Model ownership registration, disputes and publicly verifiable verdicts.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Celery (read by workers/celery.py) -------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        # kombu's default is ./control, relative to wherever the process started (the repo root)
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    # Longer than the longest verification run, or Redis redelivers a running task.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": int(os.environ.get("MODELCOURT_VISIBILITY_TIMEOUT", str(6 * 3600)))
    }

# --- verification runs and stress tests (each in a sandbox child) ---------------
MODELCOURT_RUN_TIMEOUT_S = float(os.environ.get("MODELCOURT_RUN_TIMEOUT_S", "1800"))
MODELCOURT_STRESS_TIMEOUT_S = float(os.environ.get("MODELCOURT_STRESS_TIMEOUT_S", "3600"))
MODELCOURT_RUN_MEMORY_BYTES = int(os.environ.get("MODELCOURT_RUN_MEMORY_BYTES", str(6 << 30)))
MODELCOURT_STRESS_MAX_ACTIVE = int(os.environ.get("MODELCOURT_STRESS_MAX_ACTIVE", "2"))

# --- uploads ---------------------------------------------------------------
MODELCOURT_MAX_ARTIFACT_BYTES = int(os.environ.get("MODELCOURT_MAX_ARTIFACT_BYTES", str(256 * 1024 * 1024)))
MODELCOURT_MAX_EVIDENCE_BYTES = int(os.environ.get("MODELCOURT_MAX_EVIDENCE_BYTES", str(64 * 1024 * 1024)))
# count x prod(input_shape) of one generated watermark set (float32: 64 MiB at the default)
MODELCOURT_MAX_GENERATED_ELEMENTS = int(os.environ.get("MODELCOURT_MAX_GENERATED_ELEMENTS", str(16 * 1024 * 1024)))
# Larger uploads stream to temporary files instead of memory, except evidence, which stays off disk.
FILE_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024
FILE_UPLOAD_HANDLERS = [
    "ownership.uploads.EvidenceMemoryUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
FILE_UPLOAD_PERMISSIONS = 0o640

# --- model validation (a worker on the cpu queue checks each upload in the sandbox) ---
# Uploads spool under the data folder, not /tmp, so that the validation sweep can remove what a
# killed web worker left behind (files older than an hour).
FILE_UPLOAD_TEMP_DIR = DATA_DIR / "tmp" / "uploads"
FILE_UPLOAD_TEMP_DIR.mkdir(parents=True, exist_ok=True)
MODELCOURT_VALIDATION_TIMEOUT_S = float(os.environ.get("MODELCOURT_VALIDATION_TIMEOUT_S", "60"))
MODELCOURT_MAX_VALIDATING = int(os.environ.get("MODELCOURT_MAX_VALIDATING", "2"))  # per owner, at once
# generated watermarks per owner in any 24 hours (each draw also multiplies the p-values of its generated claims)
MODELCOURT_WATERMARK_DRAWS_PER_DAY = int(os.environ.get("MODELCOURT_WATERMARK_DRAWS_PER_DAY", "20"))
MODELCOURT_VALIDATION_MEMORY_BYTES = int(os.environ.get("MODELCOURT_VALIDATION_MEMORY_BYTES", str(4 << 30)))
# a registration still `validating` this long after its task was published is published again
MODELCOURT_VALIDATION_RESEND_MINUTES = float(os.environ.get("MODELCOURT_VALIDATION_RESEND_MINUTES", "15"))

# --- the trust layer --------------------------------------------------------
MODELCOURT_KEY_DIR = Path(os.environ.get("MODELCOURT_KEY_DIR", DATA_DIR / "keys")).resolve()
MODELCOURT_LOG_ORIGIN = os.environ.get("MODELCOURT_LOG_ORIGIN", "modelcourt.local/log")
if not re.fullmatch(r"[^\s+]{1,200}", MODELCOURT_LOG_ORIGIN):
    # It is also the signed-note key name: no spaces, no plus signs.
    raise ImproperlyConfigured("MODELCOURT_LOG_ORIGIN must be 1-200 characters without spaces or '+'")
# A UUID-derived OID (ITU-T X.667): ours without a registration authority.
MODELCOURT_TSA_POLICY_OID = os.environ.get("MODELCOURT_TSA_POLICY_OID", "2.25.9291914441649853870981516564865841020")
MODELCOURT_TSA_NAME = os.environ.get("MODELCOURT_TSA_NAME", "modelcourt TSA")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("MODELCOURT_LOG_LEVEL", "INFO")},
}
