"""What model code could do had it escaped into Python: run in the sandbox child through `run_sandboxed`.

TorchScript and ONNX reach no socket, fork or exec; these functions try them directly, as the worst
case of a model that found a way out of its interpreter (the sandbox resolves functions under `tests.`).
This module imports no torch, so a cold child runs it in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

MARKER = "zz-hostile"
_PR_SET_NAME = 15  # linux/prctl.h


def sandboxed_connect(port: int) -> str:
    """Connects to the parent's loopback listener and sends the MARKER; says how far it got."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
            connection.sendall(MARKER.encode())
    except OSError as exc:
        return f"refused: {type(exc).__name__}"
    return "connected"


def sandboxed_fork_and_linger(seconds: float, name: str) -> dict[str, Any]:
    """Forks a grandchild that leaves the sandbox's process group, drops the sandbox's pipes (so the call
    returns at once), renames itself `name` (to be found in /proc) and sleeps; returns its pid, if any."""
    try:
        pid = os.fork()
    except OSError as exc:
        return {"pid": None, "error": type(exc).__name__}
    if pid == 0:  # the grandchild
        try:
            os.setsid()
            os.closerange(3, 1 << 16)
            _rename(name)
            time.sleep(seconds)
        finally:
            os._exit(0)
    return {"pid": pid, "error": ""}


def _rename(name: str) -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def sandboxed_exec(target: str) -> str:
    """Replaces the child with a shell that writes `target` (if exec is allowed, the call never returns)."""
    try:
        os.execv("/bin/sh", ["/bin/sh", "-c", f"echo {MARKER} > '{target}'"])  # noqa: S606
    except OSError as exc:
        return f"refused: {type(exc).__name__}"
    return "unreachable"


def sandboxed_write(target: str) -> str:
    """Writes a file with plain Python file I/O."""
    try:
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(MARKER)
    except OSError as exc:
        return f"refused: {type(exc).__name__}"
    return "written"


def sandboxed_ran() -> str:
    """A control: the sandbox resolves and runs this module's functions."""
    return "ran"


def sandboxed_read(paths: list[str]) -> dict[str, str]:
    """Reads each path with plain Python file I/O; the text read, or how it was refused."""
    found: dict[str, str] = {}
    for path in paths:
        try:
            with open(path, "rb") as handle:
                found[path] = handle.read(4096).decode("latin-1")
        except OSError as exc:
            found[path] = f"refused: {type(exc).__name__}"
    return found


def sandboxed_write_all(paths: list[str]) -> dict[str, str]:
    """Writes the MARKER to each path (creating it); what happened to each."""
    return {path: sandboxed_write(path) for path in paths}
