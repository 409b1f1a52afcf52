"""The sandbox runs a call in a fresh child process, enforces its limits and survives whatever the child does."""

import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from workers.sandbox import SandboxError, SandboxRejection, run_sandboxed

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
    assert "is not allowed in a sandbox result" in caught.value.reason
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


def test_reports_an_unexpected_exception_by_type_and_message() -> None:
    with pytest.raises(SandboxError) as caught:
        run_sandboxed(fail, **LIMITS)

    assert caught.value.kind == "error"
    assert caught.value.reason == "the model process failed: ValueError: boom"


def test_the_cpu_limit_stops_a_spinning_child() -> None:
    with pytest.raises(SandboxError) as caught:
        run_sandboxed(spin_past_cpu_limit, **LIMITS)

    assert caught.value.kind == "timeout"
    assert "of CPU time" in caught.value.reason


def test_a_timeout_also_kills_processes_the_child_started(tmp_path: Path) -> None:
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
