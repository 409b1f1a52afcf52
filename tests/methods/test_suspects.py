"""Suspect adapters: TorchScript, ONNX, in-memory and HTTP agree, batch, budget and fail clearly."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from verification.methods.suspects import (
    HttpSuspect,
    OnnxSuspect,
    QueryBudgetExceeded,
    Suspect,
    SuspectError,
    TorchModuleSuspect,
    TorchScriptSuspect,
    select_device,
)

torch.set_num_threads(1)

INPUTS = 64
CLASSES = 10


def make_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(INPUTS, 32), torch.nn.ReLU(), torch.nn.Linear(32, CLASSES)).eval()


class CountingModule(torch.nn.Module):
    """Records the batch sizes it is called with."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.inner(x)


@pytest.fixture(scope="module")
def mlp() -> torch.nn.Module:
    return make_mlp()


@pytest.fixture(scope="module")
def artifacts(mlp: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("suspects")
    script = folder / "mlp.pt"
    torch.jit.script(mlp).save(str(script))
    onnx_path = folder / "mlp.onnx"
    torch.onnx.export(
        mlp,
        (torch.zeros(1, INPUTS),),
        str(onnx_path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    return {"torchscript": script, "onnx": onnx_path}


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(50, INPUTS)).astype(np.float32)


# --- the HTTP test server -------------------------------------------------------------------------


class ServerState:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.requests: dict[str, int] = {}
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()

    def count(self, path: str) -> int:
        with self.lock:
            self.requests[path] = self.requests.get(path, 0) + 1
            return self.requests[path]

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(inputs.astype(np.float32))).numpy()


def make_handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def send_json(self, obj: object) -> None:
            self.send(200, json.dumps(obj).encode())

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            attempt = state.count(self.path)
            if self.path == "/v2/models/mlp/infer":
                (tensor,) = body["inputs"]
                assert tensor["datatype"] == "FP32"
                inputs = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
                state.batch_sizes.append(inputs.shape[0])
                out = state.logits(inputs)
                self.send_json(
                    {
                        "model_name": "mlp",
                        "outputs": [
                            {
                                "name": "logits",
                                "shape": list(out.shape),
                                "datatype": "FP32",
                                "data": out.ravel().tolist(),
                            }
                        ],
                    }
                )
                return
            if self.path.startswith("/v2/") or self.path == "/missing":
                self.send(404, b'{"error": "no such model"}')
                return
            inputs = np.asarray(body["inputs"], dtype=np.float32)
            state.batch_sizes.append(inputs.shape[0])
            out = state.logits(inputs)
            if self.path == "/json":
                self.send_json({"outputs": out.tolist()})
            elif self.path == "/json-probs":
                probs = torch.softmax(torch.from_numpy(out).double(), dim=1).numpy()
                self.send_json({"outputs": probs.tolist()})
            elif self.path == "/json-labels":
                self.send_json({"labels": out.argmax(axis=1).tolist()})
            elif self.path == "/garbage":
                self.send(200, b"<html>not json{")
            elif self.path == "/not-numbers":
                self.send_json({"outputs": [["a"] * CLASSES for _ in range(len(out))]})
            elif self.path == "/ragged":
                self.send_json({"outputs": [[1.0] * CLASSES, [1.0]]})
            elif self.path == "/wrong-shape":
                self.send_json({"outputs": np.zeros((len(out), CLASSES + 1)).tolist()})
            elif self.path == "/nan":
                row = ", ".join(["NaN"] * CLASSES)
                self.send(200, ('{"outputs": [' + ", ".join([f"[{row}]"] * len(out)) + "]}").encode())
            elif self.path == "/flaky":
                if attempt == 1:
                    self.send(500, b'{"error": "warming up"}')
                else:
                    self.send_json({"outputs": out.tolist()})
            elif self.path == "/always-500":
                self.send(503, b"{}")
            elif self.path == "/slow":
                time.sleep(2.0)
                # the client gave up long ago, as it should
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_json({"outputs": out.tolist()})
            elif self.path == "/big":
                self.send_json({"outputs": out.tolist(), "padding": "x" * 200_000})
            else:
                raise AssertionError(f"unexpected path {self.path}")

    return Handler


@pytest.fixture(scope="module")
def server(mlp: torch.nn.Module) -> Iterator[tuple[str, ServerState]]:
    state = ServerState(mlp)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            # the stub listens on loopback, which endpoints may reach only where the operator allows it
            patch.setenv("MODELCOURT_ENDPOINT_ALLOW_PRIVATE", "127.0.0.1/32")
            yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def http_suspect(base: str, path: str = "/json", **kwargs: Any) -> HttpSuspect:
    options: dict[str, Any] = {"num_classes": CLASSES, "input_shape": (INPUTS,), "timeout_s": 5, "backoff_s": 0.01}
    options.update(kwargs)
    return HttpSuspect(base + path, protocol="json", **options)


# --- agreement ------------------------------------------------------------------------------------


@pytest.fixture
def all_suspects(
    mlp: torch.nn.Module, artifacts: dict[str, Path], server: tuple[str, ServerState]
) -> dict[str, Suspect]:
    base, _ = server
    common: dict[str, Any] = {"num_classes": CLASSES, "input_shape": (INPUTS,)}
    return {
        "module": TorchModuleSuspect(make_mlp(), **common),
        "torchscript": TorchScriptSuspect(artifacts["torchscript"], **common),
        "onnx": OnnxSuspect(artifacts["onnx"], threads=1, **common),
        "v2": HttpSuspect(base, protocol="v2", model_name="mlp", **common),
        "json": http_suspect(base),
        "json-probs": http_suspect(base, "/json-probs", output_kind="probabilities"),
        "json-labels": http_suspect(base, "/json-labels", output_kind="labels"),
    }


def test_all_adapters_agree_on_labels(mlp: torch.nn.Module, all_suspects: dict[str, Suspect], x: np.ndarray) -> None:
    with torch.inference_mode():
        reference = mlp(torch.from_numpy(x))
    expected = reference.argmax(dim=1).numpy()
    for name, suspect in all_suspects.items():
        labels = suspect.labels(x)
        assert labels.dtype == np.int64, name
        np.testing.assert_array_equal(labels, expected, err_msg=name)
        assert suspect.queries == len(x), name
    for name in ("module", "torchscript", "onnx", "v2", "json"):
        logits = all_suspects[name].logits(x)
        assert logits.dtype == torch.float32
        assert logits.shape == (len(x), CLASSES)
        torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4, msg=name)
    # probabilities come back as log-probabilities: same softmax, same argmax
    log_probs = all_suspects["json-probs"].logits(x)
    torch.testing.assert_close(log_probs, torch.log_softmax(reference, dim=1), atol=1e-4, rtol=1e-4)


def test_white_box_flags_and_modules(all_suspects: dict[str, Suspect], x: np.ndarray) -> None:
    assert {name for name, s in all_suspects.items() if s.white_box} == {"module", "torchscript"}
    for name in ("module", "torchscript"):
        module = all_suspects[name].module()
        assert not module.training
        inputs = torch.from_numpy(x[:3]).requires_grad_()
        module(inputs).sum().backward()
        assert inputs.grad is not None
    for name in ("onnx", "v2", "json-labels"):
        with pytest.raises(SuspectError, match="black-box"):
            all_suspects[name].module()


def test_label_only_endpoint_refuses_logits(all_suspects: dict[str, Suspect], x: np.ndarray) -> None:
    suspect = all_suspects["json-labels"]
    with pytest.raises(SuspectError, match="label-only"):
        suspect.logits(x)
    assert suspect.queries == 0


def test_torch_tensor_input_accepted(all_suspects: dict[str, Suspect], x: np.ndarray) -> None:
    suspect = all_suspects["module"]
    np.testing.assert_array_equal(suspect.labels(torch.from_numpy(x)), suspect.labels(x))


# --- batching -------------------------------------------------------------------------------------


def test_module_batching_matches_one_big_batch(x: np.ndarray) -> None:
    counting = CountingModule(make_mlp())
    small = TorchModuleSuspect(counting, num_classes=CLASSES, input_shape=(INPUTS,), batch_size=7)
    big = TorchModuleSuspect(make_mlp(), num_classes=CLASSES, input_shape=(INPUTS,), batch_size=1000)
    torch.testing.assert_close(small.logits(x), big.logits(x), atol=1e-5, rtol=1e-5)
    assert counting.calls == [7] * 7 + [1]
    np.testing.assert_array_equal(small.labels(x), big.labels(x))


def test_onnx_batching_matches_one_big_batch(artifacts: dict[str, Path], x: np.ndarray) -> None:
    common: dict[str, Any] = {"num_classes": CLASSES, "input_shape": (INPUTS,), "threads": 1}
    small = OnnxSuspect(artifacts["onnx"], batch_size=6, **common)
    big = OnnxSuspect(artifacts["onnx"], batch_size=512, **common)
    torch.testing.assert_close(small.logits(x), big.logits(x), atol=1e-5, rtol=1e-5)


def test_http_batching(server: tuple[str, ServerState], x: np.ndarray) -> None:
    base, state = server
    state.batch_sizes.clear()
    small = HttpSuspect(
        base, protocol="v2", model_name="mlp", num_classes=CLASSES, input_shape=(INPUTS,), batch_size=16
    )
    big = HttpSuspect(base, protocol="v2", model_name="mlp", num_classes=CLASSES, input_shape=(INPUTS,), batch_size=64)
    torch.testing.assert_close(small.logits(x), big.logits(x), atol=1e-6, rtol=1e-6)
    assert state.batch_sizes == [16, 16, 16, 2, 50]
    assert small.requests == 4


# --- budget ---------------------------------------------------------------------------------------


def test_budget_is_exact_and_refused_query_is_not_sent(x: np.ndarray) -> None:
    counting = CountingModule(make_mlp())
    suspect = TorchModuleSuspect(counting, num_classes=CLASSES, input_shape=(INPUTS,), budget=10)
    suspect.labels(x[:6])
    assert (suspect.queries, suspect.remaining) == (6, 4)
    with pytest.raises(QueryBudgetExceeded, match=r"6 of 10"):
        suspect.logits(x[:5])
    assert suspect.queries == 6
    assert counting.calls == [6]
    suspect.logits(x[:4])
    assert (suspect.queries, suspect.remaining) == (10, 0)
    with pytest.raises(QueryBudgetExceeded, match=r"10 of 10"):
        suspect.labels(x[:1])
    assert counting.calls == [6, 4]


def test_http_budget_refuses_before_sending(server: tuple[str, ServerState], x: np.ndarray) -> None:
    base, _ = server
    suspect = http_suspect(base, "/json-labels", output_kind="labels", budget=60, batch_size=20)
    suspect.labels(x)
    sent = suspect.requests
    with pytest.raises(QueryBudgetExceeded, match="50 of 60"):
        suspect.labels(x[:11])
    assert suspect.requests == sent == 3
    assert suspect.queries == 50


# --- input and output validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, INPUTS - 1), dtype=np.float32),
        np.zeros((INPUTS,), dtype=np.float32),
        np.zeros((4, INPUTS, 1), dtype=np.float32),
        np.full((4, INPUTS), np.nan, dtype=np.float32),
        np.full((4, INPUTS), np.inf, dtype=np.float32),
        np.array([["a"] * INPUTS]),
    ],
    ids=["short", "one-sample", "extra-dim", "nan", "inf", "strings"],
)
def test_bad_inputs_refused_without_spending_budget(all_suspects: dict[str, Suspect], bad: np.ndarray) -> None:
    for suspect in all_suspects.values():
        with pytest.raises(ValueError, match=r"shape|NaN|numeric"):
            suspect.labels(bad)
        assert suspect.queries == 0


class Broken(torch.nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> Any:
        if self.kind == "nan":
            return torch.full((x.shape[0], CLASSES), float("nan"))
        if self.kind == "shape":
            return torch.zeros(x.shape[0], CLASSES + 1)
        if self.kind == "tuple":
            return (torch.zeros(x.shape[0], CLASSES),)
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    ("kind", "message"),
    [("nan", "NaN"), ("shape", "shape"), ("tuple", "tuple"), ("raise", "failed on a batch of 50 inputs$")],
)
def test_broken_module_gives_suspect_error(kind: str, message: str, x: np.ndarray) -> None:
    suspect = TorchModuleSuspect(Broken(kind), num_classes=CLASSES, input_shape=(INPUTS,))
    with pytest.raises(SuspectError, match=message) as raised:
        suspect.logits(x)
    assert "boom" not in str(raised.value)  # what the model raised is its own text: never repeated
    with pytest.raises(SuspectError, match=message):
        suspect.labels(x)


def test_unloadable_artifacts_give_suspect_error(tmp_path: Path, mlp: torch.nn.Module) -> None:
    pickled = tmp_path / "pickled.pt"
    torch.save(mlp, pickled)  # a pickle, which TorchScript's loader must refuse rather than unpickle
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(SuspectError, match="TorchScript"):
        TorchScriptSuspect(pickled, num_classes=CLASSES, input_shape=(INPUTS,))
    with pytest.raises(SuspectError, match="ONNX"):
        OnnxSuspect(garbage, num_classes=CLASSES, input_shape=(INPUTS,))


def test_onnx_wrong_declared_shape_gives_suspect_error(artifacts: dict[str, Path]) -> None:
    suspect = OnnxSuspect(artifacts["onnx"], num_classes=CLASSES, input_shape=(INPUTS * 2,), threads=1)
    with pytest.raises(SuspectError, match="failed"):
        suspect.labels(np.zeros((2, INPUTS * 2), dtype=np.float32))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/garbage", "not valid JSON"),
        ("/not-numbers", "str where a number"),
        ("/ragged", "ragged"),
        ("/wrong-shape", "shape"),
        ("/nan", "not valid JSON"),
        ("/missing", "HTTP 404"),
    ],
)
def test_http_garbage_gives_suspect_error(
    server: tuple[str, ServerState], x: np.ndarray, path: str, message: str
) -> None:
    base, _ = server
    suspect = http_suspect(base, path)
    with pytest.raises(SuspectError, match=message):
        suspect.logits(x[:3])
    assert suspect.requests == 1  # a garbage answer is final: no retry


def test_http_labels_out_of_range_and_probabilities_checked(server: tuple[str, ServerState], x: np.ndarray) -> None:
    base, _ = server
    with pytest.raises(SuspectError, match="probability"):
        http_suspect(base, "/json", output_kind="probabilities").logits(x[:3])  # logits are not probabilities
    with pytest.raises(SuspectError, match="outside"):
        http_suspect(base, "/json-labels", output_kind="labels", num_classes=3).labels(x[:20])


def test_http_v2_unknown_model_and_response_cap(server: tuple[str, ServerState], x: np.ndarray) -> None:
    base, _ = server
    unknown = HttpSuspect(base, protocol="v2", model_name="other", num_classes=CLASSES, input_shape=(INPUTS,))
    with pytest.raises(SuspectError, match="404"):
        unknown.labels(x[:2])
    capped = http_suspect(base, "/big", max_response_bytes=100_000)
    with pytest.raises(SuspectError, match="cap"):
        capped.labels(x[:2])


def test_http_retries_after_500(server: tuple[str, ServerState], x: np.ndarray, mlp: torch.nn.Module) -> None:
    base, _ = server
    suspect = http_suspect(base, "/flaky", retries=2)
    logits = suspect.logits(x[:5])
    with torch.inference_mode():
        torch.testing.assert_close(logits, mlp(torch.from_numpy(x[:5])), atol=1e-5, rtol=1e-5)
    assert suspect.requests == 2
    assert suspect.queries == 5  # a retried batch is charged once
    always = http_suspect(base, "/always-500", retries=2)
    with pytest.raises(SuspectError, match=r"3 attempts.*HTTP 503"):
        always.labels(x[:2])
    assert always.requests == 3


def test_http_timeout_gives_suspect_error_in_bounded_time(server: tuple[str, ServerState], x: np.ndarray) -> None:
    base, _ = server
    suspect = http_suspect(base, "/slow", timeout_s=0.3, retries=1, backoff_s=0.05)
    started = time.monotonic()
    with pytest.raises(SuspectError, match="2 attempts"):
        suspect.labels(x[:2])
    elapsed = time.monotonic() - started
    assert elapsed < 0.3 * 2 + 0.05 + 0.5
    assert suspect.requests == 2


def test_http_connection_refused_gives_suspect_error(x: np.ndarray) -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    suspect = http_suspect(f"http://127.0.0.1:{port}", "/json", retries=1)
    with pytest.raises(SuspectError, match="did not answer"):
        suspect.labels(x[:2])


def test_http_constructor_validation() -> None:
    common: dict[str, Any] = {"num_classes": CLASSES, "input_shape": (INPUTS,)}
    with pytest.raises(ValueError, match="http"):
        HttpSuspect("file:///etc/passwd", protocol="json", **common)
    with pytest.raises(ValueError, match="model name"):
        HttpSuspect("http://127.0.0.1:1", protocol="v2", **common)


# --- device selection -----------------------------------------------------------------------------


def test_select_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA"):
        select_device("cuda")
    fake_available: Callable[[], bool] = lambda: True  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_available", fake_available)
    assert select_device() == torch.device("cuda")
