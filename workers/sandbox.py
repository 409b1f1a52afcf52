"""Run untrusted model code in a fresh child process with time and memory limits.

The child is a new interpreter (`python -I -c ...`), never a fork: the caller may hold CUDA, database
or broker state, and Celery's daemonic pool processes may not start `multiprocessing` children. The
child gets the parent's `sys.path`, a minimal environment (no secrets, no GPUs: CUDA reserves more
address space than any RLIMIT_AS allows), one thread for torch/OpenMP/BLAS, RLIMIT_AS, RLIMIT_CPU and
no core dumps. The parent enforces the wall-clock limit, kills the child's whole process group, and
reads the result back with an unpickler that only rebuilds plain data, numpy arrays and classes
defined in the called function's own module, so a subverted child cannot run code in the parent.
"""

import contextlib
import io
import logging
import math
import os
import pickle
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any, Literal, TypeVar, cast

T = TypeVar("T")
SandboxErrorKind = Literal["timeout", "memory", "crash", "rejected", "error"]

MAX_RESULT_BYTES = 1 << 30
MAX_OUTPUT_BYTES = 64 << 20  # what the child may print; Python ignores SIGXFSZ, so writes beyond it just fail
_LOG_TAIL_BYTES = 4000
_MAX_REASON = 1000
_EXIT_GRACE_S = 5.0
_TOO_LARGE = b"\x00too large"  # never a pickle, which starts with b"\x80"
_ENV_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
_ENV_CHILD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MALLOC_ARENA_MAX": "2",  # glibc reserves 64 MiB of address space per arena; RLIMIT_AS counts it
    "CUDA_VISIBLE_DEVICES": "",
}
_ENV_GPU = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_HOME", "LD_LIBRARY_PATH")
_BOOTSTRAP = (
    "import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); "
    "from workers.sandbox import _child_main; _child_main(int(sys.argv[1]))"
)
_SAFE_GLOBALS = frozenset(
    [("builtins", name) for name in ("set", "frozenset", "complex", "bytearray", "slice", "range")]
    + [("numpy", "dtype"), ("numpy", "ndarray")]
    + [
        (f"numpy.{core}.{module}", name)
        for core in ("core", "_core")
        for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
    ]
)

logger = logging.getLogger(__name__)


class SandboxRejection(Exception):  # noqa: N818 (raised by sandboxed code to reject its input, not an error)
    """Raised by sandboxed code to reject its input; `reason` reaches the caller unchanged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SandboxError(Exception):
    """The sandboxed call failed; `reason` is a sentence for the model's owner, `kind` says why."""

    def __init__(self, reason: str, *, kind: SandboxErrorKind) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def run_sandboxed(
    fn: Callable[..., T], *args: Any, timeout_s: float, memory_bytes: int, gpu: bool = False, **kwargs: Any
) -> T:
    """Call module-level `fn(*args, **kwargs)` in a fresh child process under limits; raise SandboxError on failure.

    With `gpu`, the child sees the parent's GPUs (`CUDA_VISIBLE_DEVICES` as the parent has it) and its
    memory limit is RLIMIT_DATA instead of RLIMIT_AS: the CUDA driver reserves far more address space
    than any sane RLIMIT_AS, as inaccessible mappings that RLIMIT_DATA does not count, while heap and
    private writable mappings (what a model allocates on the host) still do.
    """
    module = getattr(fn, "__module__", None)
    if not module or module == "__main__" or "<" in getattr(fn, "__qualname__", "<"):
        raise ValueError("run_sandboxed needs a module-level function of an importable module")
    if timeout_s <= 0 or memory_bytes <= 0:
        raise ValueError("timeout_s and memory_bytes must be positive")
    cpu_s = math.ceil(timeout_s) + 1  # a backstop for threads burning CPU in parallel; wall time is the real limit
    payload = (
        pickle.dumps(list(sys.path))
        + pickle.dumps({"memory_bytes": memory_bytes, "cpu_s": cpu_s, "gpu": gpu})
        + pickle.dumps((fn, args, kwargs))
    )
    env = {key: os.environ[key] for key in _ENV_KEPT if key in os.environ} | _ENV_CHILD
    if gpu:
        env.pop("CUDA_VISIBLE_DEVICES")
        env |= {key: value for key, value in os.environ.items() if key in _ENV_GPU}
    # stdin is a file, not a pipe: writing the call can never block on a child that stopped reading
    with tempfile.TemporaryFile() as call, tempfile.TemporaryFile() as log:
        call.write(payload)
        call.seek(0)
        read_fd, write_fd = os.pipe()
        try:
            try:
                process = subprocess.Popen(  # noqa: S603 (our own interpreter and bootstrap, no shell)
                    [sys.executable, "-I", "-c", _BOOTSTRAP, str(write_fd)],
                    stdin=call,
                    stdout=log,
                    stderr=log,
                    pass_fds=(write_fd,),
                    env=env,
                    start_new_session=True,  # its own process group: a kill reaches anything it started
                )
            finally:
                os.close(write_fd)
            try:
                outcome = _receive(read_fd, deadline=time.monotonic() + timeout_s)
                if outcome is not None and outcome != _TOO_LARGE:
                    _wait(process, _EXIT_GRACE_S)
                status = process.returncode
            finally:
                _kill(process)
        finally:
            os.close(read_fd)
        try:
            return cast(T, _decode(outcome, status, fn=fn, timeout_s=timeout_s, memory_bytes=memory_bytes, cpu_s=cpu_s))
        except SandboxError as exc:
            level = logging.INFO if exc.kind == "rejected" else logging.WARNING
            logger.log(level, "sandboxed %s.%s failed: %s%s", module, fn.__qualname__, exc.reason, _tail(log))
            raise


def _receive(fd: int, *, deadline: float) -> bytes | None:
    """The child's whole message, or None when the deadline passed first; b"" when it sent nothing."""
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_RESULT_BYTES:
            return _TOO_LARGE
        chunks.append(chunk)


def _wait(process: "subprocess.Popen[bytes]", timeout_s: float) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(process)


def _kill(process: "subprocess.Popen[bytes]") -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _decode(
    outcome: bytes | None,
    status: int | None,
    *,
    fn: Callable[..., Any],
    timeout_s: float,
    memory_bytes: int,
    cpu_s: int,
) -> Any:
    if outcome is None:
        raise SandboxError(f"the model took longer than {timeout_s:g} s", kind="timeout")
    if outcome == _TOO_LARGE:
        raise SandboxError(f"the model process returned more than {_size(MAX_RESULT_BYTES)} of data", kind="error")
    if status is not None and status < 0:
        number = -status
        if number == signal.SIGXCPU:
            raise SandboxError(f"the model used more than {cpu_s} s of CPU time", kind="timeout")
        raise SandboxError(f"the model process crashed (signal {number}: {_signal_name(number)})", kind="crash")
    if not outcome:
        raise SandboxError(f"the model process exited unexpectedly (exit code {status})", kind="crash")
    try:
        tag, value = _RestrictedUnpickler(outcome, fn.__module__).load()
    except Exception as exc:  # anything at all: the bytes come from a process that ran untrusted code
        raise SandboxError(f"the model process returned data that could not be read ({exc})", kind="error") from None
    if tag == "ok":
        return value
    if tag == "rejected":
        raise SandboxError(str(value)[:_MAX_REASON], kind="rejected")
    if tag == "memory":
        raise SandboxError(f"the model needed more than {_size(memory_bytes)} of memory", kind="memory")
    raise SandboxError(f"the model process failed: {str(value)[:_MAX_REASON]}", kind="error")


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds plain data, numpy arrays and classes of the called function's module; refuses any other global."""

    def __init__(self, data: bytes, module: str) -> None:
        super().__init__(io.BytesIO(data))
        self._module = module

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if module == self._module and "." not in name:
            found = getattr(sys.modules.get(module), name, None)
            if isinstance(found, type) and found.__module__ == module:
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a sandbox result")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _tail(log: IO[bytes]) -> str:
    log.seek(0, os.SEEK_END)
    log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
    text = log.read().decode(errors="replace").strip()
    return f"; child output ends with:\n{text}" if text else ""


def _child_main(result_fd: int) -> None:
    """Entry point of the child: apply limits, run the call, write one tagged result, exit at once."""
    stdin = sys.stdin.buffer
    limits = pickle.load(stdin)  # noqa: S301 (written by our parent, not by the model)
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_FSIZE, MAX_OUTPUT_BYTES)
    _limit(resource.RLIMIT_CPU, limits["cpu_s"], hard=limits["cpu_s"] + 1)
    _limit(resource.RLIMIT_DATA if limits.get("gpu") else resource.RLIMIT_AS, limits["memory_bytes"])
    message: tuple[str, Any]
    try:
        fn, args, kwargs = pickle.load(stdin)  # noqa: S301 (written by our parent; imports fn's module)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        message = ("ok", fn(*args, **kwargs))
    except SandboxRejection as exc:
        message = ("rejected", exc.reason)
    except BaseException as exc:
        message = ("memory", None) if _out_of_memory(exc) else ("error", _describe(exc))
    try:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:
        data = pickle.dumps(("memory", None) if _out_of_memory(exc) else ("error", f"unreadable result ({exc})"))
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(result_fd, view) :]
    finally:
        os._exit(0)  # skip interpreter teardown: slow with torch loaded, and nothing is left to do


def _limit(which: int, soft: int, *, hard: int | None = None) -> None:
    _, current_hard = resource.getrlimit(which)
    wanted = soft if hard is None else hard
    if current_hard != resource.RLIM_INFINITY:
        wanted = min(wanted, current_hard)
        soft = min(soft, current_hard)
    resource.setrlimit(which, (soft, wanted))


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    # torch and onnxruntime report failed allocations as RuntimeError, the loader a library it cannot map
    text = str(exc).lower()
    return any(sign in text for sign in ("bad_alloc", "cannot allocate memory", "failed to map segment")) or (
        "allocate" in text and "memory" in text
    )


def _describe(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return f"{type(exc).__name__}: {text}"[:_MAX_REASON] if text else type(exc).__name__
