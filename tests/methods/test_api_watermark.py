"""The API-watermark test: valid under either null, powerful against a knockoff, strict about its inputs."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from verification.methods.api_watermark import api_watermark_binding, api_watermark_test

C = 10
K = 100
PANEL = 20

Labels = npt.NDArray[np.int64]


def _journal(rng: np.random.Generator, rows: int = K) -> tuple[Labels, Labels]:
    """The claimant's labels and the guard's served labels: uniform over the other C - 1 classes."""
    claimant = rng.integers(0, C, size=rows)
    served = (claimant + rng.integers(1, C, size=rows)) % C
    return claimant, served


def _independent(rng: np.random.Generator, claimant: Labels, error_rate: float) -> Labels:
    """A model that never saw the served labels: the claimant's label, or a uniform other class on its errors."""
    wrong = rng.random(claimant.size) < error_rate
    other = (claimant + rng.integers(1, C, size=claimant.size)) % C
    return np.where(wrong, other, claimant)


def _run(
    rng: np.random.Generator, *, suspect_error: float, panel_error: float, alpha: float = 0.05
) -> tuple[float, float, float]:
    claimant, served = _journal(rng)
    suspect = _independent(rng, claimant, suspect_error)
    panel = [_independent(rng, claimant, panel_error) for _ in range(PANEL)]
    test = api_watermark_test(
        name="api",
        suspect_labels=suspect,
        served_labels=served,
        claimant_labels=claimant,
        panel_labels=panel,
        num_classes=C,
        alpha=alpha,
    )
    return test.p_value, float(test.statistics["p_value_panel"]), float(test.statistics["p_value_guard"])


def _upper(rate: float, n: int) -> int:
    """The largest count of false positives a valid test at ``rate`` shows over ``n`` runs, but 1 in 10^4."""
    return int(stats.binom.ppf(1 - 1e-4, n, rate))


def test_valid_under_the_null_with_an_exchangeable_suspect() -> None:
    rng = np.random.default_rng(11)
    n = 2000
    results = np.array([_run(rng, suspect_error=0.1, panel_error=0.1) for _ in range(n)])
    for column in range(3):  # the verdict's p, then each of its two parts
        assert (results[:, column] <= 0.05).sum() <= _upper(0.05, n)
        assert (results[:, column] <= 0.2).sum() <= _upper(0.2, n)
    # the guard's p alone is the exact conditional law: close to nominal, not just conservative
    assert (results[:, 2] <= 0.2).sum() >= 0.5 * 0.2 * n


def test_the_guard_null_covers_a_suspect_unlike_the_panel() -> None:
    # the panel is far more accurate than the suspect, so the panel's null is wrong for it; the guard's
    # construction still makes the served labels independent of the suspect, and the verdict stays valid
    rng = np.random.default_rng(12)
    n = 2000
    results = np.array([_run(rng, suspect_error=0.6, panel_error=0.02) for _ in range(n)])
    assert (results[:, 1] <= 0.05).sum() > _upper(0.05, n)  # the panel's null alone would fail here
    assert (results[:, 0] <= 0.05).sum() <= _upper(0.05, n)


def test_confirms_a_suspect_that_learnt_a_third_of_the_wrong_labels() -> None:
    rng = np.random.default_rng(13)
    claimant, served = _journal(rng)
    suspect = _independent(rng, claimant, 0.1)
    learnt = rng.permutation(K)[:30]
    suspect[learnt] = served[learnt]
    panel = [_independent(rng, claimant, 0.1) for _ in range(PANEL)]
    test = api_watermark_test(
        name="api",
        suspect_labels=suspect,
        served_labels=served,
        claimant_labels=claimant,
        panel_labels=panel,
        num_classes=C,
    )
    assert test.kind == "api_watermark"
    assert test.conclusive
    assert test.statistics["m"] >= 30
    assert test.statistics["K"] == K
    assert test.p_value <= 1e-3
    assert test.p_value == max(test.statistics["p_value_panel"], test.statistics["p_value_guard"])


def test_rows_the_claimant_answers_as_served_are_left_out() -> None:
    rng = np.random.default_rng(14)
    claimant, served = _journal(rng, 60)
    claimant[:10] = served[:10]
    suspect = served.copy()  # matches everything, the unbound rows included
    panel = [_independent(rng, claimant, 0.1) for _ in range(PANEL)]
    test = api_watermark_test(
        name="api",
        suspect_labels=suspect,
        served_labels=served,
        claimant_labels=claimant,
        panel_labels=panel,
        num_classes=C,
    )
    assert test.statistics["unbound_rows"] == 10
    assert test.statistics["K"] == 50
    assert test.statistics["m"] == 50
    assert test.statistics["D"] == 50
    assert test.statistics["p_value_guard"] == pytest.approx((1 / (C - 1)) ** 50)


def test_a_journal_the_claimant_model_carries_is_inconclusive() -> None:
    served = np.array([1, 2, 3, 4])
    test = api_watermark_test(
        name="api",
        suspect_labels=served,
        served_labels=served,
        claimant_labels=served,
        panel_labels=[served, served],
        num_classes=C,
    )
    assert not test.conclusive
    assert test.p_value == 1.0
    assert test.statistics["unbound_rows"] == 4


def test_too_few_rows_is_inconclusive() -> None:
    rng = np.random.default_rng(15)
    claimant, served = _journal(rng, 3)
    test = api_watermark_test(
        name="api",
        suspect_labels=served,
        served_labels=served,
        claimant_labels=claimant,
        panel_labels=[_independent(rng, claimant, 0.1) for _ in range(PANEL)],
        num_classes=C,
    )
    assert not test.conclusive
    assert "more journaled rows" in test.reason


def test_binding() -> None:
    served = np.arange(20) % C
    own = (served + 1) % C
    assert api_watermark_binding(claimant_labels=own, served_labels=served) == (True, 0.0)
    carried = own.copy()
    carried[:2] = served[:2]
    assert api_watermark_binding(claimant_labels=carried, served_labels=served) == (True, 0.1)
    carried[:3] = served[:3]
    assert api_watermark_binding(claimant_labels=carried, served_labels=served) == (False, 0.15)
    assert api_watermark_binding(claimant_labels=served, served_labels=served) == (False, 1.0)
    assert api_watermark_binding(claimant_labels=carried, served_labels=served, max_agreement=0.2)[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"suspect_labels": np.zeros(3, dtype=int)}, "suspect_labels has 3 labels, but the journal has 4 rows"),
        ({"claimant_labels": np.array([0, 1, 2, C])}, "outside the 10 classes"),
        ({"served_labels": np.array([0, -1, 2, 3])}, "negative label"),
        ({"panel_labels": [np.zeros(5, dtype=int)]}, r"panel_labels\[0\] has 5 labels"),
        ({"suspect_labels": np.array([0.5, 1, 2, 3])}, "whole class numbers"),
        ({"suspect_labels": np.zeros((2, 2), dtype=int)}, "one-dimensional"),
        ({"num_classes": 1}, "num_classes must be an integer of at least 2"),
        ({"alpha": 0.0}, "alpha must lie strictly between 0 and 1"),
        (
            {
                "served_labels": np.array([], dtype=int),
                "suspect_labels": np.array([], dtype=int),
                "claimant_labels": np.array([], dtype=int),
                "panel_labels": [],
            },
            "no rows",
        ),
    ],
)
def test_bad_inputs_are_refused(change: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "name": "api",
        "suspect_labels": np.array([0, 1, 2, 3]),
        "served_labels": np.array([1, 2, 3, 4]),
        "claimant_labels": np.array([0, 1, 2, 3]),
        "panel_labels": [np.array([0, 1, 2, 3])],
        "num_classes": C,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        api_watermark_test(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("claimant", "served", "limit", "message"),
    [
        ([0, 1], [0, 1, 2], 0.1, "claimant_labels has 2 labels, but the journal has 3 rows"),
        ([], [], 0.1, "no rows"),
        ([0, 1], [0, 1], 1.5, "max_agreement must be a share"),
        ([0, -2], [0, 1], 0.1, "negative label"),
    ],
)
def test_bad_binding_inputs_are_refused(claimant: list[int], served: list[int], limit: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        api_watermark_binding(claimant_labels=claimant, served_labels=served, max_agreement=limit)
