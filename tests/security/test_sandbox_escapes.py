"""What model code could do in the sandbox child had it escaped its interpreter, and what a model answers there.

TorchScript reaches files (`torch.from_file`) but no socket, fork or exec, and ONNX none of them; the
`tests.security.escapes` functions try those directly, as the worst case. A well-behaved-looking model
that encodes a secret into its scores is run here too: registration cannot see it (it behaves on
zeros), so the only defence is that the read fails in the child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from tests.security import attacks, escapes
from tests.security.conftest import (
    PTH_NAME,
    ROOT,
    Heard,
    Secrets,
    Untouched,
    assert_sandbox_still_works,
    site_packages_pth,
)
from workers.sandbox import SandboxError, run_sandboxed

pytestmark = pytest.mark.django_db
LIGHT = {"timeout_s": 30.0, "memory_bytes": 1 << 30, "prewarm": False}  # no torch: a cold child is quick


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_the_sandbox_runs_these_functions_at_all() -> None:
    """The control for the tests below: a refusal there is the sandbox's, not a missing function."""
    assert run_sandboxed(escapes.sandboxed_ran, **LIGHT) == "ran"


def test_python_in_the_child_reads_no_secret(secrets: Secrets, heard: Heard) -> None:
    paths = [target.path for target in secrets.targets.values()]
    paths += [str(Path(settings.MODELCOURT_KEY_DIR)), str(ROOT / "config" / "settings.py")]

    try:
        found: object = run_sandboxed(escapes.sandboxed_read, paths, **LIGHT)
    except SandboxError as exc:
        found = exc.reason

    secrets.assert_absent(read=found, logs=heard.text())


def test_python_in_the_child_writes_nowhere_outside_its_scratch(
    secrets: Secrets, untouched: Untouched, outside: Path, heard: Heard
) -> None:
    targets = [
        untouched.plant(ROOT / "zz_hostile_planted.txt"),
        untouched.plant(ROOT / "ownership" / "zz_hostile_planted.py"),
        untouched.plant(outside / "zz_hostile_planted.txt"),
        untouched.plant(site_packages_pth()),
        untouched.plant(Path(settings.DATA_DIR) / "zz_hostile_planted.txt"),
        untouched.plant(Path(settings.MODELCOURT_KEY_DIR) / "zz_hostile_planted.pem"),
        untouched.plant(Path(settings.MEDIA_ROOT) / "zz_hostile_planted.txt"),
        untouched.plant(Path(secrets["verdict key"].path)),
    ]

    with contextlib.suppress(SandboxError):
        run_sandboxed(escapes.sandboxed_write_all, [str(t) for t in targets], **LIGHT)

    untouched.check()
    assert not list(site_packages_pth().parent.glob(PTH_NAME))
    secrets.assert_absent(logs=heard.text())
    assert_sandbox_still_works()


def test_the_child_reaches_no_socket_of_this_host() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)

        with contextlib.suppress(SandboxError):
            run_sandboxed(escapes.sandboxed_connect, listener.getsockname()[1], **LIGHT)

        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return  # nobody connected
        connection.close()
        pytest.fail("the sandbox child connected to a socket of this host")


def _named(name: str) -> list[int]:
    """Live processes whose name (/proc/<pid>/comm) is `name`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == name and _alive(int(entry)):
                    found.append(int(entry))
    return found


def test_no_process_the_child_starts_outlives_the_call() -> None:
    name = f"zzh{uuid.uuid4().hex[:12]}"

    with contextlib.suppress(SandboxError):
        run_sandboxed(escapes.sandboxed_fork_and_linger, 60.0, name, **LIGHT)

    time.sleep(0.5)  # the grandchild names itself just after the fork
    lingering = _named(name)
    for pid in lingering:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not lingering, f"the sandbox child's grandchildren {lingering} outlived the call"


def test_the_child_cannot_run_a_program(outside: Path, untouched: Untouched) -> None:
    target = untouched.plant(outside / "zz_hostile_exec.txt")

    with contextlib.suppress(SandboxError):
        run_sandboxed(escapes.sandboxed_exec, str(target), **LIGHT)

    assert not target.exists()
    assert_sandbox_still_works()


def test_a_model_that_behaves_on_zeros_cannot_put_a_secret_into_its_scores(
    secrets: Secrets, scratch_dir: Path, heard: Heard
) -> None:
    target = secrets["verdict key"]
    model = scratch_dir / "scores.pt"
    model.write_bytes(attacks.read_into_scores(target.path, target.size))
    rows = -(-target.size // attacks.CLASSES)  # enough rows for every byte of the key
    inputs = np.ones((rows, attacks.FEATURES), dtype=np.float32)

    try:
        scores = run_sandboxed(
            attacks.sandboxed_scores, inputs=inputs, files={"path": str(model)}, timeout_s=120, memory_bytes=4 << 30
        )
    except SandboxError as exc:
        answered: object = exc.reason
    else:
        answered = bytes(np.clip(np.asarray(scores), 0, 255).astype(np.uint8).ravel())

    secrets.assert_absent(scores=answered, logs=heard.text())
