"""The guard's settings, read from the environment (12-factor) or given in code."""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modelcourt.guard.watermark import MIN_KEY_BYTES

__all__ = ["ENV", "GuardConfig", "GuardConfigError"]

# every variable the guard reads, with what it means (docs/guard.md lists the same)
ENV = {
    "MODELCOURT_GUARD_KEY": "secret key, hex, at least 32 bytes: selects the watermarked answers and makes client tags",
    "MODELCOURT_GUARD_MODEL": "the registered model's public id at the service",
    "MODELCOURT_GUARD_CLASSES": "number of classes the model answers",
    "MODELCOURT_GUARD_JOURNAL": "directory of the journal (kept private: it holds raw client ids)",
    "MODELCOURT_URL": "the modelcourt service (default http://127.0.0.1:8000)",
    "MODELCOURT_TOKEN": "the owner's API token",
    "MODELCOURT_GUARD_RATE": "fraction of answers watermarked (default 0.005)",
    "MODELCOURT_GUARD_BATCH": "commit after this many watermarked answers (default 50)",
    "MODELCOURT_GUARD_BATCH_SECONDS": "commit when the oldest pending answer is this old (default 300)",
    "MODELCOURT_GUARD_PRADA_THRESHOLD": "alarm when the Shapiro-Wilk W falls below this (default 0.90)",
    "MODELCOURT_GUARD_PRADA_WINDOW": "distances W is computed over (default 100)",
    "MODELCOURT_GUARD_PRADA_MIN": "distances needed before W is computed (default: the window, 100)",
    "MODELCOURT_GUARD_PRADA_EVERY": "W is computed every this many queries of a client (default 10)",
    "MODELCOURT_GUARD_CLIENT_HEADER": "1: the client id is the X-Client-Id header (only behind a trusted gateway)",
    "MODELCOURT_GUARD_INPUT_SHAPE": "optional: the input shape without the batch dimension, e.g. 1,8,8",
    "MODELCOURT_GUARD_MAX_CONNECTIONS": "the proxy serves at most this many connections at once, more get 503 (256)",
}

DEFAULT_URL = "http://127.0.0.1:8000"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class GuardConfigError(ValueError):
    """A setting that is missing or wrong; the message names it and never repeats a secret."""


@dataclass(frozen=True)
class GuardConfig:
    """Everything a Guard needs. The key and token stay out of repr()."""

    key: bytes = field(repr=False)
    model_id: str
    num_classes: int
    service_url: str = DEFAULT_URL
    token: str | None = field(default=None, repr=False)
    journal_dir: Path = Path("guard-journal")
    rate: float = 0.005
    batch_size: int = 50
    batch_seconds: float = 300.0
    prada_threshold: float = 0.90
    prada_window: int = 100
    prada_min_distances: int = 100
    prada_every: int = 10
    prada_max_points_per_class: int = 2000
    prada_max_clients: int = 10_000
    prada_max_bytes: int = 256 * 1024 * 1024
    trust_client_header: bool = False
    input_shape: tuple[int, ...] | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    max_connections: int = 256
    upstream_timeout_s: float = 30.0
    service_timeout_s: float = 30.0
    retry_base_s: float = 2.0
    retry_max_s: float = 600.0
    max_pending_alarms: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) < MIN_KEY_BYTES:
            raise GuardConfigError(f"MODELCOURT_GUARD_KEY must be at least {MIN_KEY_BYTES} bytes (64 hex characters)")
        if not self.model_id or any(c in self.model_id for c in "/?#\\") or not self.model_id.isprintable():
            raise GuardConfigError("MODELCOURT_GUARD_MODEL must be the registered model's id")
        if isinstance(self.num_classes, bool) or self.num_classes < 2:
            raise GuardConfigError("the model needs at least 2 classes (MODELCOURT_GUARD_CLASSES)")
        parsed = urllib.parse.urlsplit(self.service_url)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise GuardConfigError("MODELCOURT_URL must be an http:// or https:// URL")
        self._check_ranges()

    def _check_ranges(self) -> None:
        checks = [
            (0.0 <= self.rate <= 1.0, "MODELCOURT_GUARD_RATE is a fraction between 0 and 1"),
            (self.batch_size >= 1, "MODELCOURT_GUARD_BATCH is at least 1"),
            (math.isfinite(self.batch_seconds) and self.batch_seconds > 0, "MODELCOURT_GUARD_BATCH_SECONDS is > 0"),
            (0.0 < self.prada_threshold < 1.0, "MODELCOURT_GUARD_PRADA_THRESHOLD is between 0 and 1"),
            (self.prada_window >= 3, "MODELCOURT_GUARD_PRADA_WINDOW is at least 3"),
            (
                3 <= self.prada_min_distances <= self.prada_window,
                "MODELCOURT_GUARD_PRADA_MIN is at least 3 and at most the window",
            ),
            (
                isinstance(self.prada_every, int) and not isinstance(self.prada_every, bool) and self.prada_every >= 1,
                "MODELCOURT_GUARD_PRADA_EVERY is at least 1",
            ),
            (self.prada_max_points_per_class >= 1 and self.prada_max_clients >= 1, "PRADA caps are at least 1"),
            (self.max_body_bytes >= 1024, "the request size limit is at least 1 KiB"),
            (self.max_connections >= 1, "MODELCOURT_GUARD_MAX_CONNECTIONS is at least 1"),
            (self.upstream_timeout_s > 0 and self.service_timeout_s > 0, "timeouts are positive"),
            (0 < self.retry_base_s <= self.retry_max_s, "retry delays are positive, the base at most the maximum"),
            (self.input_shape is None or all(d >= 1 for d in self.input_shape), "input shape dims are positive"),
        ]
        for ok, sentence in checks:
            if not ok:
                raise GuardConfigError(sentence)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: object) -> GuardConfig:
        """Settings from MODELCOURT_* variables; ``overrides`` (e.g. from command-line flags) win."""
        values: dict[str, object] = {
            "key": _key(environ.get("MODELCOURT_GUARD_KEY", "")),
            "model_id": environ.get("MODELCOURT_GUARD_MODEL", ""),
            "service_url": environ.get("MODELCOURT_URL", DEFAULT_URL),
            "token": environ.get("MODELCOURT_TOKEN") or None,
            "journal_dir": Path(environ.get("MODELCOURT_GUARD_JOURNAL", "guard-journal")),
            "trust_client_header": _flag(environ, "MODELCOURT_GUARD_CLIENT_HEADER"),
        }
        numbers: list[tuple[str, str, type[int] | type[float]]] = [
            ("num_classes", "MODELCOURT_GUARD_CLASSES", int),
            ("rate", "MODELCOURT_GUARD_RATE", float),
            ("batch_size", "MODELCOURT_GUARD_BATCH", int),
            ("batch_seconds", "MODELCOURT_GUARD_BATCH_SECONDS", float),
            ("prada_threshold", "MODELCOURT_GUARD_PRADA_THRESHOLD", float),
            ("prada_window", "MODELCOURT_GUARD_PRADA_WINDOW", int),
            ("prada_min_distances", "MODELCOURT_GUARD_PRADA_MIN", int),
            ("prada_every", "MODELCOURT_GUARD_PRADA_EVERY", int),
            ("max_connections", "MODELCOURT_GUARD_MAX_CONNECTIONS", int),
        ]
        for name, variable, kind in numbers:
            if environ.get(variable, "").strip():
                values[name] = _number(environ, variable, kind)
        if environ.get("MODELCOURT_GUARD_INPUT_SHAPE", "").strip():
            values["input_shape"] = parse_shape(environ["MODELCOURT_GUARD_INPUT_SHAPE"])
        values.update({name: value for name, value in overrides.items() if value is not None})
        if "num_classes" not in values:
            raise GuardConfigError("MODELCOURT_GUARD_CLASSES (or --classes) must give the number of classes")
        if not environ.get("MODELCOURT_GUARD_JOURNAL", "").strip() and overrides.get("journal_dir") is None:
            raise GuardConfigError("MODELCOURT_GUARD_JOURNAL must name the journal's directory (kept private)")
        window = values.get("prada_window")
        if "prada_min_distances" not in values and isinstance(window, int):
            values["prada_min_distances"] = window  # by default only full windows are judged
        return cls(**values)  # type: ignore[arg-type]


def parse_shape(text: str) -> tuple[int, ...]:
    """An input shape written as integers with commas, e.g. "1,8,8"."""
    try:
        dims = tuple(int(part) for part in text.strip().strip("[]()").split(","))
    except ValueError:
        raise GuardConfigError("the input shape is integers with commas, e.g. 1,8,8") from None
    if not dims or any(d < 1 for d in dims):
        raise GuardConfigError("the input shape's dimensions are positive integers")
    return dims


def _key(text: str) -> bytes:
    text = text.strip()
    if not text:
        raise GuardConfigError("MODELCOURT_GUARD_KEY is not set: give at least 32 random bytes as hex")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise GuardConfigError("MODELCOURT_GUARD_KEY must be hex (e.g. from `openssl rand -hex 32`)") from None
    if len(key) < MIN_KEY_BYTES:
        raise GuardConfigError(f"MODELCOURT_GUARD_KEY must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return key


def _flag(environ: Mapping[str, str], variable: str) -> bool:
    text = environ.get(variable, "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise GuardConfigError(f"{variable} is 1 or 0")


def _number(environ: Mapping[str, str], variable: str, kind: type[int] | type[float]) -> int | float:
    text = environ[variable].strip()
    try:
        value = kind(text)
    except ValueError:
        raise GuardConfigError(f"{variable} must be {'an integer' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise GuardConfigError(f"{variable} must be a finite number")
    return value
