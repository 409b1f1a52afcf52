"""Committing the journal: batches by count and by age, retries that keep answers pending, no double commit."""

import email.parser
import email.policy
import io
import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from modelcourt.guard import Alarm, Guard, GuardConfig
from modelcourt.guard.commit import CommitError, batch_npz

KEY = bytes(range(100, 132))
RAW_CLIENT = "alice.raw-id@203.0.113.9"


class FakeService:
    """Records what the guard sends; answers 201 (or what ``fail_with`` says) like the service would."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []
        self.fail_with: tuple[int, bytes] | None = None
        self.unreachable = False
        self.batch_arrived = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        with self._lock:
            self.sent.append((url, body, dict(headers)))
            if self.unreachable:
                raise OSError("connection refused")
            if self.fail_with is not None:
                return self.fail_with
            number = len(self.batches())
        self.batch_arrived.set()
        if url.endswith("/evidence/"):
            answer = {"id": f"ev-{number}", "commitment": f"{number:064x}", "receipt_url": f"/r/{number}"}
            return 201, json.dumps(answer).encode()
        return 201, b'{"id": 1}'

    def batches(self) -> list[dict[str, np.ndarray]]:
        return [_npz_of(body, headers) for url, body, headers in self.sent if url.endswith("/evidence/")]

    def alarms(self) -> list[dict[str, object]]:
        return [json.loads(body) for url, body, _ in self.sent if url.endswith("/guard/alarms/")]


def _npz_of(body: bytes, headers: Mapping[str, str]) -> dict[str, np.ndarray]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + body
    )
    fields = {part.get_param("name", header="content-disposition"): part.get_content() for part in message.iter_parts()}
    assert fields["kind"].strip() == "api_watermark"
    with np.load(io.BytesIO(fields["file"]), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _config(tmp_path: Path, **overrides: object) -> GuardConfig:
    settings: dict[str, object] = {
        "key": KEY,
        "model_id": "5f0c7a52-4c55-4d4e-9a55-2b1e1f4c1d10",
        "num_classes": 10,
        "service_url": "http://service.example.org:8000",
        "token": "owner-token",
        "journal_dir": tmp_path / "journal",
        "rate": 1.0,  # every answer watermarked: the tests count answers
        "batch_size": 5,
        "batch_seconds": 300.0,
        "retry_base_s": 0.05,
        "retry_max_s": 0.2,
    }
    settings.update(overrides)
    return GuardConfig(**settings)  # type: ignore[arg-type]


def _answer(guard: Guard, n: int, *, seed: int = 0, client: str = RAW_CLIENT) -> None:
    rng = np.random.default_rng(seed)
    guard.answer(client, rng.normal(size=(n, 1, 4, 4)).astype(np.float32), rng.normal(size=(n, 10)))


def test_a_full_batch_is_committed_by_the_thread(tmp_path: Path) -> None:
    service = FakeService()
    with Guard(_config(tmp_path), send=service) as guard:
        _answer(guard, 4)
        assert not service.batch_arrived.wait(0.3)  # 4 < 5: nothing due for 300 s
        _answer(guard, 1, seed=1)
        assert service.batch_arrived.wait(5)
        deadline = time.monotonic() + 5
        while guard.journal.pending_count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guard.journal.pending_count == 0
    (batch,) = service.batches()
    assert batch["inputs"].shape == (5, 1, 4, 4)


def test_a_batch_is_committed_when_its_oldest_answer_is_old_enough(tmp_path: Path) -> None:
    service = FakeService()
    with Guard(_config(tmp_path, batch_seconds=0.2), send=service) as guard:
        _answer(guard, 2)
        started = time.monotonic()
        assert service.batch_arrived.wait(5)
        assert time.monotonic() - started >= 0.15
    assert [len(batch["labels"]) for batch in service.batches()] == [2]


def test_age_is_measured_on_the_guards_clock(tmp_path: Path) -> None:
    now = [1000.0]
    service = FakeService()
    with Guard(_config(tmp_path, batch_seconds=60), send=service, background=False, clock=lambda: now[0]) as guard:
        _answer(guard, 3)
        assert guard.committer.run_once() == []
        now[0] += 59.9
        assert guard.committer.run_once() == []
        now[0] += 0.2
        (commit,) = guard.committer.run_once()
    assert (commit["first_seq"], commit["last_seq"], commit["evidence_id"]) == (1, 3, "ev-1")


def test_the_batch_file_holds_exactly_the_contracts_arrays(tmp_path: Path) -> None:
    service = FakeService()
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(5, 1, 4, 4)).astype(np.float32)
    scores = rng.normal(size=(5, 10))
    with Guard(_config(tmp_path), send=service, background=False, clock=lambda: 1234.5) as guard:
        served = guard.answer(RAW_CLIENT, xs, scores)
        guard.flush()
        tag = guard.client_tag(RAW_CLIENT)
    (batch,) = service.batches()
    assert set(batch) == {"inputs", "labels", "clients", "served_at"}
    assert batch["inputs"].dtype == np.float32
    assert np.array_equal(batch["inputs"], xs)
    assert batch["labels"].dtype == np.int64
    assert np.array_equal(batch["labels"], served.argmax(axis=1))
    assert not np.any(batch["labels"] == scores.argmax(axis=1))
    assert batch["clients"].dtype == np.uint8
    assert batch["clients"].shape == (5, 16)
    assert {bytes(row).hex() for row in batch["clients"]} == {tag}
    assert batch["served_at"].dtype == np.float64
    assert set(batch["served_at"]) == {1234.5}
    url, _, headers = service.sent[0]
    assert url == "http://service.example.org:8000/api/v1/models/5f0c7a52-4c55-4d4e-9a55-2b1e1f4c1d10/evidence/"
    assert headers["Authorization"] == "Token owner-token"


def test_a_failing_commit_keeps_its_answers_pending_and_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = FakeService()
    service.fail_with = (503, b"")
    with Guard(_config(tmp_path), send=service) as guard:
        _answer(guard, 5)
        deadline = time.monotonic() + 5
        while guard.committer.failures_total < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guard.committer.failures_total >= 2  # retried by itself
        assert guard.journal.pending_count == 5
        assert "5 answers pending" in caplog.text
        service.fail_with = None
        deadline = time.monotonic() + 5
        while guard.journal.pending_count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guard.journal.pending_count == 0
    assert "modelcourt_guard_commit_failures_total" in guard.metrics_text()


def test_a_refusal_is_logged_escaped_and_backs_off_longer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    service = FakeService()
    service.fail_with = (400, json.dumps({"detail": "bad batch\x1b[31m\nforged line"}).encode())
    config = _config(tmp_path, retry_base_s=1.0, retry_max_s=10.0)
    with Guard(config, send=service, background=False, clock=lambda: now[0]) as guard:
        _answer(guard, 5)
        with caplog.at_level(logging.WARNING, logger="modelcourt.guard"):
            assert guard.committer.run_once() == []
        assert "bad batch\\x1b[31m\\x0aforged line" in caplog.text
        assert "\x1b" not in caplog.text
        sent = len(service.sent)
        now[0] = 29.0  # a 5xx would have been retried after 1 s; a 4xx waits 30 times longer
        guard.committer.run_once()
        assert len(service.sent) == sent
        now[0] = 30.5
        guard.committer.run_once()
        assert len(service.sent) == sent + 1
        assert guard.journal.pending_count == 5


def test_flush_ignores_the_backoff_and_says_what_failed(tmp_path: Path) -> None:
    service = FakeService()
    service.unreachable = True
    with Guard(_config(tmp_path), send=service, background=False) as guard:
        _answer(guard, 7)
        with pytest.raises(CommitError, match="could not be reached") as failure:
            guard.flush()
        assert failure.value.committed == []
        service.unreachable = False
        commits = guard.flush()
    assert [(c["first_seq"], c["last_seq"]) for c in commits] == [(1, 5), (6, 7)]


def test_nothing_is_committed_twice_after_a_restart(tmp_path: Path) -> None:
    service = FakeService()
    with Guard(_config(tmp_path), send=service, background=False) as guard:
        _answer(guard, 6)
        guard.flush()
    with Guard(_config(tmp_path), send=service, background=False) as guard:
        assert guard.journal.pending_count == 0
        assert guard.flush() == []
        _answer(guard, 2, seed=9)
        (commit,) = guard.flush()
    assert (commit["first_seq"], commit["last_seq"]) == (7, 8)
    assert [len(batch["labels"]) for batch in service.batches()] == [5, 1, 2]


def test_answers_pending_at_a_crash_are_committed_after_the_restart(tmp_path: Path) -> None:
    service = FakeService()
    service.unreachable = True
    guard = Guard(_config(tmp_path), send=service, background=False)
    _answer(guard, 3)
    guard.journal.close()  # the process dies: no close(), no flush
    service.unreachable = False
    with Guard(_config(tmp_path), send=service, background=False) as again:
        assert again.journal.pending_count == 3
        again.flush()
    assert [len(batch["labels"]) for batch in service.batches()] == [3]


def test_a_batch_ends_where_the_input_shape_changes(tmp_path: Path) -> None:
    service = FakeService()
    with Guard(_config(tmp_path), send=service, background=False) as guard:
        guard.answer("a", np.zeros((2, 3)), np.eye(10)[:2])
        guard.answer("a", np.ones((2, 4)), np.eye(10)[:2])
        guard.flush()
    assert [batch["inputs"].shape for batch in service.batches()] == [(2, 3), (2, 4)]


def test_an_odd_201_is_a_failure_not_a_commit(tmp_path: Path) -> None:
    service = FakeService()
    service.fail_with = (201, b'{"id": "x y\\n", "commitment": "c"}')
    with Guard(_config(tmp_path), send=service, background=False) as guard:
        _answer(guard, 5)
        with pytest.raises(CommitError, match="evidence id"):
            guard.flush()
        assert guard.journal.pending_count == 5
        assert guard.journal.commits == []


def test_raw_client_ids_never_reach_the_service(tmp_path: Path) -> None:
    service = FakeService()
    config = _config(tmp_path, prada_window=20, prada_min_distances=20)
    with Guard(config, send=service, background=False) as guard:
        # a stream of near-copies of two points: PRADA alarms, and the alarm goes out too
        rng = np.random.default_rng(0)
        seeds = rng.normal(size=(2, 16)) * 10
        for i in range(60):
            x = seeds[i % 2] + rng.normal(size=16) * (0.01 if i % 7 else 3.0)
            guard.answer(RAW_CLIENT, x[None, :], np.eye(10)[[i % 2]])
        guard.flush()
        tag = guard.client_tag(RAW_CLIENT)
    assert service.batches()
    assert service.alarms()
    for url, body, headers in service.sent:
        everything = url.encode() + body + json.dumps(headers).encode()
        assert RAW_CLIENT.encode() not in everything
    for batch in service.batches():
        assert RAW_CLIENT.encode() not in b"".join(array.tobytes() for array in batch.values())
    assert {alarm["client"] for alarm in service.alarms()} == {tag}


def test_an_alarm_that_cannot_be_sent_is_kept_and_sent_later(tmp_path: Path) -> None:
    service = FakeService()
    service.unreachable = True
    alarm = Alarm(client="ab" * 16, queries=120, statistic=0.8, threshold=0.9, raised_at="2026-01-02T03:04:05Z")
    with Guard(_config(tmp_path, max_pending_alarms=2), send=service, background=False) as guard:
        for _ in range(3):
            guard.committer.add_alarm(alarm)
        guard.committer.run_once()
        assert guard.committer.pending_alarms == 2  # bounded: the oldest was dropped
        service.unreachable = False
        guard.flush()
        assert guard.committer.pending_alarms == 0
    assert service.alarms()[-2:] == [alarm.as_json()] * 2
    assert len(service.alarms()) == 3  # one failed try, then the two kept
    assert service.sent[-1][0].endswith("/api/v1/models/5f0c7a52-4c55-4d4e-9a55-2b1e1f4c1d10/guard/alarms/")


def test_batch_npz_refuses_mixed_shapes() -> None:
    with pytest.raises(ValueError, match="at least one"):
        batch_npz([])


def test_the_guard_and_the_command_share_one_form_encoding() -> None:
    from modelcourt import cli, forms
    from modelcourt.guard import commit

    assert commit.encode_multipart is forms.encode_multipart
    assert cli.encode_multipart is forms.encode_multipart


def test_a_form_name_cannot_end_its_header_or_add_a_part() -> None:
    from modelcourt.forms import encode_multipart

    hostile = 'x"; filename="evil\r\nContent-Type: text/html\r\n\r\n--'
    body, content_type = encode_multipart([(hostile, "value")], [("file", hostile, b"\x00data\r\n")])
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = list(message.iter_parts())
    assert len(parts) == 2
    escaped = "x%22; filename=%22evil%0D%0AContent-Type: text/html%0D%0A%0D%0A--"
    assert [part.get_param("name", header="content-disposition") for part in parts] == [escaped, "file"]
    assert parts[1].get_filename() == escaped
    assert parts[1].get_content() == b"\x00data\r\n"
