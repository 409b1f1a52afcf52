"""What a hostile model would try from inside the sandbox child; each returns what it achieved, never raises."""

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

from workers.sandbox import RelayError, relay_call


def _outcome(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "error")


def read_file(path: str) -> str:
    """The file's text, or the errno name that stopped the read."""
    try:
        return Path(path).read_text()
    except OSError as exc:
        return _outcome(exc)


def open_file(path: str) -> str:
    """The file's text; the error it raises travels as a category."""
    return Path(path).read_text()


def write_file(path: str) -> str:
    """ "written", or the errno name that stopped the write."""
    try:
        Path(path).write_text("import os  # planted\n")
    except OSError as exc:
        return _outcome(exc)
    return "written"


def start_processes() -> dict[str, str]:
    """Try fork, a subprocess and an AF_INET socket."""
    seen: dict[str, str] = {}
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        seen["fork"] = "ran"
    except OSError as exc:
        seen["fork"] = _outcome(exc)
    try:
        subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=30)
        seen["subprocess"] = "ran"
    except OSError as exc:
        seen["subprocess"] = _outcome(exc)
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        seen["socket"] = "made"
    except OSError as exc:
        seen["socket"] = _outcome(exc)
    return seen


def connect(port: int) -> str:
    """ "connected" to 127.0.0.1:port, or the errno name that stopped it."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return "connected"
    except OSError as exc:
        return _outcome(exc)


def allocate(size: int) -> int:
    return len(bytearray(size))


def print_and_fail(secret_path: str) -> None:
    """Print a secret to stdout and stderr, then raise it: none of it may reach the parent's logs or errors."""
    text = read_file(secret_path)
    print(text, flush=True)
    print(text, file=sys.stderr, flush=True)
    raise RuntimeError(f"look: {text}")


def workspace() -> dict[str, object]:
    """The child's working folder, TMPDIR and whether it can write there."""
    here = os.getcwd()
    return {"cwd": here, "tmpdir": os.environ.get("TMPDIR"), "write": write_file(os.path.join(here, "scratch.txt"))}


def read_copy(path: str) -> dict[str, object]:
    """What the child sees at the path it was given for a file: its text and whether it is a copy."""
    return {"path": path, "text": read_file(path), "overwrite": write_file(path)}


def ask_relay(payload: bytes) -> bytes | str:
    try:
        return relay_call(payload)
    except RelayError as exc:
        return f"RelayError: {exc}"


def ask_relay_twice(first: bytes, second: bytes) -> list[bytes]:
    return [relay_call(first), relay_call(second)]
