"""PRADA: natural query streams pass, a knockoff attacker's augmented copies raise one alarm; memory stays bounded."""

import itertools

import numpy as np
import pytest
from sklearn.datasets import load_digits  # type: ignore[import-untyped]

from modelcourt.guard import Alarm, PradaDetector
from modelcourt.guard import prada as prada_module

DIGITS, LABELS = load_digits(return_X_y=True)
DIGITS = DIGITS.astype(np.float32)


def _stream(
    detector: PradaDetector, client: str, xs: np.ndarray, labels: np.ndarray
) -> tuple[list[Alarm], list[float | None]]:
    alarms: list[Alarm] = []
    statistics: list[float | None] = []
    for x, label in zip(xs, labels, strict=True):
        alarm = detector.observe(client, x, int(label))
        if alarm is not None:
            alarms.append(alarm)
        statistics.append(detector.statistic(client))
    return alarms, statistics


def _benign(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(DIGITS))[:n]
    return DIGITS[order], LABELS[order]


def _augmented_copies(seed: int, n: int = 300, seeds: int = 10, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A knockoff attacker's queries: a few natural samples, each sent again and again with a little noise."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(DIGITS), seeds, replace=False)
    picks = rng.choice(chosen, n)
    return DIGITS[picks] + rng.normal(0, noise, size=(n, DIGITS.shape[1])).astype(np.float32), LABELS[picks]


def test_natural_samples_in_random_order_rarely_raise_an_alarm() -> None:
    alarmed = 0
    for seed in range(20):
        alarms, statistics = _stream(PradaDetector(), f"client-{seed}", *_benign(seed))
        alarmed += bool(alarms)
        assert statistics[-1] is not None
    assert alarmed <= 2


def test_noisy_copies_of_a_few_samples_raise_an_alarm() -> None:
    alarmed = 0
    for seed in range(10):
        detector = PradaDetector()
        alarms, _ = _stream(detector, "attacker", *_augmented_copies(seed))
        if alarms:
            alarmed += 1
            first = alarms[0]
            assert first.client == "attacker"
            assert first.statistic < first.threshold == 0.90
            assert first.queries >= 100  # not before the window of 100 distances is full
            assert first.raised_at.endswith("Z")
    assert alarmed >= 9


def test_one_alarm_per_client_until_w_recovers() -> None:
    detector = PradaDetector(window=30, min_distances=30)
    xs, labels = _augmented_copies(0, n=1500, seeds=5, noise=0.5)
    alarms, statistics = _stream(detector, "c", xs, labels)
    # the rule, replayed on the statistics: alarm when W < threshold and the client is not already alarmed
    expected, alarmed, suppressed = [], False, 0
    for i, w in enumerate(statistics):
        if w is None:
            continue
        if w >= detector.threshold:
            alarmed = False
        elif not alarmed:
            alarmed = True
            expected.append(i + 1)
        else:
            suppressed += 1
    assert [alarm.queries for alarm in alarms] == expected
    assert alarms
    assert suppressed > 0


def test_clients_are_judged_apart() -> None:
    detector = PradaDetector()
    attack, attack_labels = _augmented_copies(1)
    benign, benign_labels = _benign(1)
    attacker_alarms, benign_alarms = [], []
    for i in range(300):
        attacker_alarms.append(detector.observe("attacker", attack[i], int(attack_labels[i])))
        benign_alarms.append(detector.observe("benign", benign[i], int(benign_labels[i])))
    assert any(attacker_alarms)
    assert not any(benign_alarms)
    assert detector.queries("attacker") == detector.queries("benign") == 300


def test_no_statistic_before_min_distances() -> None:
    detector = PradaDetector(min_distances=50)
    xs, labels = _benign(2, n=60)
    _, statistics = _stream(detector, "c", xs, labels)
    assert statistics[:50] == [None] * 50  # the first query of each class has no distance
    assert statistics[-1] is not None


def test_exact_repeats_are_not_distances() -> None:
    detector = PradaDetector(min_distances=3, window=3)
    for _ in range(100):
        assert detector.observe("retrying", DIGITS[0], 0) is None
    assert detector.statistic("retrying") is None
    assert detector.queries("retrying") == 100


def test_tracked_clients_are_capped_least_recent_first() -> None:
    detector = PradaDetector(max_clients=3)
    for client in ("a", "b", "c"):
        detector.observe(client, DIGITS[0], 0)
    detector.observe("a", DIGITS[1], 0)  # a is now the most recent
    detector.observe("d", DIGITS[2], 0)
    assert detector.tracked_clients == 3
    assert detector.queries("b") == 0  # forgotten
    assert detector.queries("a") == 2


def test_points_per_class_are_capped() -> None:
    detector = PradaDetector(max_points_per_class=20)
    for i in range(400):
        detector.observe("c", DIGITS[i] + i, 0)  # ever farther apart: every one grows the set
    assert detector.stored_bytes <= 20 * (64 + 1) * 4  # 20 points and their norms


def test_stored_points_stay_within_the_byte_budget() -> None:
    budget = 64 * 4 * 200
    detector = PradaDetector(max_bytes=budget)
    rng = np.random.default_rng(3)
    for i in range(200):
        for _ in range(10):
            detector.observe(f"client-{i}", rng.normal(size=64) * 10, int(rng.integers(10)))
            assert detector.stored_bytes <= budget  # counted before it is allocated, the newest client's too
    assert detector.tracked_clients < 200


ROW = (1024 + 1) * 4  # one stored point of 1,024 values and its norm


def test_a_growing_set_starts_with_room_for_one_point() -> None:
    detector = PradaDetector()
    rng = np.random.default_rng(4)
    for label in range(50):
        detector.observe("c", rng.random(1024, dtype=np.float32), label)
    assert detector.stored_bytes == 50 * ROW


def test_one_client_in_many_classes_is_held_to_its_share_of_the_budget() -> None:
    budget = 64 * ROW
    detector = PradaDetector(0.9, 100, 50, max_bytes=budget)
    assert detector.max_client_bytes == budget // 4  # the default share
    rng = np.random.default_rng(5)
    for label in range(200):  # a model that answers many classes, and a client that visits each
        for _ in range(3):
            detector.observe("many-classes", rng.random(1024, dtype=np.float32), label)
            assert detector.stored_bytes <= budget // 4
    assert detector.queries("many-classes") == 600
    assert detector.stored_bytes > budget // 8  # its recent classes are still tracked


def test_a_client_that_outgrows_its_share_forgets_its_least_recently_used_classes() -> None:
    detector = PradaDetector(max_bytes=4 * 4 * ROW, max_client_bytes=4 * ROW, every=1, min_distances=3, window=3)
    points = np.random.default_rng(6).random((5, 1024), dtype=np.float32)
    for label in range(4):
        detector.observe("c", points[label], label)
    detector.observe("c", points[0], 0)  # class 0 is used again (a repeat: nothing stored): 1 is now the oldest
    detector.observe("c", points[4], 9)  # a fifth class: one must go
    assert detector.stored_bytes == 4 * ROW
    classes = detector._clients["c"].sets
    assert sorted(classes) == [0, 2, 3, 9]


def test_a_heavy_client_does_not_push_every_other_client_out() -> None:
    detector = PradaDetector(max_bytes=64 * ROW)
    rng = np.random.default_rng(7)
    for client in ("a", "b", "c"):
        for label in range(4):
            detector.observe(client, rng.random(1024, dtype=np.float32), label)
    for label in range(500):
        detector.observe("heavy", rng.random(1024, dtype=np.float32), label)
    assert detector.stored_bytes <= 64 * ROW
    assert [detector.queries(client) for client in ("a", "b", "c")] == [4, 4, 4]


def test_a_point_larger_than_a_clients_share_is_not_stored() -> None:
    detector = PradaDetector(max_bytes=4 * ROW, max_client_bytes=ROW - 4)
    rng = np.random.default_rng(8)
    for _ in range(5):
        assert detector.observe("c", rng.random(1024, dtype=np.float32), 0) is None
    assert detector.stored_bytes == 0
    assert detector.queries("c") == 5


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": 0.0}, "threshold"),
        ({"window": 2}, "window holds"),
        ({"min_distances": 200}, "min_distances"),
        ({"max_clients": 0}, "caps"),
    ],
)
def test_settings_out_of_range_are_refused(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PradaDetector(**settings)  # type: ignore[arg-type]


def test_non_finite_queries_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        PradaDetector().observe("c", np.array([np.nan, 1.0]), 0)


def _checks(monkeypatch: pytest.MonkeyPatch, detector: PradaDetector, client: str) -> list[int]:
    """Record the client's query count at every W computation (read directly: W is computed under the lock)."""
    checks: list[int] = []
    real = prada_module.shapiro_w

    def spy(sample: np.ndarray) -> float:
        checks.append(detector._clients[client].queries)
        return real(sample)

    monkeypatch.setattr(prada_module, "shapiro_w", spy)
    return checks


def test_w_is_computed_when_the_window_fills_then_every_kth_query(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a detector judging windows of 20 distances every 7 queries
    detector = PradaDetector(window=20, min_distances=20, every=7)
    checks = _checks(monkeypatch, detector, "c")
    xs, labels = _benign(5, n=120)

    # when a client sends distinct natural samples (each class's first sample gives no distance)
    distances_after = []
    for x, label in zip(xs, labels, strict=True):
        detector.observe("c", x, int(label))
        distances_after.append(detector._clients["c"].filled)

    # then W is first computed at the query that fills the window, then at every 7th query after it
    full = distances_after.index(20) + 1
    assert checks == list(range(full, 121, 7))
    assert detector.statistic("c") is not None


def test_w_is_not_recomputed_while_no_distance_was_added(monkeypatch: pytest.MonkeyPatch) -> None:
    detector = PradaDetector(window=10, min_distances=10, every=3)
    checks = _checks(monkeypatch, detector, "c")
    xs, labels = _benign(6, n=60)
    for x, label in zip(xs, labels, strict=True):
        detector.observe("c", x, int(label))
    before = list(checks)
    for _ in range(30):  # exact repeats (of a growing-set point) add no distance: W would be the same
        detector.observe("c", xs[0], int(labels[0]))
    assert checks == before
    detector.observe("c", xs[0] + 1.0, int(labels[0]))  # a new distance: the overdue check runs
    assert checks == [*before, 91]


def test_with_every_one_the_statistic_is_the_current_windows_w() -> None:
    # given a detector judging every query, and a shadow that keeps the same distances but never judges
    detector = PradaDetector(window=30, min_distances=30, every=1)
    shadow = PradaDetector(window=30, min_distances=30, every=10**9)
    xs, labels = _augmented_copies(4, n=200, seeds=5, noise=0.5)

    for x, label in zip(xs, labels, strict=True):
        detector.observe("c", x, int(label))
        shadow.observe("c", x, int(label))
        state = shadow._clients["c"]
        # then after every query the statistic is W of the last 30 distances (none before there are 30)
        expected = None if state.filled < 30 else prada_module.shapiro_w(state.distances[: state.filled])
        assert detector.statistic("c") == expected


def test_alarms_come_only_at_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    detector = PradaDetector(every=10)
    checks = _checks(monkeypatch, detector, "attacker")
    alarms, _ = _stream(detector, "attacker", *_augmented_copies(2))
    assert alarms
    assert {alarm.queries for alarm in alarms} <= set(checks)
    assert all(later - earlier == 10 for earlier, later in itertools.pairwise(checks))


def test_observe_batch_is_observe_row_by_row() -> None:
    xs, labels = _augmented_copies(3, n=400)
    one = PradaDetector(window=40, min_distances=40, every=4)
    batched = PradaDetector(window=40, min_distances=40, every=4)
    singles = [one.observe("c", x, int(y)) for x, y in zip(xs, labels, strict=True)]
    batches = [batched.observe_batch("c", xs[i : i + 9], labels[i : i + 9]) for i in range(0, 400, 9)]
    assert [a.queries for a in singles if a] == [a.queries for alarms in batches for a in alarms]
    assert any(singles)
    assert one.statistic("c") == batched.statistic("c")
    assert one.stored_bytes == batched.stored_bytes


def test_the_default_judges_full_windows_every_tenth_query() -> None:
    detector = PradaDetector()
    assert (detector.window, detector.min_distances, detector.every) == (100, 100, 10)
    _, statistics = _stream(detector, "c", *_benign(7, n=150))
    first = next(i for i, w in enumerate(statistics) if w is not None)
    assert first >= 100


@pytest.mark.parametrize("every", [0, -1, True, 2.5])
def test_a_cadence_below_one_is_refused(every: object) -> None:
    with pytest.raises(ValueError, match="every"):
        PradaDetector(every=every)  # type: ignore[arg-type]


def test_observe_batch_refuses_mismatched_labels_and_non_finite_rows() -> None:
    detector = PradaDetector()
    with pytest.raises(ValueError, match="one label per query"):
        detector.observe_batch("c", DIGITS[:3], LABELS[:2])
    with pytest.raises(ValueError, match="finite"):
        detector.observe_batch("c", np.array([[1.0, np.inf]]), [0])
    assert detector.queries("c") == 0
