"""Sending journaled answers and alarms to the modelcourt service, in batches, from a background thread.

A batch is an .npz of the oldest pending answers (inputs, served labels, client tags, times) POSTed as
evidence of kind ``api_watermark``; the service answers 201 with the evidence id and its commitment,
which the journal records. A failed batch stays pending and is retried with exponential backoff
(longer after a 4xx, which a retry alone rarely fixes); each failure logs one warning with the number
of answers pending. Alarms go to the guard's alarm endpoint the same way, kept in a bounded queue.
Nothing here ever blocks an answer: serving threads only append to the journal and notify.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelcourt.forms import encode_multipart
from modelcourt.guard.config import GuardConfig
from modelcourt.guard.journal import Entry, Journal, JournalError
from modelcourt.guard.prada import Alarm

__all__ = [
    "EVIDENCE_KIND",
    "CommitError",
    "Committer",
    "Send",
    "ServiceClient",
    "batch_npz",
    "encode_multipart",
    "escape",
    "http_sender",
]

EVIDENCE_KIND = "api_watermark"
MAX_ANSWER_BYTES = 1024 * 1024  # the service's answers are small JSON objects
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SAFE_VALUE = re.compile(r"[\x21-\x7e]{1,200}")

# (url, body, headers) -> (HTTP status, answer body); raises OSError when the service cannot be reached
Send = Callable[[str, bytes, Mapping[str, str]], tuple[int, bytes]]

logger = logging.getLogger("modelcourt.guard")


def escape(text: str, limit: int = 200) -> str:
    """Text from elsewhere made safe for one log line: control characters escaped, length capped."""
    shown = _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text[:limit])
    return shown + ("…" if len(text) > limit else "")


class CommitError(Exception):
    """A batch or alarm the service did not accept; ``client_error`` for a 4xx. The message is safe to log."""

    def __init__(self, reason: str, *, status: int | None = None, committed: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.committed = list(committed)

    @property
    def client_error(self) -> bool:
        return self.status is not None and 400 <= self.status < 500


# --- the wire ----------------------------------------------------------------------------------


def batch_npz(entries: Sequence[Entry]) -> bytes:
    """The evidence file of one batch: inputs float32 [N, *shape], labels int64, clients uint8 [N, 16], served_at."""
    if not entries:
        raise ValueError("a batch holds at least one answer")
    shapes = {entry.shape for entry in entries}
    if len(shapes) != 1:
        raise ValueError("every answer of a batch has the same input shape")
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        inputs=np.stack([entry.input for entry in entries]).astype(np.float32),
        labels=np.asarray([entry.served for entry in entries], dtype=np.int64),
        clients=np.frombuffer(b"".join(bytes.fromhex(entry.tag) for entry in entries), dtype=np.uint8).reshape(
            len(entries), 16
        ),
        served_at=np.asarray([entry.time for entry in entries], dtype=np.float64),
    )
    return buffer.getvalue()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not an instruction: the token must not follow it to another host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def http_sender(timeout_s: float) -> Send:
    """The default Send: one POST over urllib, no redirects followed, the answer capped at 1 MiB."""
    opener = urllib.request.build_opener(_NoRedirect)

    def send(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310 -- http(s) checked in GuardConfig
        try:
            with opener.open(request, timeout=timeout_s) as response:
                return int(response.status), response.read(MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as exc:
            try:
                payload = exc.read(MAX_ANSWER_BYTES)
            except OSError:
                payload = b""
            return int(exc.code), payload
        except (urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
            raise OSError(str(getattr(exc, "reason", exc))) from None

    return send


def _detail(status: int, payload: bytes) -> str:
    """The service's sentence for a refusal (escaped), or its status alone."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return f"HTTP {status}"
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return f"HTTP {status}: {escape(body['detail'])}"
    return f"HTTP {status}"


@dataclass(frozen=True)
class Accepted:
    """The service's 201 for a batch."""

    evidence_id: str
    commitment: str
    receipt_url: str | None


class ServiceClient:
    """The two calls the guard makes to the service; every failure is a CommitError with a safe reason."""

    def __init__(self, config: GuardConfig, send: Send) -> None:
        base = config.service_url.rstrip("/")
        model = urllib.parse.quote(config.model_id, safe="")
        self.evidence_url = f"{base}/api/v1/models/{model}/evidence/"
        self.alarms_url = f"{base}/api/v1/models/{model}/guard/alarms/"
        self._token = config.token
        self._send = send

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Token {self._token}"
        return headers

    def _post(self, url: str, body: bytes, content_type: str) -> dict[str, Any]:
        try:
            status, payload = self._send(url, body, self._headers(content_type))
        except OSError as exc:
            raise CommitError(f"the service could not be reached ({escape(str(exc))})") from None
        if status != 201:
            raise CommitError(f"the service refused it: {_detail(status, payload)}", status=status)
        try:
            answer = json.loads(payload)
        except (ValueError, RecursionError):
            raise CommitError("the service answered 201 with something other than JSON", status=status) from None
        if not isinstance(answer, dict):
            raise CommitError("the service answered 201 with JSON that is not an object", status=status)
        return answer

    def commit(self, entries: Sequence[Entry]) -> Accepted:
        """POST one batch as api_watermark evidence."""
        name = f"guard-{entries[0].seq}-{entries[-1].seq}.npz"
        body, content_type = encode_multipart([("kind", EVIDENCE_KIND)], [("file", name, batch_npz(entries))])
        answer = self._post(self.evidence_url, body, content_type)
        evidence_id, commitment = answer.get("id"), answer.get("commitment")
        if isinstance(evidence_id, int) and not isinstance(evidence_id, bool):
            evidence_id = str(evidence_id)
        if not isinstance(evidence_id, str) or not _SAFE_VALUE.fullmatch(evidence_id):
            raise CommitError("the service's 201 has no usable evidence id", status=201)
        if not isinstance(commitment, str) or not _SAFE_VALUE.fullmatch(commitment):
            raise CommitError("the service's 201 has no usable commitment", status=201)
        receipt = answer.get("receipt_url")
        return Accepted(evidence_id, commitment, receipt if isinstance(receipt, str) else None)

    def alarm(self, alarm: Alarm) -> None:
        """POST one alarm (its client is a tag, never a raw id)."""
        self._post(self.alarms_url, json.dumps(alarm.as_json()).encode(), "application/json")


# --- the background thread ---------------------------------------------------------------------


class _Backoff:
    """When the next try may start, after consecutive failures; a 4xx waits 30 times longer."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.failures = 0
        self.not_before = 0.0

    def failed(self, now: float, *, client_error: bool) -> float:
        self.failures += 1
        factor = 30.0 if client_error else 1.0
        delay = min(self.max_s * factor, self.base_s * factor * 2.0 ** min(self.failures - 1, 30))
        self.not_before = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.not_before = 0.0


class Committer:
    """Commits due batches and sends alarms; runs in its own daemon thread, or on demand through flush()."""

    def __init__(
        self,
        journal: Journal,
        service: ServiceClient,
        config: GuardConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.service = service
        self.batch_size = config.batch_size
        self.batch_seconds = config.batch_seconds
        self.max_pending_alarms = config.max_pending_alarms
        self._clock = clock
        self._batches = _Backoff(config.retry_base_s, config.retry_max_s)
        self._alarm_backoff = _Backoff(config.retry_base_s, config.retry_max_s)
        self._alarms: deque[Alarm] = deque()
        self._wake = threading.Condition()
        self._working = threading.Lock()  # one commit at a time, thread or flush
        self._alerting = threading.Lock()  # one alarm sender at a time: none is sent twice
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.commits_total = 0
        self.failures_total = 0
        self.alarms_sent_total = 0
        self.alarms_dropped_total = 0

    # --- from serving threads -----------------------------------------------------------------

    def answered(self, pending: int, added: int) -> None:
        """Serving threads journaled ``added`` answers, leaving ``pending``: wake the thread for a batch or a timer.

        ``pending`` is counted under the journal's lock, so exactly one append sees the count leave zero.
        """
        if added and (pending == added or pending >= self.batch_size):
            with self._wake:
                self._wake.notify()

    def add_alarm(self, alarm: Alarm) -> None:
        """Queue an alarm for the service; the oldest is dropped when the queue is full."""
        with self._wake:
            if len(self._alarms) >= self.max_pending_alarms:
                self._alarms.popleft()
                self.alarms_dropped_total += 1
                logger.warning("alarm queue full (%d): the oldest unsent alarm was dropped", self.max_pending_alarms)
            self._alarms.append(alarm)
            self._wake.notify()

    @property
    def pending_alarms(self) -> int:
        with self._wake:
            return len(self._alarms)

    # --- committing ---------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        """A batch is full, or the oldest pending answer has waited batch_seconds."""
        pending = self.journal.pending_count
        oldest = self.journal.oldest_pending_time()
        return pending >= self.batch_size or (oldest is not None and now - oldest >= self.batch_seconds)

    def run_once(self) -> list[dict[str, Any]]:
        """What the thread does when it wakes: commit what is due and send alarms, unless backing off."""
        done: list[dict[str, Any]] = []
        now = self._clock()
        if now >= self._batches.not_before:
            with self._working:
                while self.due(self._clock()):
                    try:
                        done.append(self._commit_one())
                    except CommitError as exc:
                        self._failed(exc)
                        break
        if self._clock() >= self._alarm_backoff.not_before:
            self._send_alarms()
        return done

    def flush(self) -> list[dict[str, Any]]:
        """Commit every pending answer now, ignoring any backoff; CommitError (with what was committed) on failure."""
        done: list[dict[str, Any]] = []
        with self._working:
            while self.journal.pending_count:
                try:
                    done.append(self._commit_one())
                except CommitError as exc:
                    self._failed(exc)
                    raise CommitError(exc.reason, status=exc.status, committed=done) from None
        self._send_alarms()
        return done

    def _commit_one(self) -> dict[str, Any]:
        try:
            entries = self.journal.pending(self.batch_size)
        except (OSError, JournalError) as exc:
            raise CommitError(f"the journal could not be read back: {escape(str(exc))}") from None
        # a batch's inputs share one shape: it ends where the shape changes
        cut = next((i for i, entry in enumerate(entries) if entry.shape != entries[0].shape), len(entries))
        batch = entries[:cut]
        accepted = self.service.commit(batch)
        try:
            commit = self.journal.record_commit(batch[0].seq, batch[-1].seq, accepted.evidence_id, accepted.commitment)
        except (OSError, JournalError) as exc:
            # the service holds the batch but the journal cannot say so: it will be sent again after a restart
            logger.error(
                "the service accepted answers %d..%d but the journal could not record it: %s",
                batch[0].seq,
                batch[-1].seq,
                escape(str(exc)),
            )
            raise CommitError("the commit could not be recorded in the journal") from None
        self._batches.succeeded()
        self.commits_total += 1
        logger.info("committed %d watermarked answers as evidence %s", len(batch), accepted.evidence_id)
        return {**commit.as_dict(), "count": len(batch), "receipt_url": accepted.receipt_url}

    def _failed(self, exc: CommitError) -> None:
        self.failures_total += 1
        delay = self._batches.failed(self._clock(), client_error=exc.client_error)
        logger.warning(
            "committing watermarked answers failed: %s; %d answers pending; next try in %.0f s",
            exc.reason,
            self.journal.pending_count,
            delay,
        )

    def _send_alarms(self) -> None:
        with self._alerting:
            self._send_queued_alarms()

    def _send_queued_alarms(self) -> None:
        while True:
            with self._wake:
                if not self._alarms:
                    return
                alarm = self._alarms[0]
            try:
                self.service.alarm(alarm)
            except CommitError as exc:
                delay = self._alarm_backoff.failed(self._clock(), client_error=exc.client_error)
                logger.warning(
                    "sending an alarm failed: %s; %d alarms pending; next try in %.0f s",
                    exc.reason,
                    self.pending_alarms,
                    delay,
                )
                return
            self._alarm_backoff.succeeded()
            with self._wake:
                if self._alarms and self._alarms[0] is alarm:
                    self._alarms.popleft()
                self.alarms_sent_total += 1

    # --- the thread ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="modelcourt-guard-commit", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _sleep_s(self) -> float:
        """How long the thread may sleep before something could be due (it is also woken by notify)."""
        now = self._clock()
        waits = [60.0]
        oldest = self.journal.oldest_pending_time()
        if oldest is not None:
            due_in = 0.0 if self.journal.pending_count >= self.batch_size else oldest + self.batch_seconds - now
            waits.append(max(due_in, self._batches.not_before - now))
        if self._alarms:
            waits.append(self._alarm_backoff.not_before - now)
        return max(0.01, min(waits))

    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
                self._wake.wait(self._sleep_s())
                if self._stopping:
                    return
            try:
                self.run_once()
            except Exception:  # the thread must outlive any surprise; the next wake tries again
                logger.exception("the guard's commit thread hit an unexpected error")
                time.sleep(1.0)
