"""The guard around a model's answers: the Guard core, the JSON codecs, a predict wrapper and WSGI middleware.

Every way in (a wrapped predict function, the WSGI middleware, the reverse proxy) ends in
:meth:`Guard.serve_rows`: watermark the rows the key selects, journal them (fsynced before the answer
leaves), feed each query to PRADA, and let the commit thread take the journal to the service.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from modelcourt.guard.commit import CommitError, Committer, Send, ServiceClient, escape, http_sender
from modelcourt.guard.config import GuardConfig
from modelcourt.guard.journal import Journal, JournalError, NewAnswer
from modelcourt.guard.prada import Alarm, PradaDetector, all_finite
from modelcourt.guard.watermark import ResponseWatermark

__all__ = [
    "AnswerError",
    "Guard",
    "GuardMiddleware",
    "GuardedRequest",
    "RequestError",
    "check_client_id",
    "read_request",
    "rewrite_answer",
]

Protocol = Literal["json", "v2"]
MAX_JSON_DEPTH = 16
MAX_CLIENT_ID_CHARS = 256
MAX_NAME_CHARS = 128

logger = logging.getLogger("modelcourt.guard")

FloatArray = npt.NDArray[np.floating[Any]]
LabelArray = npt.NDArray[np.int64]


class RequestError(ValueError):
    """A request the guard refuses before the model sees it (HTTP 400); the message is for the caller."""


class AnswerError(ValueError):
    """A model answer the guard cannot read (HTTP 502); the message is ours, never the model's text."""


# --- the core ----------------------------------------------------------------------------------


class Guard:
    """Watermarks, journals and watches one model's answers. Thread-safe; one per serving process."""

    def __init__(
        self,
        config: GuardConfig,
        *,
        send: Send | None = None,
        on_alarm: Callable[[Alarm], object] | None = None,
        background: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.watermark = ResponseWatermark(config.key, config.num_classes, config.rate)
        self.prada = PradaDetector(
            config.prada_threshold,
            config.prada_window,
            config.prada_min_distances,
            config.prada_max_points_per_class,
            config.prada_max_clients,
            max_bytes=config.prada_max_bytes,
            every=config.prada_every,
        )
        self.journal = Journal(config.journal_dir)
        service = ServiceClient(config, send if send is not None else http_sender(config.service_timeout_s))
        self.committer = Committer(self.journal, service, config, clock=clock)
        self.on_alarm = on_alarm
        self._clock = clock
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(("requests", "queries", "watermarked", "alarms", "journal_failures"), 0)
        # the client tags of the clients seen recently, least recently seen first: raw id -> tag, and back
        # (for the owner's own action). In memory only, never sent; bounded like PRADA's clients.
        self._tag_of: OrderedDict[str, str] = OrderedDict()
        self._raw_of: dict[str, str] = {}
        self._closed = False
        if background:
            self.committer.start()
        logger.info(
            "guard on for model %s: %d answers journaled, %d pending from before",
            escape(config.model_id),
            self.journal.last_seq,
            self.journal.pending_count,
        )

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    # --- answering ----------------------------------------------------------------------------

    def answer(self, client: str, xs: npt.ArrayLike, scores_or_labels: npt.ArrayLike) -> npt.NDArray[Any]:
        """The served version of a model's answer to ``xs``: scores [N, C] (permuted) or labels [N] (replaced)."""
        return self._answer(client, _checked_inputs(xs), scores_or_labels)

    def _answer(self, client: str, rows: npt.NDArray[Any], scores_or_labels: npt.ArrayLike) -> npt.NDArray[Any]:
        """``answer`` for inputs already checked by ``_checked_inputs``."""
        out = np.asarray(scores_or_labels)
        n = rows.shape[0]
        if out.shape == (n, self.num_classes) and out.dtype.kind in "fiu":
            scores = out.astype(np.float64) if out.dtype.kind != "f" else out
            if not all_finite(scores):
                raise ValueError("the model's scores contain NaN or infinite values")
            _, served_scores, _ = self._serve(client, rows, scores.argmax(axis=1), scores)
            assert served_scores is not None  # noqa: S101 -- scores in, scores out
            return served_scores.astype(out.dtype, copy=False)
        if out.shape in ((n,), (n, 1)):
            labels = _integral_labels(out.reshape(n), self.num_classes, ValueError)
            served, _, _ = self._serve(client, rows, labels, None)
            return served.astype(out.dtype).reshape(out.shape)
        raise ValueError(
            f"the model answered shape {list(out.shape)} for {n} inputs; expected scores [{n}, {self.num_classes}] "
            f"or labels [{n}]"
        )

    def serve_rows(
        self, client: str, xs: npt.ArrayLike, labels: npt.ArrayLike, scores: FloatArray | None
    ) -> tuple[LabelArray, FloatArray | None, npt.NDArray[np.bool_]]:
        """Served labels, served scores and the watermark mask for a batch from one client (``labels`` are true)."""
        _check_client(client)
        return self._serve(client, _checked_inputs(xs), labels, scores)

    def _serve(
        self, client: str, rows: npt.NDArray[Any], labels: npt.ArrayLike, scores: FloatArray | None
    ) -> tuple[LabelArray, FloatArray | None, npt.NDArray[np.bool_]]:
        """``serve_rows`` for inputs already checked (by ``_checked_inputs`` or ``read_request``)."""
        _check_client(client)
        true = np.asarray(labels, dtype=np.int64)
        # the inputs as float32, converted once: what the selection is keyed on and what PRADA measures
        points = np.ascontiguousarray(rows, dtype="<f4")
        served, served_scores, mask = self.watermark.serve_batch(points, true, scores)
        tag = self.client_tag(client)
        watermarked = int(np.count_nonzero(mask))
        if watermarked and not self._journal(client, tag, points, true, served, mask):
            served, mask, watermarked = true.copy(), np.zeros_like(mask), 0
            served_scores = None if scores is None else np.array(scores, copy=True)
        # a float wider than float32 may have overflowed in the conversion; anything else was checked finite
        self._observe(tag, points, true, check=rows.dtype.kind == "f" and rows.dtype.itemsize > 4)
        with self._lock:
            self._counts["requests"] += 1
            self._counts["queries"] += rows.shape[0]
            self._counts["watermarked"] += watermarked
        return served, served_scores, mask

    def _observe(self, tag: str, points: npt.NDArray[np.float32], true: LabelArray, *, check: bool) -> None:
        """Feed the queries (the inputs as float32) to PRADA and raise the alarms they cause.

        ``check``: whether the float32 values still need checking for infinities (PRADA's own check).
        """
        rows = points.reshape(len(points), -1) if len(points) else points.reshape(0, 0)
        if check and not all_finite(rows):
            raise ValueError("PRADA needs finite inputs")
        for alarm in self.prada._observe_rows(tag, rows, true.tolist()):
            self._raise_alarm(alarm)

    def _journal(
        self,
        client: str,
        tag: str,
        rows: npt.NDArray[Any],
        true: LabelArray,
        served: LabelArray,
        mask: npt.NDArray[np.bool_],
    ) -> bool:
        """Journal the watermarked rows; False (the true answers are served instead) when the journal fails."""
        now = self._clock()
        answers = [
            NewAnswer(now, client, tag, rows[i].astype(np.float32), int(served[i]), int(true[i]))
            for i in np.flatnonzero(mask)
        ]
        try:
            pending = self.journal.append(answers)
        except (OSError, JournalError, ValueError) as exc:
            # an unjournaled watermark would be a wrong answer with no evidence behind it: serve the truth
            with self._lock:
                self._counts["journal_failures"] += 1
            logger.error(
                "the journal could not be written (%s); %d answers were served without their watermark",
                escape(str(exc)),
                len(answers),
            )
            return False
        self.committer.answered(pending, len(answers))
        return True

    def _raise_alarm(self, alarm: Alarm) -> None:
        with self._lock:
            self._counts["alarms"] += 1
        logger.warning(
            "possible model extraction by client %s: Shapiro-Wilk W = %.3f < %.2f after %d queries",
            alarm.client,
            alarm.statistic,
            alarm.threshold,
            alarm.queries,
        )
        self.committer.add_alarm(alarm)
        if self.on_alarm is not None:
            try:
                self.on_alarm(alarm)
            except Exception:  # the owner's callback must not break serving
                logger.exception("the on_alarm callback failed")

    def predict(self, predict_fn: Callable[[npt.NDArray[Any]], npt.ArrayLike]) -> Callable[..., npt.NDArray[Any]]:
        """Wrap ``predict_fn(xs) -> scores [N, C] or labels [N]`` into ``fn(xs, *, client) -> served answer``."""

        @functools.wraps(predict_fn)
        def guarded(xs: npt.ArrayLike, *, client: str) -> npt.NDArray[Any]:
            rows = _checked_inputs(xs)  # checked once, before the model sees them
            return self._answer(client, rows, predict_fn(rows))

        return guarded

    # --- clients ------------------------------------------------------------------------------

    def client_tag(self, client_id: str) -> str:
        """The pseudonym of a client as the service sees it; remembered so that the owner can map it back.

        The tags of the ``prada_max_clients`` clients seen most recently are kept in memory (keyed by the
        raw id), so that a returning client costs a dictionary look-up rather than an HMAC.
        """
        with self._lock:
            tag = self._tag_of.get(client_id)
            if tag is not None:
                self._tag_of.move_to_end(client_id)
                return tag
        tag = self.watermark.client_tag(client_id)
        with self._lock:
            self._tag_of[client_id] = tag
            self._tag_of.move_to_end(client_id)
            self._raw_of[tag] = client_id
            while len(self._tag_of) > self.config.prada_max_clients:
                raw, dropped = self._tag_of.popitem(last=False)
                if self._raw_of.get(dropped) == raw:
                    del self._raw_of[dropped]
        return tag

    def client_of(self, tag: str) -> str | None:
        """The raw client id behind a tag seen recently by this process (for the owner's own action), else None."""
        with self._lock:
            return self._raw_of.get(tag)

    # --- committing and reporting -------------------------------------------------------------

    def flush(self) -> list[dict[str, Any]]:
        """Commit every pending answer now; the commits made. CommitError when the service refuses or is away."""
        return self.committer.flush()

    def close(self, *, flush: bool = False) -> None:
        """Stop the commit thread (and, with ``flush``, try one last commit) and close the journal."""
        if self._closed:
            return
        self._closed = True
        self.committer.stop()
        if flush and self.journal.pending_count:
            try:
                self.flush()
            except CommitError as exc:
                logger.warning(
                    "the last commit failed: %s; %d answers stay pending in %s",
                    exc.reason,
                    self.journal.pending_count,
                    self.config.journal_dir,
                )
        self.journal.close()

    def counts(self) -> dict[str, int]:
        """The counters behind metrics_text()."""
        with self._lock:
            counts = dict(self._counts)
        counts.update(
            pending_answers=self.journal.pending_count,
            commits=self.committer.commits_total,
            commit_failures=self.committer.failures_total,
            pending_alarms=self.committer.pending_alarms,
            tracked_clients=self.prada.tracked_clients,
        )
        return counts

    def metrics_text(self) -> str:
        """The counters in the Prometheus text exposition format."""
        counts = self.counts()
        metrics = [
            ("requests_total", "counter", "answers (requests) that went through the guard", counts["requests"]),
            ("queries_total", "counter", "inputs answered (rows of all requests)", counts["queries"]),
            ("watermarked_total", "counter", "inputs answered with a watermarked label", counts["watermarked"]),
            ("alarms_total", "counter", "extraction alarms raised (PRADA)", counts["alarms"]),
            (
                "pending_answers",
                "gauge",
                "watermarked answers journaled but not yet committed",
                counts["pending_answers"],
            ),
            ("commits_total", "counter", "batches the service accepted", counts["commits"]),
            ("commit_failures_total", "counter", "batch commits that failed (retried)", counts["commit_failures"]),
            (
                "journal_failures_total",
                "counter",
                "answers served unwatermarked: journal write failed",
                counts["journal_failures"],
            ),
            ("pending_alarms", "gauge", "alarms not yet accepted by the service", counts["pending_alarms"]),
            ("tracked_clients", "gauge", "clients PRADA currently tracks", counts["tracked_clients"]),
        ]
        lines: list[str] = []
        for name, kind, text, value in metrics:
            full = f"modelcourt_guard_{name}"
            lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}", f"{full} {value}"]
        return "\n".join(lines) + "\n"


def _check_client(client: object) -> None:
    if not isinstance(client, str):
        raise ValueError(f"the client id must be a string, got {type(client).__name__}")


def _checked_inputs(xs: npt.ArrayLike) -> npt.NDArray[Any]:
    rows = np.asarray(xs)
    if rows.ndim < 1 or rows.dtype.kind not in "fiub":
        raise ValueError(
            f"inputs must be a numeric batch [N, ...], got dtype {rows.dtype} and shape {list(rows.shape)}"
        )
    if rows.dtype.kind == "f" and not all_finite(rows):
        raise ValueError("inputs contain NaN or infinite values")
    return rows


def _integral_labels(values: npt.NDArray[Any], num_classes: int, error: type[ValueError]) -> LabelArray:
    if values.dtype.kind not in "fiu" or (values.dtype.kind == "f" and not np.all(values == np.round(values))):
        raise error("labels must be integers")
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise error(f"labels must be in 0..{num_classes - 1}")
    return values.astype(np.int64)


# --- the JSON protocols --------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _load_json(body: bytes, error: type[ValueError], what: str) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise error(f"{what} is not valid JSON (NaN and Infinity are not JSON)") from None


def _nested_numbers(value: object, what: str, error: type[ValueError]) -> npt.NDArray[np.float64]:
    """A regular nested list of finite JSON numbers as an array; anything else is ``error``.

    The lists are walked one nesting level at a time with built-ins, so a large batch costs little;
    ``type(...) is`` keeps booleans (and strings numpy would happily convert) out.
    """
    if type(value) is not list:
        raise error(f"{what} is not a list")
    shape: list[int] = []
    level: list[Any] = [value]
    while level:
        kinds = set(map(type, level))
        if kinds <= _NUMBER_TYPES:
            break
        if kinds != {list}:
            if list in kinds:
                raise error(f"{what} is ragged (mixes numbers and lists at one level)")
            strange = sorted(kind.__name__ for kind in kinds - _NUMBER_TYPES)
            raise error(f"{what} holds a {strange[0]} where a number was expected")
        if len(shape) == MAX_JSON_DEPTH:
            raise error(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
        lengths = set(map(len, level))
        if len(lengths) != 1:
            raise error(f"{what} is ragged (lists of different lengths at one level)")
        shape.append(lengths.pop())
        level = list(itertools.chain.from_iterable(level))
    try:
        array = np.array(level, dtype=np.float64).reshape(shape)
    except OverflowError:
        raise error(f"{what} holds a number too large for a float") from None
    if not np.isfinite(array).all():
        raise error(f"{what} holds NaN or infinite values")
    return array


_NUMBER_TYPES = frozenset({int, float})
# the v2 datatypes of an output the guard passes on: numbers it has read and checked, nothing else
_V2_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
_V2_INTEGER_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})


def _short_name(value: object) -> str | None:
    """A v2 name or id worth passing on: a short printable string, else None."""
    if isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS and value.isprintable():
        return value
    return None


@dataclass(frozen=True)
class GuardedRequest:
    """A request that passed the checks: its inputs, and the body the model is sent (rebuilt from them)."""

    protocol: Protocol
    inputs: npt.NDArray[np.float64]
    body: bytes
    input_name: str | None = None
    request_id: str | None = None


def read_request(body: bytes, protocol: Protocol, *, input_shape: tuple[int, ...] | None = None) -> GuardedRequest:
    """Check a client's request (JSON, finite numbers, one regular batch) and rebuild the body for the model.

    Only the checked inputs are passed on: whatever else the request carried never reaches the model.
    """
    request = _load_json(body, RequestError, "the request")
    if not isinstance(request, dict):
        raise RequestError("the request must be a JSON object")
    if protocol == "v2":
        return _read_v2_request(request, input_shape)
    inputs = _nested_numbers(request.get("inputs"), "the request's inputs", RequestError)
    _check_batch(inputs, input_shape)
    return GuardedRequest("json", inputs, json.dumps({"inputs": inputs.tolist()}).encode())


def _read_v2_request(request: dict[str, Any], input_shape: tuple[int, ...] | None) -> GuardedRequest:
    tensors = request.get("inputs")
    if not isinstance(tensors, list) or len(tensors) != 1 or not isinstance(tensors[0], dict):
        raise RequestError("the request must have exactly one input tensor")
    tensor = tensors[0]
    name = _short_name(tensor.get("name"))
    if name is None:
        raise RequestError(f"the input tensor needs a name of at most {MAX_NAME_CHARS} printable characters")
    if tensor.get("datatype") != "FP32":
        raise RequestError("the input tensor's datatype must be FP32")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError("the input tensor's shape must be a list of non-negative integers")
    data = _nested_numbers(tensor.get("data"), "the input tensor's data", RequestError)
    if data.size != math.prod(shape):
        raise RequestError(f"the input tensor has {data.size} values for shape {shape}")
    inputs = data.reshape(shape)
    _check_batch(inputs, input_shape)
    rebuilt: dict[str, Any] = {
        "inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": inputs.reshape(-1).tolist()}]
    }
    request_id = _short_name(request.get("id"))
    if request_id is not None:
        rebuilt["id"] = request_id
    return GuardedRequest("v2", inputs, json.dumps(rebuilt).encode(), name, request_id)


def _check_batch(inputs: npt.NDArray[np.float64], input_shape: tuple[int, ...] | None) -> None:
    if inputs.ndim < 2 or inputs.shape[0] < 1 or 0 in inputs.shape:
        raise RequestError("the inputs must be a non-empty batch [N, ...] of at least two dimensions")
    if input_shape is not None and tuple(inputs.shape[1:]) != tuple(input_shape):
        expected = ", ".join(str(d) for d in input_shape)
        raise RequestError(f"the inputs must have shape [N, {expected}], got {list(inputs.shape)}")
    # the model computes in float32: a value float32 cannot hold is no input
    if np.abs(inputs).max() > float(np.finfo(np.float32).max):
        raise RequestError("the inputs hold a number too large for float32")


def rewrite_answer(guard: Guard, client: str, request: GuardedRequest, body: bytes) -> bytes:
    """The model's answer with the guard's changes; only what the protocol defines is passed on.

    ``request`` is what :func:`read_request` returned: its inputs were checked there and are not checked again.
    """
    answer = _load_json(body, AnswerError, "the model's answer")
    if not isinstance(answer, dict):
        raise AnswerError("the model's answer is not a JSON object")
    if request.protocol == "v2":
        return json.dumps(_rewrite_v2(guard, client, request, answer)).encode()
    return json.dumps(_rewrite_json(guard, client, request, answer)).encode()


def _rewrite_json(guard: Guard, client: str, request: GuardedRequest, answer: dict[str, Any]) -> dict[str, Any]:
    n, classes = request.inputs.shape[0], guard.num_classes
    if "outputs" in answer:
        scores = _nested_numbers(answer["outputs"], "the model's outputs", AnswerError)
        if scores.shape != (n, classes):
            raise AnswerError(f"the model answered outputs of shape {list(scores.shape)}, expected [{n}, {classes}]")
        labels = _answer_labels(answer["labels"], n, classes) if "labels" in answer else scores.argmax(axis=1)
        if "labels" in answer and not np.all(scores[np.arange(n), labels] == scores.max(axis=1)):
            raise AnswerError("the model's labels disagree with its outputs")
        served, served_scores, _ = guard._serve(client, request.inputs, labels, scores)
        assert served_scores is not None  # noqa: S101 -- scores in, scores out
        rewritten: dict[str, Any] = {"outputs": served_scores.tolist()}
        if "labels" in answer:
            rewritten["labels"] = _shaped_like(served, answer["labels"])
        return rewritten
    if "labels" in answer:
        labels = _answer_labels(answer["labels"], n, classes)
        served, _, _ = guard._serve(client, request.inputs, labels, None)
        return {"labels": _shaped_like(served, answer["labels"])}
    raise AnswerError("the model's answer has neither outputs nor labels")


def _answer_labels(value: object, n: int, classes: int) -> LabelArray:
    labels = _nested_numbers(value, "the model's labels", AnswerError)
    if labels.shape not in ((n,), (n, 1)):
        raise AnswerError(f"the model answered labels of shape {list(labels.shape)} for {n} inputs")
    return _integral_labels(labels.reshape(n), classes, AnswerError)


def _shaped_like(labels: LabelArray, original: object) -> list[Any]:
    """Labels nested as the model nested them: [N] or [N, 1]."""
    nested = isinstance(original, list) and bool(original) and isinstance(original[0], list)
    return [[int(v)] for v in labels] if nested else [int(v) for v in labels]


def _rewrite_v2(guard: Guard, client: str, request: GuardedRequest, answer: dict[str, Any]) -> dict[str, Any]:
    outputs = answer.get("outputs")
    if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
        raise AnswerError("the model's answer has no outputs")
    output = outputs[0]
    shape = output.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise AnswerError("the model's output has no valid shape")
    data = _nested_numbers(output.get("data"), "the model's output data", AnswerError)
    if data.size != math.prod(shape):
        raise AnswerError(f"the model answered {data.size} values for an output of shape {shape}")
    n, classes = request.inputs.shape[0], guard.num_classes
    datatype = _v2_datatype(output.get("datatype"))
    if shape == [n, classes]:
        scores = data.reshape(shape)
        if datatype in _V2_INTEGER_TYPES and not np.array_equal(scores, np.floor(scores)):
            raise AnswerError(f"the model's output is {datatype} but holds numbers that are not integers")
        _, served_scores, _ = guard._serve(client, request.inputs, scores.argmax(axis=1), scores)
        assert served_scores is not None  # noqa: S101 -- scores in, scores out
        flat = served_scores.reshape(-1)
        values: list[Any] = [int(v) for v in flat] if datatype in _V2_INTEGER_TYPES else flat.tolist()
    elif shape in ([n], [n, 1]):
        labels = _integral_labels(data.reshape(n), classes, AnswerError)
        served, _, _ = guard._serve(client, request.inputs, labels, None)
        values = [int(v) for v in served]
    else:
        raise AnswerError(f"the model's output has shape {shape}; expected [{n}, {classes}] scores or [{n}] labels")
    rewritten: dict[str, Any] = {
        "outputs": [
            {"name": _short_name(output.get("name")) or "output", "shape": shape, "datatype": datatype, "data": values}
        ]
    }
    for key in ("model_name", "model_version", "id"):
        if _short_name(answer.get(key)) is not None:
            rewritten[key] = answer[key]
    return rewritten


def _v2_datatype(value: object) -> str:
    """The datatype of the model's v2 output, if it is one the guard understands (FP32 when none is given).

    The datatype is passed on to the client, so only the numeric types whose values the guard has read are
    taken; anything else (a string of the model server's own, of any length) makes the answer unreadable.
    """
    if value is None:
        return "FP32"
    if isinstance(value, str) and (value in _V2_FLOAT_TYPES or value in _V2_INTEGER_TYPES):
        return value
    raise AnswerError("the model's output has a datatype the guard does not pass on (FP16 to FP64, INT8 to UINT64)")


def check_client_id(value: str | None) -> str:
    """A client id from a trusted header: 1 to 256 printable characters."""
    if not value or len(value) > MAX_CLIENT_ID_CHARS or not value.isprintable():
        raise RequestError(f"the X-Client-Id header must be 1 to {MAX_CLIENT_ID_CHARS} printable characters")
    return value


# --- WSGI ----------------------------------------------------------------------------------------

StartResponse = Callable[..., Callable[[bytes], object]]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class GuardMiddleware:
    """WSGI middleware for an app that answers plain-JSON predictions ({"inputs"} in, {"outputs"|"labels"} out).

    POST requests (to ``paths``, or to any path when not given) are checked, passed to the app with a body
    rebuilt from the checked inputs, and its 2xx JSON answer is rewritten; other requests and non-2xx
    answers pass through untouched. A request the guard refuses gets 400 and never reaches the app; a 2xx
    answer it cannot read becomes 502, so the guard is never silently bypassed.
    """

    def __init__(self, app: WsgiApp, guard: Guard, *, paths: Iterable[str] | None = None) -> None:
        self.app = app
        self.guard = guard
        self.paths = None if paths is None else frozenset(paths)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or (
            self.paths is not None and environ.get("PATH_INFO", "") not in self.paths
        ):
            return self.app(environ, start_response)
        try:
            client = self._client(environ)
            request = read_request(self._body(environ), "json", input_shape=self.guard.config.input_shape)
        except RequestError as exc:
            return _json_response(start_response, "400 Bad Request", {"error": str(exc)})
        inner = dict(environ)
        inner.update({"wsgi.input": io.BytesIO(request.body), "CONTENT_LENGTH": str(len(request.body))})
        inner["CONTENT_TYPE"] = "application/json"
        status, headers, payload = _call(self.app, inner)
        if not status.startswith("2"):
            start_response(status, headers)
            return [payload]
        try:
            rewritten = rewrite_answer(self.guard, client, request, payload)
        except (AnswerError, ValueError) as exc:
            logger.error("the guarded app's answer could not be read: %s", escape(str(exc)))
            return _json_response(start_response, "502 Bad Gateway", {"error": "the model's answer could not be read"})
        kept = [(k, v) for k, v in headers if k.lower() not in ("content-length", "content-type")]
        start_response(status, [*kept, ("Content-Type", "application/json"), ("Content-Length", str(len(rewritten)))])
        return [rewritten]

    def _client(self, environ: dict[str, Any]) -> str:
        if self.guard.config.trust_client_header:
            return check_client_id(environ.get("HTTP_X_CLIENT_ID"))
        return str(environ.get("REMOTE_ADDR") or "unknown")

    def _body(self, environ: dict[str, Any]) -> bytes:
        limit = self.guard.config.max_body_bytes
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            raise RequestError("the request needs a Content-Length") from None
        if length < 0 or length > limit:
            raise RequestError(f"the request body must be at most {limit} bytes")
        body: bytes = environ["wsgi.input"].read(length)
        if len(body) != length:
            raise RequestError("the request body ended early")
        return body


def _call(app: WsgiApp, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run a WSGI app to completion; its status, headers and whole body."""
    captured: dict[str, Any] = {}
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
        if exc_info is not None and captured:
            raise exc_info[1].with_traceback(exc_info[2])
        captured["status"], captured["headers"] = status, list(headers)
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if "status" not in captured:
        raise RuntimeError("the guarded app returned without starting a response")
    return str(captured["status"]), captured["headers"], b"".join(chunks)


def _json_response(start_response: StartResponse, status: str, body: dict[str, Any]) -> Iterator[bytes]:
    payload = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return iter([payload])
