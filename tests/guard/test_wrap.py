"""The Guard core, the predict wrapper and the WSGI middleware."""

import io
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import numpy as np
import pytest

from modelcourt.guard import Alarm, Guard, GuardConfig, GuardMiddleware

KEY = bytes(range(50, 82))


def _guard(tmp_path: Path, **settings: Any) -> Guard:
    def send(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        return 201, b'{"id": "ev", "commitment": "00ff"}'

    options: dict[str, Any] = {"rate": 0.5, "batch_size": 1000}
    options.update(settings)
    config = GuardConfig(key=KEY, model_id="m", num_classes=3, journal_dir=tmp_path / "journal", **options)
    return Guard(config, send=send, background=False)


def _model(xs: np.ndarray) -> np.ndarray:
    return np.stack([xs.sum(axis=1), -xs.sum(axis=1), xs[:, 0]], axis=1).astype(np.float32)


def test_a_wrapped_predict_function_serves_watermarked_scores(tmp_path: Path) -> None:
    xs = np.random.default_rng(0).normal(size=(400, 4)).astype(np.float32)
    with _guard(tmp_path) as guard:
        predict = guard.predict(_model)
        served = predict(xs, client="10.0.0.1")
        again = predict(xs, client="10.0.0.2")
        marked = served.argmax(axis=1) != _model(xs).argmax(axis=1)
        assert served.dtype == np.float32
        assert served.shape == (400, 3)
        assert np.array_equal(served, again)  # the same input, the same answer, whoever asks
        assert 150 < marked.sum() < 250  # rate 0.5
        assert guard.journal.pending_count == 2 * marked.sum()
        assert predict.__name__ == "_model"


def test_label_answers_keep_their_shape_and_dtype(tmp_path: Path) -> None:
    xs = np.random.default_rng(1).normal(size=(50, 4))
    true = _model(xs).argmax(axis=1).astype(np.int32)
    with _guard(tmp_path, rate=1.0) as guard:
        served = guard.answer("c", xs, true)
        column = guard.answer("c", xs, true[:, None])
    assert served.dtype == np.int32
    assert served.shape == (50,)
    assert column.shape == (50, 1)
    assert np.array_equal(column[:, 0], served)
    assert not np.any(served == true)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (np.zeros((5, 4)), "expected scores"),
        (np.array([0, 1, 2, 3, 0]), "0..2"),
        (np.array([0.5] * 5), "integers"),
        (np.full((5, 3), np.nan), "NaN"),
    ],
)
def test_answers_that_are_neither_scores_nor_labels_are_refused(
    tmp_path: Path, answer: np.ndarray, message: str
) -> None:
    with _guard(tmp_path) as guard, pytest.raises(ValueError, match=message):
        guard.answer("c", np.zeros((5, 2)), answer)


def test_when_the_journal_fails_the_true_answer_is_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xs = np.random.default_rng(2).normal(size=(30, 4))
    with _guard(tmp_path, rate=1.0) as guard:

        def broken(answers: object) -> int:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(guard.journal, "append", broken)
        served = guard.answer("c", xs, _model(xs))
        assert np.array_equal(served, _model(xs))
        assert "modelcourt_guard_journal_failures_total 1" in guard.metrics_text()
        assert "modelcourt_guard_watermarked_total 0" in guard.metrics_text()


def test_an_alarm_reaches_the_callback_with_the_tag_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Alarm] = []
    raw = "198.51.100.77"
    rng = np.random.default_rng(3)
    seeds = rng.normal(size=(2, 8)) * 10
    with _guard(tmp_path, prada_window=20, prada_min_distances=20) as guard:
        guard.on_alarm = seen.append
        for i in range(80):
            x = seeds[i % 2] + rng.normal(size=8) * (0.01 if i % 7 else 3.0)
            guard.answer(raw, x[None, :], np.eye(3)[[i % 2]])
        tag = guard.client_tag(raw)
        assert guard.client_of(tag) == raw  # the owner can map it back locally
        assert "modelcourt_guard_alarms_total 1" in guard.metrics_text()
    assert [alarm.client for alarm in seen] == [tag]
    assert raw not in caplog.text
    assert tag in caplog.text


def test_a_failing_callback_does_not_break_serving(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    with _guard(tmp_path, prada_window=20, prada_min_distances=20) as guard:

        def explode(alarm: Alarm) -> None:
            raise RuntimeError("owner bug")

        guard.on_alarm = explode
        for i in range(80):
            x = rng.normal(size=8) * (0.01 if i % 7 else 30.0)
            guard.answer("c", x[None, :], np.eye(3)[[i % 3]])


def test_client_tags_are_cached_least_recently_seen_first_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a guard that remembers 3 clients, and a count of the tags actually computed
    with _guard(tmp_path, prada_max_clients=3) as guard:
        computed: list[str] = []
        real = guard.watermark.client_tag

        def counting(client_id: str) -> str:
            computed.append(client_id)
            return real(client_id)

        monkeypatch.setattr(guard.watermark, "client_tag", counting)

        # when clients come and go
        tags = {raw: guard.client_tag(raw) for raw in ("a", "b")}
        assert guard.client_tag("a") == tags["a"]  # a returning client costs no HMAC, and is now the most recent
        tags.update({raw: guard.client_tag(raw) for raw in ("c", "d")})  # d pushes out b, the least recent

        # then every tag was computed once, the cache holds 3 clients, and a forgotten one is computed again
        assert computed == ["a", "b", "c", "d"]
        assert len(guard._tag_of) == len(guard._raw_of) == 3
        assert guard.client_of(tags["b"]) is None
        assert [guard.client_of(tags[raw]) for raw in "acd"] == ["a", "c", "d"]
        assert guard.client_tag("b") == tags["b"] == real("b")
        assert computed[-1] == "b"
        assert guard.client_of(tags["a"]) is None  # b came back: a was now the least recently seen


def test_served_answers_use_the_cached_tag(tmp_path: Path) -> None:
    xs = np.random.default_rng(9).normal(size=(20, 4))
    with _guard(tmp_path, rate=1.0, prada_max_clients=2) as guard:
        for client in ("x", "y", "z", "x"):
            guard.answer(client, xs[:5], _model(xs[:5]))
        entries = guard.journal.pending()
        assert {(e.client, e.tag) for e in entries} == {(c, guard.watermark.client_tag(c)) for c in "xyz"}
        assert len(guard._tag_of) == 2


def test_the_input_is_checked_once_per_call_before_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelcourt.guard import wrap

    checked: list[object] = []
    real = wrap._checked_inputs

    def counting(xs: Any) -> np.ndarray:
        checked.append(xs)
        return real(xs)

    monkeypatch.setattr(wrap, "_checked_inputs", counting)
    calls: list[np.ndarray] = []

    def model(xs: np.ndarray) -> np.ndarray:
        calls.append(xs)
        return _model(xs)

    xs = np.random.default_rng(10).normal(size=(6, 4))
    with _guard(tmp_path) as guard:
        predict = guard.predict(model)
        predict(xs, client="c")
        assert len(checked) == len(calls) == 1
        guard.answer("c", xs, _model(xs))
        assert len(checked) == 2
        with pytest.raises(ValueError, match="NaN or infinite"):
            predict(np.full((2, 4), np.nan), client="c")
        assert len(calls) == 1  # the model never saw the refused inputs
        assert guard.counts()["queries"] == 12


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_inputs_beyond_float32_are_refused_as_prada_refused_them(tmp_path: Path) -> None:
    with _guard(tmp_path, rate=0.0) as guard, pytest.raises(ValueError, match="PRADA needs finite inputs"):
        guard.answer("c", np.array([[1e39, 0.0]]), np.array([0]))


def test_metrics_text_is_prometheus_exposition(tmp_path: Path) -> None:
    with _guard(tmp_path) as guard:
        text = guard.metrics_text()
    lines = text.splitlines()
    names = [line.split()[0] for line in lines if not line.startswith("#")]
    for name in (
        "requests_total",
        "watermarked_total",
        "alarms_total",
        "pending_answers",
        "commits_total",
        "commit_failures_total",
    ):
        assert f"modelcourt_guard_{name}" in names
        assert f"# TYPE modelcourt_guard_{name} {'gauge' if name == 'pending_answers' else 'counter'}" in lines
    assert all(float(line.split()[1]) == 0 for line in lines if not line.startswith("#"))


# --- WSGI ---------------------------------------------------------------------------------------


def _app(calls: list[bytes]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        calls.append(body)
        if environ["REQUEST_METHOD"] == "GET" or environ["PATH_INFO"] != "/predict":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"hello"]
        xs = np.asarray(json.loads(body)["inputs"])
        if xs.shape[0] == 7:
            start_response("422 Unprocessable Entity", [("Content-Type", "application/json")])
            return [b'{"detail": "seven is too many"}']
        answer = json.dumps({"outputs": _model(xs).tolist()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "1"), ("X-Model", "v1")])
        return [answer[:10], answer[10:]]

    return app


def _call(app: Any, method: str, body: bytes = b"", **extra: str) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "CONTENT_LENGTH": str(len(body)), "PATH_INFO": "/predict"}
    environ.update(extra)
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO(body)
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, dict(headers)
        return lambda data: None

    payload = b"".join(app(environ, start_response))
    return captured["status"], captured["headers"], payload


def test_the_middleware_rewrites_json_answers(tmp_path: Path) -> None:
    calls: list[bytes] = []
    xs = np.random.default_rng(5).normal(size=(40, 4))
    with _guard(tmp_path, rate=1.0) as guard:
        app = GuardMiddleware(_app(calls), guard)
        status, headers, payload = _call(
            app, "POST", json.dumps({"inputs": xs.tolist()}).encode(), REMOTE_ADDR="10.1.2.3"
        )
        entries = guard.journal.pending()
    assert status == "200 OK"
    assert headers["X-Model"] == "v1"
    assert headers["Content-Length"] == str(len(payload))
    served = np.asarray(json.loads(payload)["outputs"])
    assert not np.any(served.argmax(axis=1) == _model(xs).argmax(axis=1))
    assert {entry.client for entry in entries} == {"10.1.2.3"}
    assert len(entries) == 40


def test_the_middleware_refuses_bad_requests_before_the_app(tmp_path: Path) -> None:
    calls: list[bytes] = []
    with _guard(tmp_path) as guard:
        app = GuardMiddleware(_app(calls), guard)
        for body in (b"{", b'{"inputs": [[NaN]]}', b'{"inputs": [1, 2]}'):
            status, _, payload = _call(app, "POST", body)
            assert status == "400 Bad Request"
            assert json.loads(payload)["error"]
    assert calls == []


def test_the_middleware_passes_other_requests_and_errors_through(tmp_path: Path) -> None:
    calls: list[bytes] = []
    with _guard(tmp_path) as guard:
        app = GuardMiddleware(_app(calls), guard, paths=["/predict"])
        assert _call(app, "GET")[2] == b"hello"
        status, _, payload = _call(app, "POST", json.dumps({"inputs": [[1.0, 2.0]] * 7}).encode())
        assert status.startswith("422")
        assert b"seven" in payload
        status, _, payload = _call(app, "POST", b"not json", PATH_INFO="/other")
        assert (status, payload, calls[-1]) == ("200 OK", b"hello", b"not json")  # not a guarded path


def test_the_middleware_turns_an_unreadable_answer_into_502(tmp_path: Path) -> None:
    def broken(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [b'{"outputs": "nope"}']

    with _guard(tmp_path) as guard:
        status, _, payload = _call(GuardMiddleware(broken, guard), "POST", b'{"inputs": [[1.0]]}')
    assert status == "502 Bad Gateway"
    assert b"nope" not in payload


def test_the_guard_imports_no_framework() -> None:
    code = (
        "import sys, modelcourt.guard, modelcourt.guard.proxy;"
        "print(sorted(m for m in ('django', 'torch', 'scipy', 'rest_framework', 'sklearn') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "[]"
