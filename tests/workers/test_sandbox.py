"""The sandbox runs a call in a child process, enforces its limits and survives whatever the child does."""

import contextlib
import dataclasses
import enum
import io
import json
import math
import os
import pickle
import resource
import signal
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ownership.artifacts import ArtifactReport
from workers import sandbox
from workers.sandbox import (
    MalformedMessageError,
    SandboxError,
    SandboxRejection,
    child_pid,
    decode_message,
    encode_message,
    run_sandboxed,
    warm_spare,
)

MiB = 1 << 20
LIMITS = {"timeout_s": 20.0, "memory_bytes": 1024 * MiB}


@dataclass(frozen=True)
class Report:
    """A result type of this module: allowed back into the parent."""

    name: str
    values: np.ndarray


class Canary:
    """Unpickling this would create a directory: the parent must refuse it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


def scaled_sum(a: int, b: int, *, scale: int) -> int:
    return (a + b) * scale


def report(name: str) -> Report:
    return Report(name=name, values=np.arange(6, dtype=np.float32).reshape(2, 3))


def canary(path: str) -> Canary:
    return Canary(path)


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def allocate(size: int) -> int:
    return len(bytearray(size))


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


def exit_now(code: int) -> None:
    os._exit(code)


def reject(reason: str) -> None:
    raise SandboxRejection(reason)


def fail() -> None:
    raise ValueError("boom")


def spin_past_cpu_limit() -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (1, resource.getrlimit(resource.RLIMIT_CPU)[1]))
    while True:
        pass


def start_grandchild_and_hang(pid_file: str) -> None:
    grandchild = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(str(grandchild.pid))
    time.sleep(60)


def environment() -> dict[str, object]:
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "secret": os.environ.get("MODELCOURT_TEST_SECRET"),
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "address_space": resource.getrlimit(resource.RLIMIT_AS)[0],
        "pid": os.getpid(),
    }


def test_returns_the_result_of_the_call() -> None:
    assert run_sandboxed(scaled_sum, 2, 3, scale=10, **LIMITS) == 50


def test_returns_dataclasses_and_arrays_of_the_called_module() -> None:
    result = run_sandboxed(report, "r", **LIMITS)

    assert result.name == "r"
    np.testing.assert_array_equal(result.values, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_refuses_a_result_that_would_run_code_in_the_parent(tmp_path: Path) -> None:
    target = tmp_path / "created-by-unpickling"

    with pytest.raises(SandboxError) as caught:
        run_sandboxed(canary, str(target), **LIMITS)

    assert caught.value.kind == "error"
    assert caught.value.category == "result"
    assert "Canary" not in caught.value.reason
    assert not target.exists()


def test_kills_a_call_that_runs_past_the_timeout() -> None:
    started = time.monotonic()

    with pytest.raises(SandboxError) as caught:
        run_sandboxed(sleep, 60, timeout_s=1.5, memory_bytes=1024 * MiB)

    assert caught.value.kind == "timeout"
    assert caught.value.reason == "the model took longer than 1.5 s"
    assert time.monotonic() - started < 10


def test_stops_a_call_that_allocates_more_than_its_memory() -> None:
    with pytest.raises(SandboxError) as caught:
        run_sandboxed(allocate, 2048 * MiB, timeout_s=20, memory_bytes=512 * MiB)

    assert caught.value.kind == "memory"
    assert caught.value.reason == "the model needed more than 512 MiB of memory"


def test_the_same_allocation_fits_under_a_larger_limit() -> None:
    assert run_sandboxed(allocate, 256 * MiB, timeout_s=20, memory_bytes=1024 * MiB) == 256 * MiB


@pytest.mark.parametrize(("signum", "reason"), [(signal.SIGKILL, "signal 9: SIGKILL"), (signal.SIGSEGV, "signal 11")])
def test_reports_a_child_killed_by_a_signal(signum: int, reason: str) -> None:
    with pytest.raises(SandboxError) as caught:
        run_sandboxed(kill_self, signum, **LIMITS)

    assert caught.value.kind == "crash"
    assert caught.value.reason.startswith("the model process crashed (")
    assert reason in caught.value.reason


def test_reports_a_child_that_exits_without_answering() -> None:
    with pytest.raises(SandboxError) as caught:
        run_sandboxed(exit_now, 3, **LIMITS)

    assert caught.value.kind == "crash"
    assert caught.value.reason == "the model process exited unexpectedly (exit code 3)"


def test_passes_a_rejection_reason_through_unchanged() -> None:
    with pytest.raises(SandboxError) as caught:
        run_sandboxed(reject, "the model expects 3 inputs", **LIMITS)

    assert caught.value.kind == "rejected"
    assert caught.value.reason == "the model expects 3 inputs"


def test_reports_an_unexpected_exception_by_category_not_its_text() -> None:
    with pytest.raises(SandboxError) as caught:
        run_sandboxed(fail, **LIMITS)

    assert caught.value.kind == "error"
    assert caught.value.reason == "the model raised an error during inference"
    assert "boom" not in str(caught.value)


def test_the_cpu_limit_stops_a_spinning_child() -> None:
    with pytest.raises(SandboxError) as caught:
        run_sandboxed(spin_past_cpu_limit, **LIMITS)

    assert caught.value.kind == "timeout"
    assert "of CPU time" in caught.value.reason


def test_a_timeout_also_kills_processes_the_child_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # with Landlock and seccomp the child can neither start a process nor write the file: the kill is the backstop
    monkeypatch.setenv("MODELCOURT_SANDBOX_LAYERS", "rlimits,netns")
    pid_file = tmp_path / "grandchild.pid"

    with pytest.raises(SandboxError):
        run_sandboxed(start_grandchild_and_hang, str(pid_file), timeout_s=1.5, memory_bytes=1024 * MiB)

    grandchild = int(pid_file.read_text())
    for _ in range(50):
        state = Path(f"/proc/{grandchild}/stat")
        if not state.exists() or state.read_text().split(")")[1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"grandchild {grandchild} is still running")


def test_the_child_gets_one_thread_no_secrets_no_gpu_and_the_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELCOURT_TEST_SECRET", "hunter2")

    seen = run_sandboxed(environment, timeout_s=60, memory_bytes=4096 * MiB)

    assert seen == {
        "torch_threads": 1,
        "secret": None,
        "cuda_visible": "",
        "address_space": 4096 * MiB,
        "pid": seen["pid"],
    }
    assert seen["pid"] != os.getpid()


def test_the_parent_is_unaffected_by_failing_children() -> None:
    limits_before = [resource.getrlimit(which) for which in (resource.RLIMIT_AS, resource.RLIMIT_CPU)]

    for fn, arg in ((kill_self, signal.SIGKILL), (exit_now, 1), (allocate, 2048 * MiB)):
        with pytest.raises(SandboxError):
            run_sandboxed(fn, arg, timeout_s=20, memory_bytes=512 * MiB)

    assert [resource.getrlimit(which) for which in (resource.RLIMIT_AS, resource.RLIMIT_CPU)] == limits_before
    assert run_sandboxed(scaled_sum, 1, 1, scale=1, **LIMITS) == 2


def test_refuses_functions_the_child_cannot_import() -> None:
    with pytest.raises(ValueError, match="module-level function"):
        run_sandboxed(lambda: None, **LIMITS)


# Warm spares


WARM = {"timeout_s": 20.0, "memory_bytes": 3072 * MiB}  # leaves SPARE_HEADROOM_BYTES beyond the preloaded modules


def cpu_limit() -> tuple[int, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return resource.getrlimit(resource.RLIMIT_CPU)[0], usage.ru_utime + usage.ru_stime


def preloaded() -> bool:
    import sys

    return "torch" in sys.modules


@pytest.fixture
def spares() -> Iterator[dict[tuple[object, ...], sandbox._Child]]:
    """The spare table, empty before and after the test; spares are on whatever the environment says."""
    sandbox.discard_spares()
    yield sandbox._spares
    sandbox.discard_spares()


def _spare_pid() -> int | None:
    child = sandbox._spares.get(sandbox._Config.current(gpu=False).key)
    return None if child is None else child.process.pid


def _gone(pid: int) -> bool:
    state = Path(f"/proc/{pid}/stat")
    return not state.exists() or state.read_text().split(")")[1].split()[0] == "Z"


def test_a_warm_spare_runs_the_call_and_a_new_one_replaces_it(spares: dict[object, object]) -> None:
    # given a spare that finished its imports
    assert warm_spare(wait_s=60)
    spare = _spare_pid()

    # when a call comes
    pid = run_sandboxed(child_pid, **WARM)

    # then the spare ran it, with torch already loaded, and another spare waits for the next call
    assert pid == spare
    assert run_sandboxed(preloaded, **WARM) is True
    assert _spare_pid() not in (None, spare)


def test_a_spare_runs_one_call_and_exits(spares: dict[object, object]) -> None:
    assert warm_spare(wait_s=60)

    first = run_sandboxed(child_pid, **WARM)
    assert warm_spare(wait_s=60)
    second = run_sandboxed(child_pid, **WARM)

    assert first != second
    assert _gone(first)


def test_a_call_in_a_spare_hits_the_memory_limit(spares: dict[object, object]) -> None:
    assert warm_spare(wait_s=60)
    spare = _spare_pid()

    with pytest.raises(SandboxError) as caught:
        run_sandboxed(allocate, 4096 * MiB, timeout_s=20, memory_bytes=2048 * MiB)

    assert caught.value.kind == "memory"
    assert caught.value.reason == "the model needed more than 2 GiB of memory"
    assert _spare_pid() != spare


def test_a_call_in_a_spare_hits_the_wall_clock_limit(spares: dict[object, object]) -> None:
    assert warm_spare(wait_s=60)
    started = time.monotonic()

    with pytest.raises(SandboxError) as caught:
        run_sandboxed(sleep, 60, timeout_s=1.5, memory_bytes=2048 * MiB)

    assert caught.value.kind == "timeout"
    assert caught.value.reason == "the model took longer than 1.5 s"
    assert time.monotonic() - started < 10


def test_a_call_in_a_spare_hits_the_cpu_limit(spares: dict[object, object]) -> None:
    assert warm_spare(wait_s=60)

    with pytest.raises(SandboxError) as caught:
        run_sandboxed(spin_past_cpu_limit, **WARM)

    assert caught.value.kind == "timeout"
    assert "of CPU time" in caught.value.reason


def test_the_cpu_limit_of_a_spare_counts_from_the_cpu_time_its_imports_used(spares: dict[object, object]) -> None:
    assert warm_spare(wait_s=60)

    soft, used = run_sandboxed(cpu_limit, timeout_s=20, memory_bytes=3072 * MiB)

    # the job's own allowance is ceil(20) + 1 = 21 s on top of what the spare had used when it got the call
    assert used > 0.5
    assert 21 < soft <= 21 + math.ceil(used)


def test_the_wall_clock_starts_when_the_spare_gets_the_call(spares: dict[object, object]) -> None:
    # given a spare still importing torch (about two seconds here)
    assert warm_spare()

    # when a call that needs half a second under a 1.5 s limit comes at once
    result = run_sandboxed(sleep, 0.5, timeout_s=1.5, memory_bytes=3072 * MiB)

    # then the imports did not count against the call
    assert result is None


def test_a_tight_memory_limit_starts_cold_and_leaves_the_spare(spares: dict[object, object]) -> None:
    assert warm_spare(wait_s=60)
    spare = _spare_pid()

    pid = run_sandboxed(child_pid, timeout_s=20, memory_bytes=512 * MiB)

    assert pid != spare
    assert _spare_pid() == spare


def test_a_dead_or_old_spare_is_discarded(spares: dict[object, object], monkeypatch: pytest.MonkeyPatch) -> None:
    assert warm_spare(wait_s=60)
    dead = _spare_pid()
    assert dead is not None
    os.kill(dead, signal.SIGKILL)
    while sandbox._spares[sandbox._Config.current(gpu=False).key].process.poll() is None:
        time.sleep(0.01)  # until every thread of it is gone, not only its main thread

    assert run_sandboxed(child_pid, **WARM) != dead

    assert warm_spare(wait_s=60)
    old = _spare_pid()
    assert old is not None
    monkeypatch.setattr(sandbox, "SPARE_MAX_AGE_S", 0.0)
    assert run_sandboxed(child_pid, **WARM) != old
    assert _gone(old)


def test_prewarm_off_by_environment_starts_no_spare(
    spares: dict[object, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELCOURT_SANDBOX_PREWARM", "0")

    assert not warm_spare()
    assert run_sandboxed(scaled_sum, 2, 3, scale=10, **WARM) == 50
    assert spares == {}


def test_prewarm_off_by_argument_leaves_the_spare_alone(spares: dict[object, object]) -> None:
    assert warm_spare(wait_s=60)
    spare = _spare_pid()

    pid = run_sandboxed(child_pid, prewarm=False, **WARM)

    assert pid != spare
    assert _spare_pid() == spare


def test_a_spare_of_another_process_is_not_used(spares: dict[tuple[object, ...], sandbox._Child]) -> None:
    # given a spare that, as after a fork, belongs to another process
    assert warm_spare(wait_s=60)
    (child,) = spares.values()
    child.owner_pid = -1

    # when a call comes, it starts its own child and drops that spare without killing it (not its own)
    try:
        assert run_sandboxed(child_pid, **WARM) != child.process.pid
        assert _spare_pid() != child.process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signal.SIGKILL)
        os.waitpid(child.process.pid, 0)


def test_a_forked_process_does_not_use_its_parents_spare(spares: dict[object, object]) -> None:
    assert warm_spare(wait_s=60)
    spare = _spare_pid()
    read_fd, write_fd = os.pipe()

    pid = os.fork()
    if pid == 0:  # the forked process: report which child ran its call, then leave at once
        try:
            os.write(write_fd, str(run_sandboxed(child_pid, **WARM)).encode())
            sandbox.discard_spares()
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as answer:
        ran_in = int(answer.read())
    os.waitpid(pid, 0)

    assert ran_in != spare
    assert _spare_pid() == spare
    assert run_sandboxed(child_pid, **WARM) == spare


def test_calls_from_several_threads_each_get_their_own_child(spares: dict[object, object]) -> None:
    assert warm_spare(wait_s=60)

    with ThreadPoolExecutor(max_workers=4) as pool:
        pids = list(pool.map(lambda _: run_sandboxed(child_pid, **WARM), range(6)))

    assert len(set(pids)) == 6
    assert len(spares) == 1


# The channel: no pickle, only the types callers use, and nothing the parent did not expect


def echo(value: object) -> object:
    return value


def send_raw(data: bytes) -> None:
    import sys

    os.write(int(sys.argv[1]), data)
    os._exit(0)


def big(size: int) -> bytes:
    return b"x" * size


def _same(a: object, b: object) -> bool:
    """Equal and of the same types all the way down (NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if isinstance(a, float | np.floating):
        return bool(a == b or (math.isnan(a) and math.isnan(b)))  # type: ignore[arg-type]
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple)
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a):
        return _same(dataclasses.asdict(a), dataclasses.asdict(b))  # type: ignore[arg-type]
    return a == b


VALUES = [
    None,
    True,
    0,
    -(2**70),
    1.5,
    -0.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    "ünïcode \u2603",
    b"\x00\x80\xff",
    bytearray(b"ab"),
    (1, (2, "three")),
    [1, [2.0, None]],
    {1: "int key", (2, 3): "tuple key", "s": [1]},
    {"$": "not a tag", "nested": {"a": 1}},
    {1, 2},
    frozenset({"a"}),
    1 + 2j,
    np.int64(7),
    np.float32(0.25),
    np.bool_(True),
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.arange(12, dtype=np.int64).reshape(3, 4).T,  # not contiguous
    np.asfortranarray(np.ones((2, 3), dtype=np.float64)),
    np.zeros((0, 5), dtype=np.uint8),
    np.array(3.5),
    np.array([1 + 1j, np.nan], dtype=np.complex128),
    np.array(["a", "bc"]),
    Report(name="r", values=np.arange(3, dtype=np.float32)),
    # what verification.runs hands run_methods and gets back
    {
        "suspect": {"kind": "torchscript", "path": "/x/suspect.pt", "budget": None},
        "num_classes": 10,
        "input_shape": [64],
        "alpha": 0.001,
        "claims": [
            {
                "name": "watermark-abc",
                "kind": "watermark",
                "inputs": np.random.default_rng(0).random((40, 64), dtype=np.float32),
                "labels": np.arange(40, dtype=np.int64) % 10,
                "verifiable": True,
            }
        ],
        "dataset": None,
    },
    {"decision": {"tests": [{"p_value": 1e-9, "statistics": {"K": 40, "match_rate": float("nan")}}]}, "queries": 40},
    # what ownership.artifacts hands the child and gets back
    ("/x/m.onnx", (1, 8, 8), 10),
    ArtifactReport(format="onnx", input_shape=(1, 8, 8), num_classes=10, output_shape=(2, 10), probe_labels=(3, 0, 9)),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_values_round_trip_through_the_encoding(value: object) -> None:
    module = type(value).__module__ if dataclasses.is_dataclass(value) else None

    assert _same(decode_message(encode_message(value), dataclass_module=module), value)


def test_values_round_trip_through_a_child() -> None:
    plain = [v for v in VALUES if not dataclasses.is_dataclass(v)]

    assert _same(run_sandboxed(echo, plain, **LIMITS), plain)
    assert _same(run_sandboxed(report, "r", **LIMITS), report("r"))


def test_str_subclasses_travel_as_their_value() -> None:
    class Kind(enum.StrEnum):
        WATERMARK = "watermark"

    decoded = decode_message(encode_message({"kind": Kind.WATERMARK}))

    assert decoded == {"kind": "watermark"}
    assert type(decoded["kind"]) is str


def test_the_encoding_refuses_what_it_cannot_carry() -> None:
    for value in (object(), np.array([object()]), Canary("/nonexistent"), {Path("/")}):
        with pytest.raises((TypeError, ValueError)):
            encode_message(value)


def _frame(document: object, *blobs: bytes) -> bytes:
    text = json.dumps(document).encode()
    return struct.pack(">4sQQ", b"MCSB", len(text), sum(map(len, blobs))) + text + b"".join(blobs)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


CANARY_PATH = os.path.join(tempfile.gettempdir(), f"modelcourt-canary-{uuid.uuid4().hex}")
CRAFTED = {
    "a pickle": pickle.dumps(Canary(CANARY_PATH)),
    "a foreign dataclass": _frame(
        {"blobs": [], "value": {"$": "dataclass", "type": "ownership.artifacts:ArtifactReport", "v": {}}}
    ),
    "a callable by name": _frame({"blobs": [], "value": {"$": "dataclass", "type": "os:system", "v": {"a": "b"}}}),
    "an unknown tag": _frame({"blobs": [], "value": {"$": "reduce", "v": ["os.system", ["id"]]}}),
    "a pickled array": _frame(
        {"blobs": [len(b := _npy(np.array([{}], dtype=object)))], "value": {"$": "ndarray", "blob": 0}}, b
    ),
    "an array larger than its data": _frame(
        {"blobs": [len(b := _npy(np.zeros(4))[:-8])], "value": {"$": "ndarray", "blob": 0}}, b
    ),
    "an npz archive": _frame({"blobs": [4], "value": {"$": "ndarray", "blob": 0}}, b"PK\x03\x04"),
    "a blob out of range": _frame({"blobs": [], "value": {"$": "bytes", "blob": 3}}),
    "lengths that do not add up": _frame({"blobs": [10], "value": None}, b"short"),
    "a NaN token": _frame({"blobs": [], "value": 1}).replace(b"1}", b"NaN}"),
    "extra keys": _frame({"blobs": [], "value": {"$": "tuple", "v": [], "code": "x"}}),
    "deep nesting": _frame({"blobs": [], "value": json.loads("[" * 500 + "]" * 500)}),
}


@pytest.mark.parametrize("data", CRAFTED.values(), ids=CRAFTED.keys())
def test_decoding_refuses_crafted_messages(data: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        decode_message(data, dataclass_module=__name__)


@pytest.mark.parametrize(
    "data",
    [CRAFTED["a pickle"], CRAFTED["a foreign dataclass"], _frame({"blobs": [], "value": {"tag": "shell", "value": 1}})],
    ids=["pickle", "foreign dataclass", "unknown result tag"],
)
def test_refuses_a_crafted_result_from_the_child(data: bytes, tmp_path: Path) -> None:
    with pytest.raises(SandboxError) as caught:
        run_sandboxed(send_raw, data, **LIMITS)

    assert caught.value.kind == "error"
    assert caught.value.reason == "the model process returned data that could not be read"
    assert not Path(CANARY_PATH).exists()


def test_refuses_an_oversized_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "MAX_RESULT_BYTES", 1 * MiB)

    with pytest.raises(SandboxError) as caught:
        run_sandboxed(big, 2 * MiB, **LIMITS)

    assert caught.value.kind == "error"
    assert caught.value.reason == "the model process returned more than 1 MiB of data"


def test_refuses_functions_outside_the_allowed_packages() -> None:
    with pytest.raises(ValueError, match="runs functions of"):
        run_sandboxed(os.getcwd, **LIMITS)


@pytest.mark.parametrize(
    "name",
    ["os:system", "verification.methods.runner:np", "tests.workers.test_sandbox:Report", "tests:..", "builtins:eval"],
)
def test_the_child_resolves_only_functions_of_the_allowed_packages(name: str) -> None:
    with pytest.raises(MalformedMessageError):
        sandbox._resolve_function(name)


def test_the_child_refuses_a_disallowed_function_it_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a parent whose channel names a function the child must not run
    monkeypatch.setattr(sandbox, "_function_name", lambda fn: "subprocess:getoutput")

    with pytest.raises(SandboxError) as caught:
        run_sandboxed(scaled_sum, "true", **LIMITS)

    assert caught.value.kind == "error"
    assert caught.value.category == "call"
    assert "subprocess" not in caught.value.reason


def _dumpable() -> int:
    """The calling process's PR_GET_DUMPABLE (a sandboxed helper: read in the child)."""
    import ctypes

    return int(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))


def test_children_are_not_dumpable_so_siblings_cannot_reach_them() -> None:
    assert _dumpable() == 1  # this process is

    assert run_sandboxed(_dumpable, timeout_s=60, memory_bytes=1 << 30, prewarm=False) == 0
