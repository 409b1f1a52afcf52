"""Per-client extraction alarms after PRADA (Juuti et al., 2019).

For each client and each predicted class, PRADA keeps a *growing set* of that client's queries. Every new
query's distance to the nearest earlier growing-set point of its class joins the client's list of
distances; the query itself joins the growing set when that distance is above the class's threshold
T_c = max(T_c, mean - std of the distances that grew the set). Natural queries give distances that look
normally distributed; an extraction attack (synthetic or augmented samples crafted from a few seeds)
gives clustered, skewed ones. The Shapiro-Wilk W of the last ``window`` distances measures that: W below
the threshold raises one alarm, and the client stays alarmed until W recovers.

The distances are kept on every query; W is computed on a cadence: first at the query that brings the
client's distances to ``min_distances``, then at every ``every``-th query after it (a check at which no
distance was added since the last one is skipped: W could not have changed). W over a window of 100 costs
more than the rest of a query together, and an extraction takes hundreds of queries, so checking every
tenth query delays an alarm by at most nine queries.

Exact repeats (distance 0) are left out of the distances: a repeated query teaches an attacker nothing,
and a benign client that retries would otherwise look like an attacker.

Memory is bounded four ways: points per class (oldest overwritten), clients tracked (least recently seen
dropped), bytes of stored points per client and bytes of stored points in all. A growing set starts with
room for one point and doubles as it fills; every allocation is counted against both byte caps *before* it
is made. When it would not fit, the least recently seen other clients are forgotten first (for the
budget of all clients), then the client's own least recently used classes; a set that still cannot grow
overwrites its oldest point instead.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelcourt.guard.shapiro import MAX_SAMPLES, shapiro_w

__all__ = ["Alarm", "PradaDetector"]


def all_finite(values: npt.NDArray[Any]) -> bool:
    """Whether every value is finite (``np.isfinite(values).all()``, with less overhead on a small array)."""
    return int(np.count_nonzero(np.isfinite(values))) == values.size


def utc_now_iso() -> str:
    """Now as ISO-8601 UTC with a Z, to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Alarm:
    """A client whose recent queries look like an extraction attack. ``client`` is whatever key observe() got."""

    client: str
    queries: int
    statistic: float
    threshold: float
    raised_at: str

    def as_json(self) -> dict[str, Any]:
        """The body the service's alarm endpoint takes."""
        return {
            "client": self.client,
            "queries": self.queries,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "raised_at": self.raised_at,
        }


class _GrowingSet:
    """One class's growing set: a ring of at most ``cap`` points with half their squared norms, and its threshold.

    The ring starts with room for one point; the detector doubles it (up to ``cap``) when its memory budget
    allows, else the oldest point is overwritten.
    """

    def __init__(self, first: npt.NDArray[np.float32], cap: int) -> None:
        self.cap = cap
        self.points = np.empty((1, first.size), dtype=np.float32)
        self.half_norms = np.empty(1, dtype=np.float32)
        self.count = 0
        self.next = 0
        self._store(first, first.astype(np.float64))
        # Welford's running mean and variance of the distances that grew the set
        self.grown = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.threshold = 0.0

    @staticmethod
    def bytes_for(rows: int, size: int) -> int:
        """The bytes a ring of ``rows`` points of ``size`` float32 values holds (the points and their norms)."""
        return rows * (size + 1) * 4

    @property
    def nbytes(self) -> int:
        return int(self.points.nbytes + self.half_norms.nbytes)

    def nearest(self, x: npt.NDArray[np.float32], x64: npt.NDArray[np.float64]) -> float:
        """The L2 distance from x (``x64`` is x in float64) to the nearest point of the set.

        (|p - x|^2 - |x|^2) / 2 = |p|^2 / 2 - p.x finds the nearest point with one matrix-vector product;
        the distance to it is then computed directly in float64, so that it is exact (and 0.0 for a repeat).
        """
        count = self.count
        if count == 1:
            nearest = self.points[0]
        else:
            nearest = self.points[int((self.half_norms[:count] - self.points[:count].dot(x)).argmin())]
        difference = nearest - x64  # in float64
        return math.sqrt(float(difference.dot(difference)))

    def extra_bytes(self, distance: float) -> int:
        """The bytes growing by a query at ``distance`` would allocate: 0 when it stays out or fits the ring."""
        if distance <= self.threshold or self.count < self.points.shape[0] or self.count >= self.cap:
            return 0
        rows = min(self.cap, 2 * self.count)
        return self.bytes_for(rows, self.points.shape[1]) - self.nbytes

    def grow(self, x: npt.NDArray[np.float32], x64: npt.NDArray[np.float64], distance: float, *, allocate: bool) -> int:
        """Add x if its distance passes the threshold (doubling the ring first when ``allocate``); the bytes added."""
        if distance <= self.threshold:
            return 0
        added = 0
        if allocate and self.count == self.points.shape[0] < self.cap:
            before = self.nbytes
            rows = min(self.cap, 2 * self.count)
            self.points = np.concatenate([self.points, np.empty((rows - self.count, self.points.shape[1]), np.float32)])
            self.half_norms = np.concatenate([self.half_norms, np.empty(rows - self.count, np.float32)])
            added = self.nbytes - before
        self._store(x, x64)
        self.grown += 1
        delta = distance - self.mean
        self.mean += delta / self.grown
        self.m2 += delta * (distance - self.mean)
        self.threshold = max(self.threshold, self.mean - math.sqrt(self.m2 / self.grown))
        return added

    def _store(self, x: npt.NDArray[np.float32], x64: npt.NDArray[np.float64]) -> None:
        """Append x, or (full by the cap or by the memory budget) overwrite the oldest point."""
        if self.count < self.points.shape[0]:
            slot = self.count
            self.count += 1
            self.next = self.count % self.points.shape[0]
        else:
            slot = self.next
            self.next = (self.next + 1) % self.points.shape[0]
        self.points[slot] = x
        self.half_norms[slot] = float(x64.dot(x64)) / 2.0


class _Client:
    """One client's growing sets, the ring of its last ``window`` distances and where its checks stand."""

    __slots__ = (
        "alarmed",
        "distances",
        "filled",
        "fresh",
        "nbytes",
        "next_check",
        "position",
        "queries",
        "sets",
        "statistic",
    )

    def __init__(self, window: int) -> None:
        self.sets: OrderedDict[int, _GrowingSet] = OrderedDict()  # least recently used class first
        self.distances = np.empty(window, dtype=np.float64)
        self.filled = 0  # how many of the ring's slots hold a distance
        self.position = 0  # the slot the next distance goes to
        self.fresh = False  # a distance was added since the last check
        self.next_check = 0  # the query count at or after which the next check is due
        self.queries = 0
        self.alarmed = False
        self.statistic: float | None = None
        self.nbytes = 0

    def add_distance(self, distance: float) -> None:
        self.distances[self.position] = distance
        self.position = (self.position + 1) % self.distances.size
        self.filled = min(self.filled + 1, self.distances.size)
        self.fresh = True


class PradaDetector:
    """Tracks clients' query streams and says when one looks like an extraction attack. Thread-safe.

    W is computed over the last ``window`` distances once ``min_distances`` of them exist (by default the
    window: full windows only), then every ``every`` queries of the client; below ``threshold`` it alarms.
    The stored points take at most ``max_bytes`` in all and ``max_client_bytes`` per client (by default a
    quarter of ``max_bytes``, so that no one client can push every other out).
    """

    def __init__(
        self,
        threshold: float = 0.90,
        window: int = 100,
        min_distances: int = 100,
        max_points_per_class: int = 2000,
        max_clients: int = 10_000,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        max_client_bytes: int | None = None,
        every: int = 10,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"the W threshold is between 0 and 1, got {threshold!r}")
        if not 3 <= window <= MAX_SAMPLES:
            raise ValueError(f"the window holds 3 to {MAX_SAMPLES} distances, got {window!r}")
        if not 3 <= min_distances <= window:
            raise ValueError(f"min_distances is between 3 and the window ({window}), got {min_distances!r}")
        client_bytes = max(1, max_bytes // 4) if max_client_bytes is None else max_client_bytes
        if max_points_per_class < 1 or max_clients < 1 or max_bytes < 1 or client_bytes < 1:
            raise ValueError("the memory caps are positive")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"W is computed every so many queries, at least 1, got every={every!r}")
        self.threshold = float(threshold)
        self.window = int(window)
        self.min_distances = int(min_distances)
        self.every = every
        self.max_points_per_class = int(max_points_per_class)
        self.max_clients = int(max_clients)
        self.max_bytes = int(max_bytes)
        self.max_client_bytes = min(int(client_bytes), self.max_bytes)
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    @property
    def tracked_clients(self) -> int:
        with self._lock:
            return len(self._clients)

    @property
    def stored_bytes(self) -> int:
        with self._lock:
            return self._nbytes

    def observe(self, client: str, x: npt.ArrayLike, label: int) -> Alarm | None:
        """Take one query and the model's (true) label for it; an Alarm when this query makes the client alarmed."""
        point = np.asarray(x, dtype=np.float32).reshape(-1)
        if not all_finite(point):
            raise ValueError("PRADA needs finite inputs")
        with self._lock:
            return self._observe(client, self._client(client), point, int(label))

    def observe_batch(self, client: str, xs: npt.ArrayLike, labels: npt.ArrayLike) -> list[Alarm]:
        """``observe`` for each row of a batch from one client, in order; the alarms raised (at most one here).

        The same as calling ``observe`` row by row, but for the checks: the batch is converted and
        checked for finite values once, before any row is taken.
        """
        points = np.asarray(xs, dtype=np.float32)
        if points.ndim == 0:
            raise ValueError("observe_batch takes a batch [N, ...] of queries")
        points = points.reshape(len(points), -1) if len(points) else points.reshape(0, 0)
        classes = np.asarray(labels).reshape(-1).tolist()
        if len(classes) != len(points):
            raise ValueError(f"need one label per query: {len(classes)} labels for {len(points)} queries")
        if not all_finite(points):
            raise ValueError("PRADA needs finite inputs")
        return self._observe_rows(client, points, classes)

    def _observe_rows(self, client: str, points: npt.NDArray[np.float32], labels: list[int]) -> list[Alarm]:
        """``observe_batch`` for queries already converted: finite float32 rows [N, D] and their labels."""
        alarms: list[Alarm] = []
        with self._lock:
            state = self._client(client)
            for i, label in enumerate(labels):
                alarm = self._observe(client, state, points[i], int(label))
                if alarm is not None:
                    alarms.append(alarm)
        return alarms

    def _observe(self, client: str, state: _Client, point: npt.NDArray[np.float32], label: int) -> Alarm | None:
        """One query of a client already looked up (the lock held): its distance, and a check when one is due."""
        state.queries += 1
        distance = self._distance(state, point, label)
        if distance is not None:
            state.add_distance(distance)
        if state.filled < self.min_distances or state.queries < state.next_check:
            return None
        if not state.fresh:  # nothing new since the last check: W is what it was
            return None
        state.next_check = state.queries + self.every
        state.fresh = False
        return self._judge(client, state)

    def statistic(self, client: str) -> float | None:
        """The client's latest W, or None before enough distances (or for an unknown client)."""
        with self._lock:
            state = self._clients.get(client)
            return None if state is None else state.statistic

    def queries(self, client: str) -> int:
        """How many queries of the client were observed (0 for an unknown or forgotten client)."""
        with self._lock:
            state = self._clients.get(client)
            return 0 if state is None else state.queries

    def _client(self, client: str) -> _Client:
        state = self._clients.get(client)
        if state is None:
            state = _Client(self.window)
            self._clients[client] = state
            while len(self._clients) > self.max_clients:
                self._forget_oldest()
        else:
            self._clients.move_to_end(client)
        return state

    def _forget_oldest(self) -> None:
        _, dropped = self._clients.popitem(last=False)
        self._nbytes -= dropped.nbytes

    def _distance(self, state: _Client, point: npt.NDArray[np.float32], label: int) -> float | None:
        """The query's distance to its class's growing set (None for a first or a repeated query); grows the set."""
        growing = state.sets.get(label)
        if growing is not None and growing.points.shape[1] != point.size:  # the input size changed: start again
            del state.sets[label]
            self._account(state, -growing.nbytes)
            growing = None
        if growing is None:
            # a class this client has no set for: room for its first point, or the class is not tracked
            if self._reserve(state, _GrowingSet.bytes_for(1, point.size), keep=None):
                growing = _GrowingSet(point, self.max_points_per_class)
                state.sets[label] = growing
                self._account(state, growing.nbytes)
            return None
        state.sets.move_to_end(label)
        point64 = point.astype(np.float64)
        distance = growing.nearest(point, point64)
        if distance == 0.0:
            return None
        extra = growing.extra_bytes(distance)
        allocate = extra > 0 and self._reserve(state, extra, keep=growing)
        self._account(state, growing.grow(point, point64, distance, allocate=allocate))
        return distance

    def _reserve(self, state: _Client, needed: int, *, keep: _GrowingSet | None) -> bool:
        """Make room for ``needed`` more bytes of ``state``'s points, before they are allocated; whether it did.

        The client's own cap frees its least recently used classes (never ``keep``, the set about to grow);
        the budget of all clients forgets the least recently seen other clients first, then frees the
        client's own classes. False when the room cannot be made: the allocation is not to be done.
        """
        if needed > self.max_client_bytes:
            return False
        while state.nbytes + needed > self.max_client_bytes:
            if not self._drop_oldest_set(state, keep):
                return False
        while self._nbytes + needed > self.max_bytes:
            if next(iter(self._clients.values())) is not state:
                self._forget_oldest()
            elif not self._drop_oldest_set(state, keep):
                return False
        return True

    def _drop_oldest_set(self, state: _Client, keep: _GrowingSet | None) -> bool:
        """Free the client's least recently used class other than ``keep``; False when there is none."""
        for label, growing in state.sets.items():
            if growing is not keep:
                del state.sets[label]
                self._account(state, -growing.nbytes)
                return True
        return False

    def _account(self, state: _Client, added: int) -> None:
        state.nbytes += added
        self._nbytes += added

    def _judge(self, client: str, state: _Client) -> Alarm | None:
        try:
            w = shapiro_w(state.distances[: state.filled])  # W does not depend on the order
        except ValueError:  # all distances equal: no shape to judge
            return None
        state.statistic = w
        if w >= self.threshold:
            state.alarmed = False
            return None
        if state.alarmed:
            return None
        state.alarmed = True
        return Alarm(
            client=client, queries=state.queries, statistic=w, threshold=self.threshold, raised_at=utc_now_iso()
        )
