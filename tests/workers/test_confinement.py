"""Each confinement layer stops its attack on its own, and the same attack succeeds with no layer on."""

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from ownership.artifacts import ArtifactRejected, inspect_artifact
from tests.workers import sandbox_attacks as attacks
from workers import confinement, sandbox
from workers.sandbox import SandboxError, SandboxUnavailable, run_sandboxed

MiB = 1 << 20
CALL = {"timeout_s": 30.0, "memory_bytes": 1024 * MiB, "prewarm": False}
SECRET = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHNlY3JldC1rZXktZm9yLXRlc3Rz\n-----END PRIVATE KEY-----\n"
Select = Callable[[str], None]
UNCONFINED = {"MODELCOURT_SANDBOX_ALLOW_UNCONFINED": confinement.ALLOW_UNCONFINED_VALUE}


@pytest.fixture
def layers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Select]:
    """Sets MODELCOURT_SANDBOX_LAYERS for the test; the enforceability check is cached per setting."""

    def select(value: str) -> None:
        monkeypatch.setenv(confinement.LAYERS_ENV, value)

    yield select
    confinement._ensure_enforceable.cache_clear()


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A signing key in a data folder, as settings places it."""
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    monkeypatch.setenv("MODELCOURT_DATA_DIR", str(data))
    monkeypatch.delenv("MODELCOURT_KEY_DIR", raising=False)
    key = data / "keys" / "verdict-test.pem"
    key.write_text(SECRET)
    return key


def _needs(*names: str) -> None:
    available = confinement.available_layers()
    missing = [name for name in names if not available[name]]
    if missing:  # on a host without them the service refuses models: tested in test_a_missing_layer_...
        pytest.skip(f"this host cannot enforce {', '.join(missing)}")


# Landlock


def test_landlock_alone_stops_reading_a_key_and_writing_outside_scratch(
    layers: Select, key_file: Path, tmp_path: Path
) -> None:
    _needs("landlock")
    layers("landlock")
    planted = tmp_path / "planted.pth"

    assert run_sandboxed(attacks.read_file, str(key_file), **CALL) == "EACCES"
    assert run_sandboxed(attacks.write_file, str(planted), **CALL) == "EACCES"
    assert not planted.exists()


def test_without_layers_the_same_reads_and_writes_succeed(layers: Select, key_file: Path, tmp_path: Path) -> None:
    layers("none")
    planted = tmp_path / "planted.pth"

    assert run_sandboxed(attacks.read_file, str(key_file), **CALL) == SECRET
    assert run_sandboxed(attacks.write_file, str(planted), **CALL) == "written"
    assert planted.exists()


def test_landlock_leaves_the_job_its_scratch_folder_and_removes_it_after(layers: Select) -> None:
    _needs("landlock")
    layers("landlock")

    seen = run_sandboxed(attacks.workspace, **CALL)

    assert seen["write"] == "written"
    assert seen["tmpdir"] == seen["cwd"]
    assert not Path(str(seen["cwd"])).exists()


def test_the_plan_never_grants_the_data_or_key_folder(key_file: Path, tmp_path: Path) -> None:
    (tmp_path / "scratch").mkdir()
    plan = confinement.plan_paths(scratch=str(tmp_path / "scratch"))
    data = str(key_file.parent.parent)
    root = str(Path(confinement.__file__).resolve().parent.parent)

    granted = plan["read"] + plan["write"] + plan["device"]
    assert root not in granted
    assert not any(path == data or path.startswith(data + os.sep) or data.startswith(path + os.sep) for path in granted)
    with pytest.raises(ValueError, match="never grants"):
        confinement.plan_paths(scratch=str(tmp_path / "scratch"), readable=[str(key_file.parent)])
    with pytest.raises(ValueError, match="never grants"):
        confinement.plan_paths(scratch=str(tmp_path / "scratch"), readable=[str(tmp_path)])  # holds the data folder
    with pytest.raises(ValueError, match="never grants"):
        confinement.plan_paths(scratch=str(tmp_path))
    with pytest.raises(ValueError, match="never grants"):
        confinement.plan_paths(scratch=str(tmp_path / "scratch"), writable=[str(key_file.parent.parent)])
    panels = key_file.parent.parent / "panels"  # ours, inside the data folder: a caller may declare it
    panels.mkdir()
    assert str(panels) in confinement.plan_paths(scratch=str(tmp_path / "scratch"), readable=[str(panels)])["read"]


# seccomp


def test_seccomp_alone_stops_fork_exec_and_inet_sockets(layers: Select) -> None:
    _needs("seccomp")
    layers("seccomp")

    assert run_sandboxed(attacks.start_processes, **CALL) == {"fork": "EPERM", "subprocess": "EPERM", "socket": "EPERM"}


def test_without_layers_fork_exec_and_sockets_work(layers: Select) -> None:
    layers("none")

    assert run_sandboxed(attacks.start_processes, **CALL) == {"fork": "ran", "subprocess": "ran", "socket": "made"}


def test_the_seccomp_filter_refuses_unknown_architectures() -> None:
    with pytest.raises(confinement.ConfinementError, match="riscv64"):
        confinement.seccomp_program("riscv64")
    assert confinement.seccomp_program("aarch64")[-1] == (0x06, 0, 0, 0x7FFF0000)


# network namespace


@contextlib.contextmanager
def _listener() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    try:
        yield server
    finally:
        server.close()


def _accepted(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return False
    return True


def test_netns_alone_stops_connecting_to_a_port_of_the_host(layers: Select) -> None:
    _needs("netns")
    layers("netns")
    with _listener() as server:
        outcome = run_sandboxed(attacks.connect, server.getsockname()[1], **CALL)

        assert outcome in ("ENETUNREACH", "ECONNREFUSED")
        assert not _accepted(server)


def test_without_layers_the_connection_reaches_the_host(layers: Select) -> None:
    layers("none")
    with _listener() as server:
        assert run_sandboxed(attacks.connect, server.getsockname()[1], **CALL) == "connected"
        assert _accepted(server)


# rlimits


def test_rlimits_alone_stop_an_allocation_past_the_limit(layers: Select) -> None:
    layers("rlimits")

    with pytest.raises(SandboxError) as caught:
        run_sandboxed(attacks.allocate, 768 * MiB, timeout_s=30, memory_bytes=384 * MiB, prewarm=False)

    assert caught.value.kind == "memory"


def test_without_layers_the_allocation_succeeds(layers: Select) -> None:
    layers("none")

    assert run_sandboxed(attacks.allocate, 768 * MiB, timeout_s=30, memory_bytes=384 * MiB, prewarm=False) == 768 * MiB


# nothing the model says reaches a person or a log


class ReadsTheKey(torch.nn.Module):
    """A model that reads a file with torch.from_file and raises its bytes: the attack this sandbox stops."""

    def __init__(self, path: str, size: int) -> None:
        super().__init__()
        self.path = path
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stolen = torch.from_file(self.path, shared=False, size=self.size, dtype=torch.uint8)
        values: list[int] = stolen.tolist()
        text = ""
        for byte in values:
            text += chr(byte)
        raise RuntimeError("key: " + text)


def _leaks(text: str) -> bool:
    lines = [line for line in SECRET.splitlines() if "PRIVATE KEY" not in line]
    return any(line in text for line in lines)


@pytest.mark.parametrize("selection", ["all", "none"])
def test_a_model_reading_the_key_gets_a_clean_rejection_without_its_bytes(
    layers: Select,
    key_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    selection: str,
) -> None:
    # with every layer the read fails; with none it succeeds, and still no byte of it comes back
    layers(",".join(confinement.LAYERS) if selection == "all" else "none")
    model = tmp_path / "thief.pt"
    torch.jit.script(ReadsTheKey(str(key_file), len(SECRET))).save(str(model))
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ArtifactRejected) as caught:
        inspect_artifact(model, input_shape=(1, 8, 8), num_classes=10, timeout_s=60)

    assert caught.value.reason.startswith("the model failed on a batch of 2 inputs")
    assert not _leaks(str(caught.value))
    assert not _leaks(caplog.text)


def test_the_childs_output_is_logged_as_a_digest_not_its_text(
    layers: Select,
    key_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    layers("none")  # the child reads the key and prints it
    caplog.set_level(logging.DEBUG)

    with pytest.raises(SandboxError) as caught:
        run_sandboxed(attacks.print_and_fail, str(key_file), **CALL)

    assert caught.value.reason == "the model raised an error during inference"
    assert not _leaks(str(caught.value))
    assert not _leaks(caplog.text)
    assert "sha256" in caplog.text


def test_a_forbidden_operation_is_named_as_such(layers: Select, key_file: Path) -> None:
    _needs("landlock")
    layers("landlock")

    with pytest.raises(SandboxError) as caught:
        run_sandboxed(attacks.open_file, str(key_file), **CALL)

    assert caught.value.category == "forbidden"
    assert caught.value.reason == "the model tried an operation the sandbox forbids"


# files, relay, enforceability


def test_files_travel_as_private_read_only_copies(layers: Select, tmp_path: Path) -> None:
    layers(",".join(confinement.LAYERS))
    original = tmp_path / "model.onnx"
    original.write_text("weights")

    seen = run_sandboxed(attacks.read_copy, files={"path": str(original)}, **CALL)

    assert seen["text"] == "weights"
    assert seen["path"] != str(original)
    assert seen["overwrite"] == "EACCES"
    assert original.read_text() == "weights"
    assert not Path(str(seen["path"])).exists()  # the scratch folder is gone


def test_a_path_in_the_arguments_is_not_readable_but_a_declared_one_is(layers: Select, tmp_path: Path) -> None:
    _needs("landlock")
    layers("landlock")
    panel = tmp_path / "panel"
    panel.mkdir()
    (panel / "manifest.json").write_text("{}")

    assert run_sandboxed(attacks.read_file, str(panel / "manifest.json"), **CALL) == "EACCES"
    assert run_sandboxed(attacks.read_file, str(panel / "manifest.json"), readable=[str(panel)], **CALL) == "{}"


def test_a_declared_writable_folder_takes_writes_and_nothing_else_does(layers: Select, tmp_path: Path) -> None:
    _needs("landlock")
    layers("landlock")
    progress, other = tmp_path / "progress", tmp_path / "other"
    progress.mkdir()
    other.mkdir()

    assert run_sandboxed(attacks.write_file, str(progress / "note.json"), writable=[str(progress)], **CALL) == "written"
    assert run_sandboxed(attacks.write_file, str(other / "note.json"), writable=[str(progress)], **CALL) == "EACCES"
    assert not (other / "note.json").exists()


def test_the_relay_answers_the_child_that_has_no_network(layers: Select) -> None:
    layers(",".join(confinement.LAYERS))
    asked: list[bytes] = []

    def relay(payload: bytes) -> bytes:
        asked.append(payload)
        return payload[::-1]

    assert run_sandboxed(attacks.ask_relay_twice, b"ping", b"query", relay=relay, **CALL) == [b"gnip", b"yreuq"]
    assert asked == [b"ping", b"query"]


def test_a_failing_relay_is_an_error_frame_and_no_relay_is_refused(layers: Select) -> None:
    layers(",".join(confinement.LAYERS))

    def broken(payload: bytes) -> bytes:
        raise OSError("remote said: " + SECRET)

    assert run_sandboxed(attacks.ask_relay, b"x", relay=broken, **CALL) == "RelayError: failed"
    assert run_sandboxed(attacks.ask_relay, b"x", **CALL) == "RelayError: the relay is not available to this call"


def test_a_missing_layer_refuses_models_unless_the_operator_allows_it(
    layers: Select,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    layers(",".join(confinement.LAYERS))
    monkeypatch.setattr(
        confinement, "available_layers", lambda: dict.fromkeys(confinement.LAYERS, True) | {"netns": False}
    )
    confinement._ensure_enforceable.cache_clear()

    with pytest.raises(confinement.ConfinementUnavailable, match="netns"):
        confinement.ensure_enforceable()
    with pytest.raises(SandboxUnavailable):
        run_sandboxed(attacks.allocate, 1, **CALL)

    for key, value in UNCONFINED.items():
        monkeypatch.setenv(key, value)
    with caplog.at_level(logging.WARNING):
        assert confinement.ensure_enforceable() == ("landlock", "seccomp", "rlimits")
    assert "SANDBOX UNCONFINED" in caplog.text


def test_the_policy_record_names_the_enforced_layers_and_hashes_the_policy(layers: Select) -> None:
    layers(",".join(confinement.LAYERS))
    full = confinement.policy_record()
    layers("rlimits")
    partial = confinement.policy_record()

    enforced = confinement.enforced_layers()
    assert partial == {"name": "modelcourt-sandbox-v1:rlimits", "sha256": partial["sha256"]}
    assert len(full["sha256"]) == 64
    assert full["sha256"] != partial["sha256"]
    assert full["name"].startswith("modelcourt-sandbox-v1:")
    assert confinement.policy_describe()["selected"] == ["rlimits"]
    assert enforced == ("rlimits",)


def test_sandbox_errors_from_the_child_are_our_sentences() -> None:
    assert set(sandbox.CATEGORY_REASONS) >= {"exception", "forbidden", "confinement", "call", "result", "relay"}
