"""The reverse proxy end to end on loopback, in front of a tiny model server (plain JSON and v2)."""

import http.client
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelcourt.guard import Guard, GuardConfig, serve
from modelcourt.guard.proxy import GuardProxyServer, _ProxyHandler

KEY = bytes(range(7, 39))
CLASSES = 4
WEIGHTS = np.random.default_rng(0).normal(size=(6, CLASSES))


def _probabilities(xs: np.ndarray) -> np.ndarray:
    logits = xs.reshape(len(xs), -1) @ WEIGHTS
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return probabilities


class _ModelHandler(BaseHTTPRequestHandler):
    """A model server: json at /predict, v2 at /v2/models/tiny/infer; ``answer`` picks what it answers."""

    server: "_ModelServer"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.path, body))
        request = json.loads(body)
        mode = self.server.answer
        if mode == "error":
            self._reply(503, b"Traceback: secret internals \x1b[2J")
            return
        if mode == "garbage":
            self._reply(200, b"<html>not json</html>")
            return
        if self.path.startswith("/v2/"):
            tensor = request["inputs"][0]
            xs = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
            p = _probabilities(xs)
            if mode == "labels":
                output = {"name": "label", "shape": [len(xs)], "datatype": "INT64", "data": p.argmax(axis=1).tolist()}
            elif mode == "int-scores":
                scores = np.round(p * 1e6).astype(np.int64).reshape(-1).tolist()
                output = {"name": "scores", "shape": list(p.shape), "datatype": "INT32", "data": scores}
            else:
                output = {"name": "probs", "shape": list(p.shape), "datatype": "FP32", "data": p.reshape(-1).tolist()}
            if mode in V2_DATATYPES:
                output["datatype"] = V2_DATATYPES[mode]
            answer: dict[str, Any] = {"model_name": "tiny", "outputs": [output, {"name": "leak", "data": [1]}]}
        else:
            xs = np.asarray(request["inputs"], dtype=np.float64)
            p = _probabilities(xs)
            if mode == "labels":
                answer = {"labels": p.argmax(axis=1).tolist()}
            elif mode == "wrong-shape":
                answer = {"outputs": p[:, :2].tolist()}
            else:
                answer = {"outputs": p.tolist(), "debug": "true labels here"}
        self._reply(200, json.dumps(answer).encode())

    def _reply(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


# answers whose v2 output carries a datatype the guard must not pass on
V2_DATATYPES = {"odd-datatype": "BYTES", "long-datatype": "FP32" * 1000, "fractional-integers": "INT64"}


class _ModelServer(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, bytes]]
    answer: str


@dataclass
class Stack:
    model: _ModelServer
    proxy_url: str
    guard: Guard
    sent: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    server: GuardProxyServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.proxy_url.removeprefix("http://").split(":")
        return host, int(port)

    def raw(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Send bytes on a fresh connection; everything the proxy answers before it closes the connection."""
        with socket.create_connection(self.address, timeout=timeout) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def post(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        host, port = self.proxy_url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        return response.status, json.loads(payload) if payload else None

    def get(self, path: str) -> tuple[int, bytes]:
        host, port = self.proxy_url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def _run(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def model_server() -> Iterator[_ModelServer]:
    server = _ModelServer(("127.0.0.1", 0), _ModelHandler)
    server.seen, server.answer = [], "outputs"
    _run(server)
    yield server
    server.shutdown()
    server.server_close()


def _stack(model: _ModelServer, tmp_path: Path, protocol: str, **settings: Any) -> Iterator[Stack]:
    sent: list[tuple[str, bytes, dict[str, str]]] = []

    def send(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        sent.append((url, body, dict(headers)))
        return 201, b'{"id": "ev", "commitment": "00ff"}'

    options: dict[str, Any] = {"rate": 1.0, "batch_size": 1000, "max_body_bytes": 64 * 1024, "input_shape": (6,)}
    options.update(settings)
    config = GuardConfig(key=KEY, model_id="m", num_classes=CLASSES, journal_dir=tmp_path / "journal", **options)
    guard = Guard(config, send=send, background=False)
    port = model.server_address[1]
    upstream = f"http://127.0.0.1:{port}" + ("/predict" if protocol == "json" else "")
    proxy = serve(config, upstream, ("127.0.0.1", 0), protocol, "tiny" if protocol == "v2" else None, guard=guard)  # type: ignore[arg-type]
    _run(proxy)
    try:
        yield Stack(model, proxy.url, guard, sent, proxy)
    finally:
        proxy.shutdown()
        proxy.server_close()
        guard.close()


@pytest.fixture
def json_stack(model_server: _ModelServer, tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(model_server, tmp_path, "json")


@pytest.fixture
def v2_stack(model_server: _ModelServer, tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(model_server, tmp_path, "v2")


XS = np.random.default_rng(1).normal(size=(5, 6))


def test_json_answers_come_back_watermarked_and_journaled(json_stack: Stack) -> None:
    status, answer = json_stack.post("/predict", json.dumps({"inputs": XS.tolist()}).encode())
    assert status == 200
    served, true = np.asarray(answer["outputs"]), _probabilities(XS)
    assert set(answer) == {"outputs"}  # the model's other fields are not passed on
    assert not np.any(served.argmax(axis=1) == true.argmax(axis=1))  # rate 1: every row is watermarked
    assert np.allclose(np.sort(served, axis=1), np.sort(true, axis=1))
    entries = json_stack.guard.journal.pending()
    assert [entry.client for entry in entries] == ["127.0.0.1"] * 5
    assert [entry.served for entry in entries] == served.argmax(axis=1).tolist()
    assert [entry.true for entry in entries] == true.argmax(axis=1).tolist()
    ((path, body),) = json_stack.model.seen
    assert path == "/predict"
    assert np.array_equal(np.asarray(json.loads(body)["inputs"]), XS)


def test_the_same_query_gets_the_same_answer(json_stack: Stack) -> None:
    body = json.dumps({"inputs": XS.tolist()}).encode()
    assert json_stack.post("/", body) == json_stack.post("/predict", body)


def test_label_only_answers_are_replaced(json_stack: Stack) -> None:
    json_stack.model.answer = "labels"
    status, answer = json_stack.post("/predict", json.dumps({"inputs": XS.tolist()}).encode())
    assert status == 200
    assert set(answer) == {"labels"}
    assert all(isinstance(label, int) for label in answer["labels"])
    assert not np.any(np.asarray(answer["labels"]) == _probabilities(XS).argmax(axis=1))


def test_v2_answers_come_back_watermarked(v2_stack: Stack) -> None:
    request = {
        "id": "r-1",
        "inputs": [{"name": "x", "shape": [5, 6], "datatype": "FP32", "data": XS.reshape(-1).tolist()}],
    }
    status, answer = v2_stack.post("/v2/models/tiny/infer", json.dumps(request).encode())
    assert status == 200
    (output,) = answer["outputs"]  # only the first output: the others could reveal the true answer
    assert output["shape"] == [5, CLASSES]
    assert output["name"] == "probs"
    served = np.asarray(output["data"]).reshape(5, CLASSES)
    true = _probabilities(XS.astype(np.float32).astype(np.float64))
    assert not np.any(served.argmax(axis=1) == true.argmax(axis=1))
    assert answer["model_name"] == "tiny"
    ((path, body),) = v2_stack.model.seen
    assert path == "/v2/models/tiny/infer"
    assert json.loads(body)["id"] == "r-1"


def test_v2_label_outputs_are_replaced(v2_stack: Stack) -> None:
    v2_stack.model.answer = "labels"
    request = {"inputs": [{"name": "x", "shape": [5, 6], "datatype": "FP32", "data": XS.tolist()}]}
    status, answer = v2_stack.post("/v2/models/tiny/infer", json.dumps(request).encode())
    assert status == 200
    assert not np.any(np.asarray(answer["outputs"][0]["data"]) == _probabilities(XS).argmax(axis=1))


def test_another_v2_model_name_is_not_found(v2_stack: Stack) -> None:
    request = {"inputs": [{"name": "x", "shape": [1, 6], "datatype": "FP32", "data": XS[0].tolist()}]}
    status, _ = v2_stack.post("/v2/models/other/infer", json.dumps(request).encode())
    assert status == 404
    assert not v2_stack.model.seen


HOSTILE_JSON = [
    b"not json",
    b'{"inputs": [[NaN, 1, 2, 3, 4, 5]]}',
    b'{"inputs": [[1e999, 1, 2, 3, 4, 5]]}',
    b'{"inputs": [[1, 2, 3, 4, 5, 6], [1, 2]]}',
    b'{"inputs": [[1, 2, 3]]}',
    b'{"inputs": [[true, 1, 2, 3, 4, 5]]}',
    b'{"inputs": [["1", 1, 2, 3, 4, 5]]}',
    b'{"inputs": []}',
    b'{"inputs": "x"}',
    b'{"nothing": 1}',
    b"[1, 2, 3]",
    b"[" * 30_000,
    b'{"inputs": [[1e39, 1, 2, 3, 4, 5]]}',
    b"\xff\xfe",
]


@pytest.mark.parametrize("body", HOSTILE_JSON, ids=range(len(HOSTILE_JSON)))
def test_hostile_json_requests_get_400_and_never_reach_the_model(json_stack: Stack, body: bytes) -> None:
    status, answer = json_stack.post("/predict", body)
    assert status == 400
    assert isinstance(answer["error"], str)
    assert answer["error"]
    assert json_stack.model.seen == []


HOSTILE_V2 = [
    {"inputs": [{"name": "x", "shape": [1, 6], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]}]},
    {"inputs": [{"name": "x", "shape": [1, 6], "datatype": "FP32", "data": [1, 2, 3]}]},
    {"inputs": [{"name": "x", "shape": [1, -6], "datatype": "FP32", "data": [1]}]},
    {"inputs": [{"name": "x", "shape": [1, 6], "datatype": "FP32", "data": [1] * 6}] * 2},
    {"inputs": [{"shape": [1, 6], "datatype": "FP32", "data": [1] * 6}]},
    {"inputs": [{"name": "x\u0000", "shape": [1, 6], "datatype": "FP32", "data": [1] * 6}]},
]


@pytest.mark.parametrize("request_body", HOSTILE_V2, ids=range(len(HOSTILE_V2)))
def test_hostile_v2_requests_get_400(v2_stack: Stack, request_body: dict[str, Any]) -> None:
    status, _ = v2_stack.post("/v2/models/tiny/infer", json.dumps(request_body).encode())
    assert status == 400
    assert v2_stack.model.seen == []


def test_a_huge_body_is_refused_unread(json_stack: Stack) -> None:
    body = b'{"inputs": [[' + b"1," * 40_000 + b"1]]}"
    status, answer = json_stack.post("/predict", body)
    assert status == 413
    assert "at most" in answer["error"]
    assert json_stack.model.seen == []


def test_a_request_without_content_length_is_refused(json_stack: Stack) -> None:
    host, port = json_stack.proxy_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.0 411")
    assert json_stack.model.seen == []


def test_the_models_error_status_passes_but_not_its_body(json_stack: Stack) -> None:
    json_stack.model.answer = "error"
    status, answer = json_stack.post("/predict", json.dumps({"inputs": XS.tolist()}).encode())
    assert status == 503
    assert answer == {"error": "the model server answered HTTP 503"}


@pytest.mark.parametrize("mode", ["garbage", "wrong-shape"])
def test_an_unreadable_model_answer_is_a_502(json_stack: Stack, mode: str) -> None:
    json_stack.model.answer = mode
    status, answer = json_stack.post("/predict", json.dumps({"inputs": XS.tolist()}).encode())
    assert status == 502
    assert "could not be read" in answer["error"]
    assert json_stack.guard.journal.pending_count == 0


def test_a_model_server_that_is_down_is_a_502(model_server: _ModelServer, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    model_server.server_address = ("127.0.0.1", closed_port)
    for stack in _stack(model_server, tmp_path, "json"):
        status, answer = stack.post("/predict", json.dumps({"inputs": XS.tolist()}).encode())
        assert (status, answer) == (502, {"error": "the model server could not be reached"})


def test_unknown_paths_and_methods(json_stack: Stack) -> None:
    assert json_stack.post("/elsewhere", b"{}")[0] == 404
    assert json_stack.get("/predict")[0] == 404
    assert json_stack.get("/healthz") == (200, b'{"status": "ok"}')


def test_metrics_are_served_to_loopback(json_stack: Stack) -> None:
    json_stack.post("/predict", json.dumps({"inputs": XS.tolist()}).encode())
    status, text = json_stack.get("/metrics")
    assert status == 200
    lines = text.decode().splitlines()
    assert "modelcourt_guard_requests_total 1" in lines
    assert "modelcourt_guard_watermarked_total 5" in lines
    assert "modelcourt_guard_pending_answers 5" in lines
    for name in ("alarms_total", "commits_total", "commit_failures_total"):
        assert any(line.startswith(f"modelcourt_guard_{name} ") for line in lines)


def test_a_trusted_client_header_names_the_client(model_server: _ModelServer, tmp_path: Path) -> None:
    for stack in _stack(model_server, tmp_path, "json", trust_client_header=True):
        body = json.dumps({"inputs": XS[:1].tolist()}).encode()
        assert stack.post("/predict", body, {"X-Client-Id": "customer-42"})[0] == 200
        assert stack.post("/predict", body)[0] == 400  # trusted, so required
        assert stack.post("/predict", body, {"X-Client-Id": "x" * 300})[0] == 400
        (entry,) = stack.guard.journal.pending()
        assert entry.client == "customer-42"
        assert entry.tag == stack.guard.client_tag("customer-42")
        stack.guard.flush()
        assert stack.sent
        assert all(b"customer-42" not in body for _, body, _ in stack.sent)


def test_an_untrusted_client_header_is_ignored(json_stack: Stack) -> None:
    body = json.dumps({"inputs": XS[:1].tolist()}).encode()
    assert json_stack.post("/predict", body, {"X-Client-Id": "spoofed"})[0] == 200
    (entry,) = json_stack.guard.journal.pending()
    assert entry.client == "127.0.0.1"


def test_the_proxy_refuses_a_bad_upstream(tmp_path: Path) -> None:
    config = GuardConfig(key=KEY, model_id="m", num_classes=CLASSES, journal_dir=tmp_path)
    with pytest.raises(ValueError, match="upstream"):
        serve(config, "file:///etc/passwd", ("127.0.0.1", 0), "json")
    with pytest.raises(ValueError, match="upstream"):
        serve(config, "http://user:pw@127.0.0.1/", ("127.0.0.1", 0), "json")


# --- hostile and broken clients ------------------------------------------------------------------


def _status(reply: bytes) -> tuple[int, bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b"\r\n", 1)[0].split()[1]), body


def _wait_for(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _open_becomes(server: GuardProxyServer, count: int) -> bool:
    """Whether the proxy's count of open connections reaches ``count`` within a few seconds."""
    return _wait_for(lambda: server.open_connections == count)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"BREWCOFFEE / HTTP/1.1", 501),
        (b"POST / HTCPCP/1.0", 400),
        (b"hello-teapot there", 400),
        (b"GET / HTTP/9.9", 505),
        (b"GET /healthz HTTP/1.1 teapot", 400),
    ],
    ids=["unknown-method", "bad-version", "bad-syntax", "future-version", "four-words"],
)
def test_a_malformed_request_line_gets_a_json_sentence_that_quotes_none_of_it(
    json_stack: Stack, line: bytes, expected: int
) -> None:
    reply = json_stack.raw(line + b"\r\nHost: x\r\n\r\n")
    status, body = _status(reply)
    assert status == expected
    assert reply.startswith(b"HTTP/1.0 ")
    error = json.loads(body)["error"]
    assert isinstance(error, str)
    assert error
    for word in (b"BREWCOFFEE", b"HTCPCP", b"teapot", b"9.9"):
        assert word not in reply


def test_a_head_request_gets_its_refusal_without_a_body(json_stack: Stack) -> None:
    status, body = _status(json_stack.raw(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert (status, body) == (501, b"")


def test_a_request_that_trickles_in_is_answered_408_at_its_deadline(
    json_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ProxyHandler, "timeout", 0.2)  # the whole request then has 3 x 0.2 s
    with socket.create_connection(json_stack.address, timeout=5) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        started = time.monotonic()
        reply = b""
        while not reply and time.monotonic() - started < 5:
            sock.sendall(b" ")  # one byte every 0.1 s: never idle for a whole idle timeout
            sock.settimeout(0.1)
            try:
                reply = sock.recv(65536)
            except TimeoutError:
                continue
        elapsed = time.monotonic() - started
        sock.settimeout(5)
        while chunk := sock.recv(65536):  # the rest of the answer, up to the close
            reply += chunk
    status, body = _status(reply)
    assert status == 408
    assert json.loads(body) == {"error": "the request body did not arrive in time"}
    assert elapsed < 1.5, f"answered after {elapsed:.2f} s; the deadline is 0.6 s"
    assert json_stack.model.seen == []


def test_a_client_that_stops_mid_body_gets_408_and_one_log_line(
    json_stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_ProxyHandler, "timeout", 0.2)
    caplog.set_level(logging.DEBUG, logger="modelcourt.guard")
    with socket.create_connection(json_stack.address, timeout=5) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        status, _ = _status(sock.recv(65536))
    assert status == 408
    records = [r for r in caplog.records if r.name == "modelcourt.guard" and r.levelno >= logging.INFO]
    assert [r.getMessage() for r in records] == ["a request body did not arrive in time; it was answered 408"]
    assert all(r.exc_info is None for r in caplog.records)


def test_a_client_that_resets_mid_body_is_one_log_line_not_a_failure(
    json_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelcourt.guard")
    sock = socket.create_connection(json_stack.address, timeout=5)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
    time.sleep(0.1)  # the proxy is reading the body now
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset, not an orderly end
    assert _wait_for(lambda: any("broke off" in r.getMessage() for r in caplog.records))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.exc_info is None for r in caplog.records)


def test_connections_beyond_the_cap_get_503_at_once(model_server: _ModelServer, tmp_path: Path) -> None:
    for stack in _stack(model_server, tmp_path, "json", max_connections=2):
        server = stack.server
        assert server is not None
        idle = [socket.create_connection(stack.address, timeout=5) for _ in range(2)]
        try:
            assert _open_becomes(server, 2)
            started = time.monotonic()
            status, body = _status(stack.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
            assert time.monotonic() - started < 1.0
            assert status == 503
            assert "try again" in json.loads(body)["error"]
        finally:
            idle.pop().close()
        assert _open_becomes(server, 1)
        assert stack.get("/healthz") == (200, b'{"status": "ok"}')
        idle.pop().close()
        assert _open_becomes(server, 0)


@pytest.mark.parametrize("mode", list(V2_DATATYPES))
def test_a_v2_output_datatype_the_guard_does_not_pass_on_is_a_502(v2_stack: Stack, mode: str) -> None:
    v2_stack.model.answer = mode  # fractional-integers: the probabilities, said to be INT64
    request = {"inputs": [{"name": "x", "shape": [5, 6], "datatype": "FP32", "data": XS.tolist()}]}
    status, answer = v2_stack.post("/v2/models/tiny/infer", json.dumps(request).encode())
    assert status == 502
    assert "could not be read" in answer["error"]
    assert "BYTES" not in answer["error"]
    assert len(answer["error"]) < 200
    assert v2_stack.guard.journal.pending_count == 0


def test_integer_v2_scores_come_back_as_integers(v2_stack: Stack) -> None:
    v2_stack.model.answer = "int-scores"
    request = {"inputs": [{"name": "x", "shape": [5, 6], "datatype": "FP32", "data": XS.tolist()}]}
    status, answer = v2_stack.post("/v2/models/tiny/infer", json.dumps(request).encode())
    assert status == 200
    (output,) = answer["outputs"]
    assert output["datatype"] == "INT32"
    assert all(type(value) is int for value in output["data"])
    served = np.asarray(output["data"]).reshape(5, CLASSES)
    true = np.round(_probabilities(XS.astype(np.float32).astype(np.float64)) * 1e6)
    assert not np.any(served.argmax(axis=1) == true.argmax(axis=1))
    assert np.abs(np.sort(served, axis=1) - np.sort(true, axis=1)).max() <= 1  # the model rounds its own floats
