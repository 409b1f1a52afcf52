"""Run untrusted model code in a fresh child process with time and memory limits.

The child is a new interpreter (`python -I -c ...`), never a fork: the caller may hold CUDA, database
or broker state, and Celery's daemonic pool processes may not start `multiprocessing` children. The
child gets the parent's `sys.path`, a minimal environment (no secrets, no GPUs: CUDA reserves more
address space than any RLIMIT_AS allows), one thread for torch/OpenMP/BLAS, RLIMIT_AS, RLIMIT_CPU and
no core dumps. The parent enforces the wall-clock limit and kills the child's whole process group.

Importing torch takes a fresh interpreter about two seconds, so the parent keeps one *spare* child per
configuration (GPU flag, `sys.path`, environment) that has already imported the heavy trusted modules
(`PRELOADED`) and waits for one job. A job handed to a spare gets the job's limits then (rlimits can
be lowered unprivileged; RLIMIT_CPU counts from the CPU time the imports used), runs, and the child
exits: a child never runs a second job. A replacement starts as soon as a spare is handed out, so
it warms while the job runs. A process opts in by calling `warm_spare()` (Celery worker processes do at
start); others (web processes) start a fresh child per call and hold no spare's memory.
`MODELCOURT_SANDBOX_PREWARM=0` (or `prewarm=False`) turns spares off.

Confinement (`workers.confinement`, docs/sandbox.md): the child makes itself no_new_privs, dies with
its parent, enters an empty network namespace at its very start, and when a job arrives (a spare: after
its imports), before reading the call, confines itself with Landlock (reads the Python runtime, the
project's packages and what the call declares; writes only the job's private scratch folder, which is
removed afterwards) and a seccomp filter (no exec, fork, sockets, ptrace, mounts, namespaces, bpf, ...).
Files a call evaluates travel as `files=` (the child gets a private copy), read-only folders as
`readable=`; a child with no network reaches an endpoint only through the parent's `relay`.
Nothing the child says reaches a person or a log verbatim: a failure travels as a fixed category that
the parent turns into its own sentence; the child's output is logged as a size and a SHA-256.

Nothing crossing the channel is a pickle, in either direction. The call names its function as
"module:qualname", resolved only under `ALLOWED_PACKAGES`; arguments and results are JSON where arrays,
NumPy scalars and bytes travel as `.npy`/raw blobs after the JSON, and tuples, sets, dicts with
non-string keys, non-finite floats and dataclasses as tagged objects. The parent treats what the child
sends as hostile: bounded in size, checked against the format, and never executed; a result may only
rebuild dataclasses defined in the called function's own module.
"""

import atexit
import contextlib
import dataclasses
import errno
import hashlib
import importlib
import io
import itertools
import json
import logging
import math
import os
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, TypeVar, cast

from workers import confinement

T = TypeVar("T")
SandboxErrorKind = Literal["timeout", "memory", "crash", "rejected", "error"]

MAX_RESULT_BYTES = 1 << 30
MAX_OUTPUT_BYTES = 64 << 20  # what the child may print; Python ignores SIGXFSZ, so writes beyond it just fail
ALLOWED_PACKAGES = ("verification.", "ownership.", "workers.", "tests.")
# onnxruntime is not preloaded: importing it starts a thread, and Landlock binds only the thread that applies
# it and the threads it starts later; the job imports it in about 0.03 s, after the confinement
PRELOADED = ("numpy", "torch", "onnx", "verification.methods.runner", "verification.methods.stress")
SPARE_MAX_AGE_S = 1800.0
# A spare already holds the preloaded modules' address space; a job whose limit leaves it less than
# this on top starts cold, where its limit counts only what the job itself imports.
SPARE_HEADROOM_BYTES = 1 << 30
_SPARE_READY_WAIT_S = 120.0
_MAX_REASON = 1000
MAX_RELAY_REQUEST_BYTES = 64 << 20
MAX_RELAY_ANSWER_BYTES = 64 << 20
_RELAY_HEADER = struct.Struct(">cQ")  # b"Q" (request), b"A" (answer) or b"E" (error), then the length
_EXIT_GRACE_S = 5.0
_MAX_DEPTH = 100
_MAX_HEADER_BYTES = 64 << 20
_MAGIC = b"MCSB"
_FRAME = struct.Struct(">4sQQ")  # magic, JSON length, blob bytes in all
_READY = struct.Struct(">cQ")  # b"R", the bytes the memory limit already counts
_TOO_LARGE = object()
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
    "import json, sys; sys.path[:] = json.loads(sys.stdin.buffer.readline()); "
    "from workers.sandbox import _child_main; "
    "_child_main(int(sys.argv[1]), warm=sys.argv[2] == 'warm', gpu=sys.argv[3] == 'gpu', "
    "parent_pid=int(sys.argv[4]), layers=tuple(filter(None, sys.argv[5].split(','))), relay_fd=int(sys.argv[6]))"
)
# what the parent says for each category of failure the child reports; never the child's own words
CATEGORY_REASONS = {
    "exception": "the model raised an error during inference",
    "forbidden": "the model tried an operation the sandbox forbids",
    "confinement": "the sandbox could not confine the model process on this host",
    "call": "the sandbox child could not read its call",
    "result": "the model's result could not be sent back (a type the sandbox does not carry)",
    "relay": "the model process used the relay wrongly",
}
_FORBIDDEN_SIGNS = ("permission denied", "operation not permitted")
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_NPY_MAGIC = b"\x93NUMPY"

logger = logging.getLogger(__name__)


class SandboxRejection(Exception):  # noqa: N818 (raised by sandboxed code to reject its input, not an error)
    """Raised by sandboxed code to reject its input; `reason` reaches the caller unchanged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SandboxError(Exception):
    """The sandboxed call failed; `reason` is our sentence for the model's owner, `kind` and `category` say why."""

    def __init__(self, reason: str, *, kind: SandboxErrorKind, category: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.category = category or kind


class SandboxUnavailable(SandboxError):  # noqa: N818 (a refusal to run, like SandboxError)
    """This host cannot confine untrusted models and the operator did not allow running them unconfined."""


class RelayError(Exception):
    """In the child: the relay is absent, refused the request, or answered with an error."""


class MalformedMessageError(ValueError):
    """Bytes on the sandbox channel that are not a well-formed message of allowed types."""


def run_sandboxed(
    fn: Callable[..., T],
    *args: Any,
    timeout_s: float,
    memory_bytes: int,
    gpu: bool = False,
    prewarm: bool | None = None,
    files: Mapping[str, str | os.PathLike[str]] | None = None,
    readable: Sequence[str | os.PathLike[str]] = (),
    writable: Sequence[str | os.PathLike[str]] = (),
    relay: Callable[[bytes], bytes] | None = None,
    **kwargs: Any,
) -> T:
    """Call module-level `fn(*args, **kwargs)` in a confined child process under limits; raise SandboxError on failure.

    `fn` must live under `ALLOWED_PACKAGES`; arguments and the result may be what `encode_message`
    takes. `timeout_s` counts from when the child gets the call. `prewarm` (default: the
    `MODELCOURT_SANDBOX_PREWARM` env, on unless "0", in a process that called `warm_spare`) lets the call
    use a warm spare and keeps one ready.

    `files` maps keyword arguments to files the call reads (an uploaded model): each is copied, read-only,
    into the job's private scratch folder and the keyword gets the copy's path. `readable` names further
    files or folders the child may read (ours, such as a reference panel). Under Landlock nothing else
    outside the Python runtime and the project's packages is readable: a path passed in `args` is not.
    `writable` names folders of ours the child may also write (a progress folder); its own scratch folder
    (its cwd and TMPDIR) is writable anyway and removed after the call.
    `relay` serves `relay_call(payload)` from the child (it has no network) on a thread of this process.

    With `gpu`, the child sees the parent's GPUs (`CUDA_VISIBLE_DEVICES` as the parent has it) and its
    memory limit is RLIMIT_DATA instead of RLIMIT_AS: the CUDA driver reserves far more address space
    than any sane RLIMIT_AS, as inaccessible mappings that RLIMIT_DATA does not count, while heap and
    private writable mappings (what a model allocates on the host) still do.
    """
    name = _function_name(fn)
    if timeout_s <= 0 or memory_bytes <= 0:
        raise ValueError("timeout_s and memory_bytes must be positive")
    layers = _enforceable()
    cpu_s = math.ceil(timeout_s) + 1  # a backstop for threads burning CPU in parallel; wall time is the real limit
    job = tempfile.mkdtemp(prefix="modelcourt-sandbox-")  # files/ (read-only copies) and work/ (the scratch)
    try:
        scratch = os.path.join(job, "scratch")
        os.mkdir(scratch, 0o700)
        kwargs = kwargs | _copy_files(files or {}, job, taken=kwargs)
        granted = [os.fspath(p) for p in readable] + ([os.path.join(job, "files")] if files else [])
        paths = confinement.plan_paths(
            scratch=scratch, readable=granted, writable=[os.fspath(p) for p in writable], gpu=gpu
        )
        header = {"memory_bytes": memory_bytes, "cpu_s": cpu_s, "gpu": gpu, "scratch": scratch, "paths": paths}
        call = _encode_frame({"fn": name, "args": list(args), "kwargs": kwargs})
        use_spares = _prewarm_enabled(prewarm)
        config = _Config.current(gpu=gpu, layers=layers)
        child = _take_spare(config, memory_bytes) if use_spares else None
        if child is None:
            child = _Child.spawn(config, warm=False)
        server = child.serve_relay(relay)
        deadline = time.monotonic() + timeout_s
        try:
            _hand_over(child, [json.dumps(header).encode() + b"\n", *call], deadline=deadline)
            if use_spares:
                _ensure_spare(config)  # warms while the job runs
            outcome = _receive(child.result_fd, deadline=deadline)
            if isinstance(outcome, bytes) and not child.ready:
                outcome = _strip_ready(child, outcome)
            if isinstance(outcome, bytes):
                _wait(child.process, _EXIT_GRACE_S)
            status = child.process.returncode
        finally:
            child.kill()
            if server is not None:
                server.join(timeout=_EXIT_GRACE_S)
    finally:
        _remove_scratch(job)
    try:
        try:
            return cast(T, _decode(outcome, status, fn=fn, timeout_s=timeout_s, memory_bytes=memory_bytes, cpu_s=cpu_s))
        except SandboxError as exc:
            level = logging.INFO if exc.kind == "rejected" else logging.WARNING
            logger.log(
                level, "sandboxed %s failed (%s): %s; %s", name, exc.category, exc.reason, _log_digest(child.log)
            )
            raise
    finally:
        child.log.close()


def relay_call(payload: bytes) -> bytes:
    """In a sandboxed call: send `payload` to the parent's `relay` and return its answer; RelayError on failure.

    One request at a time; requests and answers are capped (MAX_RELAY_REQUEST_BYTES, MAX_RELAY_ANSWER_BYTES).
    """
    if _relay_socket is None:
        raise RelayError("relay_call works only in a sandboxed call")
    if len(payload) > MAX_RELAY_REQUEST_BYTES:
        raise RelayError("the relay request is too large")
    with _relay_lock:
        try:
            _relay_socket.sendall(_RELAY_HEADER.pack(b"Q", len(payload)) + payload)
            mark, size = _RELAY_HEADER.unpack(_recv_exact(_relay_socket, _RELAY_HEADER.size))
            if mark not in (b"A", b"E") or size > MAX_RELAY_ANSWER_BYTES:
                raise RelayError("the relay answered with a malformed frame")
            body = _recv_exact(_relay_socket, size)
        except OSError:
            raise RelayError("the relay is not available to this call") from None
    if mark == b"E":
        raise RelayError(body.decode("ascii", errors="replace"))
    return body


def _enforceable() -> tuple[str, ...]:
    """The layers to enforce (cached); SandboxUnavailable on a host that cannot confine and no override."""
    try:
        return confinement.ensure_enforceable()
    except confinement.ConfinementUnavailable as exc:
        logger.error("refusing to run untrusted code: %s", exc)
        raise SandboxUnavailable(
            "models cannot be checked on this server right now: its sandbox is not available (the operators are told)",
            kind="error",
            category="unavailable",
        ) from None


def _copy_files(files: Mapping[str, str | os.PathLike[str]], job: str, *, taken: Mapping[str, Any]) -> dict[str, str]:
    """Copies of `files` in the job's files/ folder (read-only to the child under Landlock), by keyword."""
    copies: dict[str, str] = {}
    folder = Path(job, "files")
    if files:
        folder.mkdir()
    for index, (keyword, source) in enumerate(files.items()):
        if keyword in taken:
            raise ValueError(f"{keyword} is given both as a file and as an argument")
        suffix = "".join(ch for ch in Path(source).suffix[:16] if ch.isalnum() or ch == ".")
        target = folder / f"{index}{suffix}"
        shutil.copyfile(source, target)
        target.chmod(0o444)
        copies[keyword] = str(target)
    if files:
        folder.chmod(0o555)
    return copies


def _remove_scratch(scratch: str) -> None:
    """Remove a job's scratch folder whatever the child left in it (folders it made unwritable included)."""
    for root, dirs, _ in os.walk(scratch):
        for name in (root, *(os.path.join(root, d) for d in dirs)):
            if not os.path.islink(name):  # chmod follows links: never onto a file outside the folder
                with contextlib.suppress(OSError):
                    os.chmod(name, 0o700)
    shutil.rmtree(scratch, ignore_errors=True)


def warm_spare(*, gpu: bool = False, wait_s: float = 0.0) -> bool:
    """Start a spare for this process's configuration unless one exists or spares are off; True when one is there.

    This opts the process in: from now on its calls use spares and keep one ready. With `wait_s`, also wait
    that long for it to finish its imports (False when it did not).
    """
    global _opted_in
    if not _env_prewarm():
        return False
    _opted_in = True
    try:
        config = _Config.current(gpu=gpu)
    except SandboxUnavailable:  # logged by _enforceable; each call refuses, the worker itself starts
        return False
    _ensure_spare(config)
    if wait_s <= 0:
        return True
    with _lock:
        child = _spares.get(config.key)
    return child is not None and child.await_ready(time.monotonic() + wait_s)


def discard_spares() -> None:
    """Kill this process's spares and opt it out (at exit, at worker shutdown); inherited spares are left alone."""
    global _opted_in
    _opted_in = False
    with _lock:
        children = list(_spares.values())
        _spares.clear()
    for child in children:
        if child.owner_pid == os.getpid():
            child.kill()
            child.log.close()
        else:
            child.forget()


def child_pid() -> int:
    """The id of the process that runs it: sandboxed, the child's (a trivial call to time and to trace children)."""
    return os.getpid()


# The channel. A frame is _FRAME (magic, JSON length, blob length), the JSON, then the blobs.


def encode_message(value: Any) -> bytes:
    """One frame holding `value`; TypeError for a type the channel does not carry."""
    return b"".join(_encode_frame(value))


def decode_message(data: bytes | memoryview, *, dataclass_module: str | None = None) -> Any:
    """The value of one frame; MalformedMessageError unless it is well-formed and holds only allowed types.

    Dataclasses are rebuilt only when defined in `dataclass_module` (the called function's module),
    or, with None, in a module under ALLOWED_PACKAGES.
    """
    view = memoryview(data)
    if len(view) < _FRAME.size:
        raise MalformedMessageError("the message is shorter than its header")
    magic, text_size, blob_size = _FRAME.unpack(view[: _FRAME.size])
    if magic != _MAGIC:
        raise MalformedMessageError("the message does not start with the sandbox header")
    if text_size > _MAX_HEADER_BYTES or _FRAME.size + text_size + blob_size != len(view):
        raise MalformedMessageError("the message's lengths do not add up")
    body = view[_FRAME.size : _FRAME.size + text_size]
    blobs = view[_FRAME.size + text_size :]
    try:
        document = json.loads(bytes(body), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessageError(f"the message is not JSON ({exc})") from None
    if not isinstance(document, dict) or set(document) != {"blobs", "value"}:
        raise MalformedMessageError("the message has no value")
    sizes = document["blobs"]
    if not isinstance(sizes, list) or not all(type(n) is int and n >= 0 for n in sizes) or sum(sizes) != len(blobs):
        raise MalformedMessageError("the message's blob sizes do not add up")
    offsets = [0, *itertools.accumulate(sizes)]
    parts = [blobs[start:end] for start, end in itertools.pairwise(offsets)]
    return _Decoder(parts, dataclass_module).value(document["value"], 0)


def _encode_frame(value: Any) -> list[bytes]:
    blobs: list[bytes] = []
    tree = _encode_value(value, blobs, 0)
    text = json.dumps(
        {"blobs": [len(b) for b in blobs], "value": tree}, allow_nan=False, separators=(",", ":")
    ).encode()
    return [_FRAME.pack(_MAGIC, len(text), sum(len(b) for b in blobs)), text, *blobs]


def _encode_value(value: Any, blobs: list[bytes], depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise TypeError(f"the value is nested more than {_MAX_DEPTH} levels deep")
    if value is None or type(value) is bool:
        return value
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray | numpy.generic):
        buffer = io.BytesIO()
        numpy.save(buffer, numpy.asarray(value), allow_pickle=False)  # refuses object arrays
        blobs.append(buffer.getvalue())
        return {"$": "ndarray" if isinstance(value, numpy.ndarray) else "scalar", "blob": len(blobs) - 1}
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        number = float(value)
        return number if math.isfinite(number) else {"$": "float", "v": repr(number)}
    if isinstance(value, str):
        return str.__str__(value)  # a str subclass (an enum, Django choices) as its plain value
    if isinstance(value, bytes | bytearray):
        blobs.append(bytes(value))
        return {"$": "bytes" if isinstance(value, bytes) else "bytearray", "blob": len(blobs) - 1}
    if isinstance(value, complex):
        return {"$": "complex", "v": [_encode_value(value.real, blobs, depth), _encode_value(value.imag, blobs, depth)]}
    if isinstance(value, list):
        return [_encode_value(item, blobs, depth + 1) for item in value]
    if isinstance(value, tuple):
        return {"$": "tuple", "v": [_encode_value(item, blobs, depth + 1) for item in value]}
    if isinstance(value, set | frozenset):
        tag = "set" if isinstance(value, set) else "frozenset"
        return {"$": tag, "v": [_encode_value(item, blobs, depth + 1) for item in value]}
    if isinstance(value, dict):
        if all(type(key) is str for key in value):
            return {"$": "dict", "v": {key: _encode_value(item, blobs, depth + 1) for key, item in value.items()}}
        pairs = [[_encode_value(k, blobs, depth + 1), _encode_value(v, blobs, depth + 1)] for k, v in value.items()]
        return {"$": "pairs", "v": pairs}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {
            f.name: _encode_value(getattr(value, f.name), blobs, depth + 1) for f in dataclasses.fields(value) if f.init
        }
        return {"$": "dataclass", "type": f"{cls.__module__}:{cls.__qualname__}", "v": fields}
    cls = type(value)
    raise TypeError(f"{cls.__module__}.{cls.__qualname__} is not allowed in a sandbox call or result")


class _Decoder:
    """Rebuilds a value from the JSON tree; every object must be one of the tags `_encode_value` writes."""

    def __init__(self, blobs: list[memoryview], dataclass_module: str | None) -> None:
        self._blobs = blobs
        self._dataclass_module = dataclass_module

    def value(self, node: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise MalformedMessageError(f"the message is nested more than {_MAX_DEPTH} levels deep")
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, list):
            return [self.value(item, depth + 1) for item in node]
        if not isinstance(node, dict):
            raise MalformedMessageError(f"unexpected JSON {type(node).__name__}")
        tag = node.get("$")
        if tag in ("ndarray", "scalar", "bytes", "bytearray"):
            self._keys(node, {"$", "blob"})
            blob = self._blob(node["blob"])
            if tag == "bytes":
                return bytes(blob)
            if tag == "bytearray":
                return bytearray(blob)
            array = _read_npy(blob)
            if tag == "ndarray":
                return array
            if array.ndim != 0:
                raise MalformedMessageError("a NumPy scalar must be a 0-d array")
            return array[()]
        self._keys(node, {"$", "type", "v"} if tag == "dataclass" else {"$", "v"})
        content = node["v"]
        if tag == "float":
            if content not in ("nan", "inf", "-inf"):
                raise MalformedMessageError(f"{content!r} is not a non-finite float")
            return float(content)
        if tag == "complex":
            parts = self._list(content)
            if len(parts) != 2:
                raise MalformedMessageError("a complex number has two parts")
            real, imag = (self.value(part, depth + 1) for part in parts)
            if not all(type(part) is float for part in (real, imag)):
                raise MalformedMessageError("a complex number's parts are floats")
            return complex(real, imag)
        if tag in ("tuple", "set", "frozenset"):
            items = [self.value(item, depth + 1) for item in self._list(content)]
            try:
                return tuple(items) if tag == "tuple" else set(items) if tag == "set" else frozenset(items)
            except TypeError as exc:
                raise MalformedMessageError(f"a set member is not hashable ({exc})") from None
        if tag == "dict":
            if not isinstance(content, dict):
                raise MalformedMessageError("a dict is a JSON object")
            return {key: self.value(item, depth + 1) for key, item in content.items()}
        if tag == "pairs":
            result: dict[Any, Any] = {}
            for pair in self._list(content):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise MalformedMessageError("a dict item is a [key, value] pair")
                try:
                    result[self.value(pair[0], depth + 1)] = self.value(pair[1], depth + 1)
                except TypeError as exc:
                    raise MalformedMessageError(f"a dict key is not hashable ({exc})") from None
            return result
        if tag == "dataclass":
            if not isinstance(content, dict):
                raise MalformedMessageError("a dataclass's fields are a JSON object")
            cls = self._dataclass(node["type"])
            names = {f.name for f in dataclasses.fields(cls) if f.init}
            if set(content) != names:
                raise MalformedMessageError(f"the fields of {node['type']} do not match its definition")
            fields = {key: self.value(item, depth + 1) for key, item in content.items()}
            try:
                return cls(**fields)
            except Exception as exc:  # the class's own validation refused the values
                raise MalformedMessageError(
                    f"{node['type']} refused its fields ({type(exc).__name__}: {exc})"
                ) from None
        raise MalformedMessageError(f"unknown tag {tag!r}")

    def _blob(self, index: Any) -> memoryview:
        if type(index) is not int or not 0 <= index < len(self._blobs):
            raise MalformedMessageError("a blob index is out of range")
        return self._blobs[index]

    def _dataclass(self, name: Any) -> type:
        module, qualname = _split_name(name)
        allowed = module == self._dataclass_module if self._dataclass_module else _allowed_module(module)
        found = _lookup(module, qualname, import_module=self._dataclass_module is None) if allowed else None
        if not (isinstance(found, type) and dataclasses.is_dataclass(found)):
            raise MalformedMessageError(f"{module}.{qualname} is not allowed in a sandbox result")
        return found

    @staticmethod
    def _keys(node: dict[str, Any], keys: set[str]) -> None:
        if set(node) != keys:
            raise MalformedMessageError(f"a {node.get('$')!r} object has keys {sorted(node)}")

    @staticmethod
    def _list(node: Any) -> list[Any]:
        if not isinstance(node, list):
            raise MalformedMessageError("expected a JSON array")
        return node


def _read_npy(blob: memoryview) -> Any:
    """An array from `.npy` bytes, after checking the header promises exactly the bytes that follow."""
    import numpy as np

    data = bytes(blob)
    if not data.startswith(_NPY_MAGIC):
        raise MalformedMessageError("an array blob is not in the .npy format")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(stream)
        if dtype.hasobject:
            raise MalformedMessageError("an array of Python objects is not allowed")
        if math.prod(shape) * dtype.itemsize != len(data) - stream.tell():
            raise MalformedMessageError("an array's header does not match its data")
        stream.seek(0)
        array = np.load(stream, allow_pickle=False)
    except MalformedMessageError:
        raise
    except Exception as exc:
        raise MalformedMessageError(f"an array blob could not be read ({exc})") from None
    if not isinstance(array, np.ndarray) or stream.tell() != len(data):
        raise MalformedMessageError("an array blob has trailing data")
    return array


def _refuse_constant(token: str) -> Any:
    raise MalformedMessageError(f"{token} is not JSON")


def _function_name(fn: Callable[..., Any]) -> str:
    """`fn` as "module:qualname", checked to be a module-level function under ALLOWED_PACKAGES."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "<")
    if not module or module == "__main__" or "<" in qualname:
        raise ValueError("run_sandboxed needs a module-level function of an importable module")
    if not _allowed_module(module):
        raise ValueError(f"run_sandboxed runs functions of {', '.join(ALLOWED_PACKAGES)} only, not of {module}")
    return f"{module}:{qualname}"


def _resolve_function(name: Any) -> Callable[..., Any]:
    """The function a call names; MalformedMessageError for anything outside ALLOWED_PACKAGES or not a function."""
    module, qualname = _split_name(name)
    found = _lookup(module, qualname, import_module=True) if _allowed_module(module) else None
    if not callable(found) or isinstance(found, type):
        raise MalformedMessageError(f"{module}:{qualname} is not allowed to run in the sandbox")
    return cast(Callable[..., Any], found)


def _split_name(name: Any) -> tuple[str, str]:
    if not isinstance(name, str) or name.count(":") != 1:
        raise MalformedMessageError("a name is 'module:qualname'")
    module, qualname = name.split(":")
    if not _MODULE_NAME.fullmatch(module) or not _MODULE_NAME.fullmatch(qualname):
        raise MalformedMessageError(f"{name!r} is not a 'module:qualname' name")
    return module, qualname


def _allowed_module(module: str) -> bool:
    return module.startswith(ALLOWED_PACKAGES)


def _lookup(module: str, qualname: str, *, import_module: bool) -> Any:
    """The object at `qualname` in `module` when it was defined there (not imported into it), else None."""
    try:
        found: Any = importlib.import_module(module) if import_module else sys.modules.get(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    if getattr(found, "__module__", None) != module or getattr(found, "__qualname__", None) != qualname:
        return None
    return found


# Children and spares (parent side).


@dataclasses.dataclass(frozen=True)
class _Config:
    """What makes two children interchangeable: the GPU flag, sys.path, the environment and the layers."""

    gpu: bool
    path: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    layers: tuple[str, ...] = confinement.LAYERS

    @property
    def key(self) -> tuple[object, ...]:
        return (self.gpu, self.path, self.env, self.layers)

    @classmethod
    def current(cls, *, gpu: bool, layers: tuple[str, ...] | None = None) -> "_Config":
        env = {key: os.environ[key] for key in _ENV_KEPT if key in os.environ} | _ENV_CHILD
        if gpu:
            env.pop("CUDA_VISIBLE_DEVICES")
            env |= {key: value for key, value in os.environ.items() if key in _ENV_GPU}
        layers = _enforceable() if layers is None else layers
        return cls(gpu=gpu, path=tuple(sys.path), env=tuple(sorted(env.items())), layers=layers)


class _Child:
    """One started child: its process, the write end of its stdin, the read end of its result pipe, its log."""

    def __init__(
        self,
        process: "subprocess.Popen[bytes]",
        stdin_fd: int,
        result_fd: int,
        log: IO[bytes],
        config: _Config,
        relay: socket.socket,
    ) -> None:
        self.process = process
        self.stdin_fd = stdin_fd
        self.result_fd = result_fd
        self.relay = relay  # our end of the child's relay socket pair
        self.log = log
        self.config = config
        self.owner_pid = os.getpid()
        self.started = time.monotonic()
        self.ready = False
        self.usage = 0  # what the memory limit counts already, from the child's ready record
        self._ready_bytes = b""
        self._ready_lock = threading.Lock()  # warm_spare(wait_s=...) and a taker may wait at once
        self._closed = False

    @classmethod
    def spawn(cls, config: _Config, *, warm: bool) -> "_Child":
        log = tempfile.TemporaryFile()  # noqa: SIM115 (owned by the child object, closed by its user)
        stdin_read, stdin_write = os.pipe()
        result_read, result_write = os.pipe()
        relay_parent, relay_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = subprocess.Popen(  # noqa: S603 (our own interpreter and bootstrap, no shell)
                [
                    *(sys.executable, "-I", "-c", _BOOTSTRAP, str(result_write)),
                    *("warm" if warm else "cold", "gpu" if config.gpu else "cpu", str(os.getpid())),
                    *(",".join(config.layers), str(relay_child.fileno())),
                ],
                stdin=stdin_read,
                stdout=log,
                stderr=log,
                pass_fds=(result_write, relay_child.fileno()),
                env=dict(config.env),
                start_new_session=True,  # its own process group: a kill reaches anything it started
            )
        except BaseException:
            for fd in (stdin_write, result_read):
                os.close(fd)
            relay_parent.close()
            log.close()
            raise
        finally:
            os.close(stdin_read)
            os.close(result_write)
            relay_child.close()
        # never block on a child that stopped reading: writes wait in select() with a deadline
        os.set_blocking(stdin_write, False)
        child = cls(process, stdin_write, result_read, log, config, relay_parent)
        if _write_all(stdin_write, [json.dumps(list(config.path)).encode() + b"\n"], deadline=time.monotonic() + 30):
            child.kill()
            child.log.close()
            raise OSError("the sandbox child did not read its start-up data")
        return child

    def await_ready(self, deadline: float) -> bool:
        """Read the child's ready record (its imports are done); False when it died or the deadline passed."""
        with self._ready_lock:
            return self._await_ready(deadline)

    def _await_ready(self, deadline: float) -> bool:
        while not self.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not select.select([self.result_fd], [], [], remaining)[0]:
                continue
            chunk = os.read(self.result_fd, _READY.size - len(self._ready_bytes))
            if not chunk:
                return False
            self._ready_bytes += chunk
            if len(self._ready_bytes) == _READY.size:
                self._accept_ready(self._ready_bytes)
        return True

    def _accept_ready(self, record: bytes) -> None:
        mark, usage = _READY.unpack(record)
        if mark != b"R":
            raise MalformedMessageError("the child's ready record is malformed")
        self.ready, self.usage = True, usage

    def serve_relay(self, relay: Callable[[bytes], bytes] | None) -> threading.Thread | None:
        """Answer the child's relay requests with `relay` on a thread; without one, close the relay (EOF)."""
        if relay is None:
            with contextlib.suppress(OSError):
                self.relay.shutdown(socket.SHUT_RDWR)
            return None
        server = threading.Thread(target=_serve_relay, args=(self.relay, relay), name="sandbox-relay", daemon=True)
        server.start()
        return server

    def kill(self) -> None:
        """Kill the child's process group, reap it and close our ends of its pipes."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._close_fds()

    def forget(self) -> None:
        """Drop a child this process inherited through fork: close our copies of its fds, leave it running."""
        self.process.returncode = 0  # not ours to reap
        self._close_fds()
        with contextlib.suppress(OSError):
            self.log.close()

    def _close_fds(self) -> None:
        if not self._closed:
            self._closed = True
            for fd in (self.stdin_fd, self.result_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(OSError):
                self.relay.shutdown(socket.SHUT_RDWR)  # wakes a relay thread blocked on it
            self.relay.close()


def _serve_relay(end: socket.socket, relay: Callable[[bytes], bytes]) -> None:
    """The parent's relay loop: one request, one answer, until the child closes its end or breaks the protocol."""
    while True:
        try:
            mark, size = _RELAY_HEADER.unpack(_recv_exact(end, _RELAY_HEADER.size))
            if mark != b"Q" or size > MAX_RELAY_REQUEST_BYTES:
                end.sendall(_RELAY_HEADER.pack(b"E", 9) + b"malformed")
                return
            request = _recv_exact(end, size)
        except OSError:
            return  # the child is gone
        try:
            answer = relay(request)
            if not isinstance(answer, bytes) or len(answer) > MAX_RELAY_ANSWER_BYTES:
                raise ValueError("the relay's answer is not bytes within the cap")
            frame = _RELAY_HEADER.pack(b"A", len(answer)) + answer
        except (
            Exception
        ) as exc:  # its text may come from a remote endpoint: the type only, and the child hears "failed"
            logger.warning("the sandbox relay failed on a request (%s)", type(exc).__name__)
            frame = _RELAY_HEADER.pack(b"E", 6) + b"failed"
        try:
            end.sendall(frame)
        except OSError:
            return


def _recv_exact(end: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes from a stream socket; ConnectionError when it ends first."""
    parts: list[bytes] = []
    while size:
        chunk = end.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("the relay socket closed")
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


_lock = threading.Lock()
_spares: dict[tuple[object, ...], _Child] = {}
_opted_in = False  # set by warm_spare(): only processes that asked for spares hold one
_relay_socket: socket.socket | None = None  # in the child: its end of the relay
_relay_lock = threading.Lock()


def _env_prewarm() -> bool:
    return os.environ.get("MODELCOURT_SANDBOX_PREWARM", "1").strip().lower() not in ("0", "false", "no", "off")


def _prewarm_enabled(prewarm: bool | None) -> bool:
    if prewarm is not None:
        return prewarm
    return _opted_in and _env_prewarm()


def _take_spare(config: _Config, memory_bytes: int) -> _Child | None:
    """This configuration's spare, ready and able to take a job of `memory_bytes`, or None (then start cold)."""
    with _lock:
        child = _spares.pop(config.key, None)
    if child is None:
        return None
    if child.owner_pid != os.getpid():  # inherited through fork: its parent owns it
        child.forget()
        return None
    too_old = time.monotonic() - child.started > SPARE_MAX_AGE_S
    ready = not too_old and child.process.poll() is None and child.await_ready(time.monotonic() + _SPARE_READY_WAIT_S)
    if not ready:
        child.kill()
        child.log.close()
        return None
    if memory_bytes < child.usage + SPARE_HEADROOM_BYTES:
        with _lock:
            if config.key not in _spares:
                _spares[config.key] = child
                return None
        child.kill()
        child.log.close()
        return None
    return child


def _ensure_spare(config: _Config) -> None:
    """Start a spare for `config` unless this process has one; logs and carries on when it cannot."""
    with _lock:  # held while starting: two threads must not both start one
        current = _spares.get(config.key)
        if current is not None:
            if current.owner_pid == os.getpid():
                return
            current.forget()
        try:
            _spares[config.key] = _Child.spawn(config, warm=True)
        except OSError:
            logger.warning("could not start a spare sandbox child", exc_info=True)


def _after_fork_in_child() -> None:
    """A forked process inherits the spare table; the spares belong to its parent."""
    global _lock, _opted_in  # another thread may have held the lock at the fork
    _lock = threading.Lock()
    _opted_in = False  # the forked process opts in for itself (Celery's worker_process_init)
    for child in list(_spares.values()):
        child.forget()
    _spares.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(discard_spares)


def _hand_over(child: _Child, chunks: list[bytes], *, deadline: float) -> None:
    """Write the job to the child's stdin, until the deadline or until the child stops reading (it died)."""
    # past the deadline _receive reports the timeout at once; a dead reader's answer is read there too
    _write_all(child.stdin_fd, chunks, deadline=deadline)


def _write_all(fd: int, chunks: Iterable[bytes], *, deadline: float) -> bool:
    """Write every chunk to a non-blocking fd; True when the deadline passed first. A reader gone ends quietly."""
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            if not select.select([], [fd], [], remaining)[1]:
                continue
            try:
                view = view[os.write(fd, view[: 1 << 20]) :]
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return False
    return False


def _receive(fd: int, *, deadline: float) -> bytes | object | None:
    """The child's whole message, None when the deadline passed first, _TOO_LARGE past MAX_RESULT_BYTES."""
    chunks: list[bytes] = []
    size = 0
    limit = MAX_RESULT_BYTES + _READY.size
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
        if size > limit:
            return _TOO_LARGE
        chunks.append(chunk)


def _strip_ready(child: _Child, outcome: bytes) -> bytes:
    """A cold child's message starts with its ready record; an empty message stays empty (it died)."""
    if len(outcome) >= _READY.size and outcome[:1] == b"R":
        child.ready = True
        return outcome[_READY.size :]
    return outcome if not outcome else b"\x00" + outcome  # malformed: fails to decode below


def _wait(process: "subprocess.Popen[bytes]", timeout_s: float) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _decode(
    outcome: bytes | object | None,
    status: int | None,
    *,
    fn: Callable[..., Any],
    timeout_s: float,
    memory_bytes: int,
    cpu_s: int,
) -> Any:
    if outcome is None:
        raise SandboxError(f"the model took longer than {timeout_s:g} s", kind="timeout")
    if outcome is _TOO_LARGE or not isinstance(outcome, bytes):
        raise SandboxError(f"the model process returned more than {_size(MAX_RESULT_BYTES)} of data", kind="error")
    if status is not None and status < 0:
        number = -status
        if number == signal.SIGXCPU:
            raise SandboxError(f"the model used more than {cpu_s} s of CPU time", kind="timeout")
        raise SandboxError(f"the model process crashed (signal {number}: {_signal_name(number)})", kind="crash")
    if not outcome:
        raise SandboxError(f"the model process exited unexpectedly (exit code {status})", kind="crash")
    try:
        message = decode_message(outcome, dataclass_module=fn.__module__)
        if not (isinstance(message, dict) and set(message) == {"tag", "value"}):
            raise MalformedMessageError("the message is not a tagged result")
        tag, value = message["tag"], message["value"]
        if tag not in ("ok", "rejected", "memory", "error") or (tag != "ok" and not isinstance(value, str | None)):
            raise MalformedMessageError("unknown result tag")
    except Exception:  # anything at all: the bytes come from a process that ran untrusted code, so no text of it
        raise SandboxError(
            "the model process returned data that could not be read", kind="error", category="malformed"
        ) from None
    if tag == "ok":
        return value
    if tag == "rejected":  # a SandboxRejection of our own code: its reason is our sentence
        raise SandboxError(str(value)[:_MAX_REASON], kind="rejected")
    if tag == "memory":
        raise SandboxError(f"the model needed more than {_size(memory_bytes)} of memory", kind="memory")
    category = value if value in CATEGORY_REASONS else "exception"
    raise SandboxError(CATEGORY_REASONS[category], kind="error", category=category)


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


def _log_digest(log: IO[bytes]) -> str:
    """The child's output as its size and SHA-256: what it printed may come from the model, so never its text."""
    log.seek(0)
    digest, size = hashlib.sha256(), 0
    while chunk := log.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    return f"child output: {size} bytes, sha256 {digest.hexdigest()}"


# Below: runs in the child process only.


def _child_main(
    result_fd: int, *, warm: bool, gpu: bool, parent_pid: int, layers: tuple[str, ...], relay_fd: int
) -> None:
    """The child: confine (early part), preload (a spare), wait for the job, confine the rest, run, answer, exit."""
    global _relay_socket
    _limit(resource.RLIMIT_CORE, 0)
    confined = True
    try:  # first, while single-threaded: namespaces refuse a process with threads
        confinement.enter_child(parent_pid=parent_pid, layers=layers)
    except confinement.ConfinementError:
        confined = False  # answered below, when the job comes: the job never runs
    stdin = sys.stdin.buffer
    if warm:
        signal.alarm(int(SPARE_MAX_AGE_S) + 60)  # a spare nobody takes ends itself
        for name in PRELOADED:
            with contextlib.suppress(Exception):  # the job imports it again and reports what fails
                importlib.import_module(name)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _write(result_fd, [_READY.pack(b"R", _memory_in_use(data_only=gpu))])
    line = stdin.readline()
    signal.alarm(0)
    if not line:  # the parent closed our stdin or died: nothing to do
        os._exit(0)
    message: dict[str, Any]
    try:
        header = json.loads(line)
        if "rlimits" in layers:
            _apply_limits(header, warm=warm)
        scratch = str(header["scratch"])
        os.chdir(scratch)
        os.environ["TMPDIR"] = tempfile.tempdir = scratch
        _relay_socket = socket.socket(fileno=relay_fd)  # inherited: the seccomp filter forbids making sockets
        if not confined:
            raise confinement.ConfinementError("the early confinement failed")
        confinement.confine(layers=layers, paths=header["paths"])
    except (confinement.ConfinementError, OSError, ValueError, KeyError, TypeError):
        _write(result_fd, _encode_frame({"tag": "error", "value": "confinement"}))
        os._exit(0)
    try:
        call = decode_message(_read_frame(stdin))
        fn = _resolve_function(call["fn"])
    except BaseException:
        message = {"tag": "error", "value": "call"}
    else:
        try:
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(1)
            message = {"tag": "ok", "value": fn(*call["args"], **call["kwargs"])}
        except SandboxRejection as exc:
            message = {"tag": "rejected", "value": exc.reason}
        except BaseException as exc:
            message = (
                {"tag": "memory", "value": None} if _out_of_memory(exc) else {"tag": "error", "value": _category(exc)}
            )
    try:
        chunks = _encode_frame(message)
    except BaseException as exc:
        failure = {"tag": "memory", "value": None} if _out_of_memory(exc) else {"tag": "error", "value": "result"}
        chunks = _encode_frame(failure)
    try:
        _write(result_fd, chunks)
    finally:
        os._exit(0)  # skip interpreter teardown: slow with torch loaded, and nothing is left to do


def _apply_limits(header: Mapping[str, Any], *, warm: bool) -> None:
    cpu_s = int(header["cpu_s"])
    if warm:  # RLIMIT_CPU counts the whole process: the preloading's CPU time is not the job's
        cpu_s += math.ceil(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]))
    _limit(resource.RLIMIT_FSIZE, MAX_OUTPUT_BYTES)
    _limit(resource.RLIMIT_CPU, cpu_s, hard=cpu_s + 1)
    _limit(resource.RLIMIT_DATA if header.get("gpu") else resource.RLIMIT_AS, int(header["memory_bytes"]))


def _category(exc: BaseException) -> str:
    """The fixed category of an exception the call raised; its text decides, but never travels."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PermissionError) or (
            isinstance(current, OSError) and current.errno in (errno.EPERM, errno.EACCES)
        ):
            return "forbidden"
        if isinstance(current, RelayError):
            return "relay"
        text = str(current).lower()
        if any(sign in text for sign in _FORBIDDEN_SIGNS):
            return "forbidden"
        current = current.__cause__ or current.__context__
    return "exception"


def _read_frame(stream: IO[bytes]) -> bytes:
    header = stream.read(_FRAME.size)
    if len(header) != _FRAME.size:
        raise MalformedMessageError("the call ended early")
    _, text_size, blob_size = _FRAME.unpack(header)
    rest = stream.read(text_size + blob_size)
    if len(rest) != text_size + blob_size:
        raise MalformedMessageError("the call ended early")
    return header + rest


def _write(fd: int, chunks: Iterator[bytes] | list[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def _memory_in_use(*, data_only: bool) -> int:
    """What RLIMIT_DATA (with data_only) or RLIMIT_AS already counts in this process, in bytes."""
    field = "VmData:" if data_only else "VmSize:"
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


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
