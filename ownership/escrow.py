"""Escrow encryption: evidence, salt and seed are sealed with Fernet (AES-128-CBC + HMAC-SHA256).

Keys come from MODELCOURT_ESCROW_KEYS (comma-separated Fernet keys, newest
first) or the file `escrow.keys` in MODELCOURT_KEY_DIR (generated on first
use, mode 0600, newest first). MultiFernet decrypts with any listed key and
encrypts with the first, so rotation is: add a key in front, re-seal, then
drop the old key.
"""

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class EscrowError(RuntimeError):
    """Escrowed data cannot be opened with any configured key."""

    code = "escrow_unavailable"


def _key_file() -> Path:
    return Path(settings.MODELCOURT_KEY_DIR) / "escrow.keys"


def escrow_keys() -> list[bytes]:
    """The configured Fernet keys, newest first (generating the first one for the embedded default)."""
    if configured := os.environ.get("MODELCOURT_ESCROW_KEYS"):
        return [key.strip().encode() for key in configured.split(",") if key.strip()]
    path = _key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(Fernet.generate_key() + b"\n")
    return [line.strip() for line in path.read_bytes().splitlines() if line.strip()]


def add_escrow_key() -> None:
    """Put a new key in front of the key file (the environment's keys are rotated by redeploying)."""
    if os.environ.get("MODELCOURT_ESCROW_KEYS"):
        raise EscrowError("MODELCOURT_ESCROW_KEYS pins the escrow keys: rotate by deploying a new list")
    keys = escrow_keys()
    path = _key_file()
    temporary = path.with_suffix(".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(b"\n".join([Fernet.generate_key(), *keys]) + b"\n")
    temporary.replace(path)


def _cipher() -> MultiFernet:
    return MultiFernet([Fernet(key) for key in escrow_keys()])


def seal(plaintext: bytes) -> bytes:
    """Encrypt with the newest key."""
    return _cipher().encrypt(plaintext)


def unseal(token: bytes) -> bytes:
    """Decrypt with whichever configured key sealed it."""
    try:
        return _cipher().decrypt(bytes(token))
    except InvalidToken as exc:
        raise EscrowError("escrowed evidence cannot be decrypted with the configured escrow keys") from exc


def reseal(token: bytes) -> bytes:
    """Re-encrypt under the newest key."""
    try:
        return _cipher().rotate(bytes(token))
    except InvalidToken as exc:
        raise EscrowError("escrowed evidence cannot be decrypted with the configured escrow keys") from exc
