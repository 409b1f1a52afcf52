"""The API-watermark test: did the suspect learn the wrong labels a guarded prediction API served?

The owner runs a guard in front of its prediction API. For a small keyed-HMAC-selected share of the
queries the guard serves a wrong label (a class other than the model's own answer, drawn from the
HMAC), journals the input and the served label, and commits the journal in batches. A thief who
trains a knockoff on the API's answers learns some of those wrong labels; a model built without the
API's answers has no reason to give them.

Only journaled rows where the claimant's model disagrees with the served label count ("bound" rows;
the others are reported as ``unbound_rows``). On the K bound rows the suspect gives the served label
m times. Two null hypotheses, two p-values, and the test reports ``p = max(p_panel, p_guard)``: an
intersection-union test, valid whenever either null holds.

* ``p_panel`` (the model is the unit): the suspect is exchangeable with the reference panel's
  independent models. :func:`verification.methods.nulls.agreement_null` with the panel's match
  counts on the same rows, with no chance floor: independent models give a deliberately wrong label
  far less often than 1/C, so only a tiny ``rate_floor`` is kept.
* ``p_guard`` (the guard's construction): each served label is uniform over the C - 1 classes other
  than the claimant's label, drawn from a key the suspect never saw. Given the suspect's answers, a
  row where it gives the claimant's label cannot match, and each of the D rows where it does not
  matches with probability 1 / (C - 1), independently: ``p_guard = P[Binomial(D, 1/(C-1)) >= m]``.

The first holds even if the owner did not draw labels as the guard says; the second holds even for a
suspect unlike any panel model. The verdict takes the larger, so it needs both to be small.

Pure NumPy/SciPy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from verification.methods.decision import DEFAULT_ALPHA, StatValue, TestResult
from verification.methods.nulls import agreement_null
from verification.methods.statistics import binomial_test

__all__ = ["NULL_RATE_FLOOR", "api_watermark_binding", "api_watermark_test"]

# Independent models match a deliberately wrong label far below chance; this floor only keeps the
# null's mean positive.
NULL_RATE_FLOOR = 1e-6


def _labels(
    values: npt.ArrayLike, what: str, num_classes: int | None = None, rows: int | None = None
) -> npt.NDArray[np.int64]:
    """A 1-D array of class indices (below ``num_classes`` when given), of ``rows`` entries when given."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a one-dimensional array of class labels, got shape {arr.shape}.")
    whole_floats = (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.isfinite(arr))) and bool(np.all(arr == np.round(arr)))
    )
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or whole_floats):
        raise ValueError(f"{what} must hold whole class numbers, got values of type {arr.dtype}.")
    labels = arr.astype(np.int64)
    if rows is not None and labels.size != rows:
        raise ValueError(f"{what} has {labels.size} labels, but the journal has {rows} rows.")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{what} holds a negative label ({int(labels.min())}); class labels start at 0.")
    if labels.size and num_classes is not None and labels.max() >= num_classes:
        raise ValueError(
            f"{what} holds the label {int(labels.max())}, outside the {num_classes} classes 0..{num_classes - 1}."
        )
    return labels


def _num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes!r}.")
    return int(num_classes)


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}.")
    return alpha


def _guard_p_value(matches: int, disagreements: int, num_classes: int) -> float:
    """P[Binomial(D, 1/(C-1)) >= m]: the served labels are uniform over the classes the claimant did not give."""
    if matches == 0 or disagreements == 0:
        return 1.0
    return binomial_test(matches, disagreements, 1.0 / (num_classes - 1))


def api_watermark_test(
    *,
    name: str,
    suspect_labels: npt.ArrayLike,
    served_labels: npt.ArrayLike,
    claimant_labels: npt.ArrayLike,
    panel_labels: Sequence[npt.ArrayLike],
    num_classes: int,
    alpha: float = DEFAULT_ALPHA,
) -> TestResult:
    """The API-watermark test of the module docstring, as a :class:`TestResult` of kind ``"api_watermark"``.

    Every array holds one label per journaled row (``panel_labels`` one such array per reference
    model). Conclusive when a suspect that gave every served label (m = K) would reach ``alpha``.
    Raises ``ValueError`` for an empty journal, arrays of different lengths or labels out of range.
    """
    classes = _num_classes(num_classes)
    alpha = _check_alpha(alpha)
    served = _labels(served_labels, "served_labels", classes)
    rows = int(served.size)
    if rows == 0:
        raise ValueError("The journal has no rows: there is nothing to test the suspect on.")
    suspect = _labels(suspect_labels, "suspect_labels", classes, rows)
    claimant = _labels(claimant_labels, "claimant_labels", classes, rows)
    panel = [_labels(p, f"panel_labels[{i}]", classes, rows) for i, p in enumerate(panel_labels)]

    bound = claimant != served
    trials = int(bound.sum())
    unbound = rows - trials
    if trials == 0:
        return TestResult(
            name=name,
            kind="api_watermark",
            p_value=1.0,
            statistics={"K": 0, "m": 0, "D": 0, "unbound_rows": unbound, "panel_size": len(panel)},
            conclusive=False,
            reason="The claimant's model gives the served label on every journaled row: no row shows a wrong answer.",
        )
    matches = int((suspect[bound] == served[bound]).sum())
    disagreements = int((suspect[bound] != claimant[bound]).sum())
    panel_matches = [int((p[bound] == served[bound]).sum()) for p in panel]

    null = agreement_null(
        panel_matches=panel_matches, trials=trials, num_classes=None, alpha=alpha, rate_floor=NULL_RATE_FLOOR
    )
    p_panel = null.p_value(matches)
    p_guard = _guard_p_value(matches, disagreements, classes)
    floor = max(null.min_achievable_p_value(), _guard_p_value(trials, trials, classes))
    stats: dict[str, StatValue] = {
        **null.statistics(),
        "K": trials,
        "m": matches,
        "D": disagreements,
        "match_rate": matches / trials,
        "p_value_panel": p_panel,
        "p_value_guard": p_guard,
        "min_achievable_p_value": floor,
        "panel_size": len(panel),
        "panel_max_matches": max(panel_matches, default=0),
        "unbound_rows": unbound,
    }
    conclusive = floor <= alpha
    reason = (
        ""
        if conclusive
        else (
            f"With K={trials} journaled wrong answers and a panel of {len(panel)} model(s), even a suspect "
            f"giving every served label gets p={floor:.3g}, above alpha={alpha:g}: more journaled rows are needed"
            + (", or a larger reference panel." if null.min_achievable_p_value() > alpha else ".")
        )
    )
    return TestResult(
        name=name,
        kind="api_watermark",
        p_value=min(1.0, max(p_panel, p_guard)),
        statistics=stats,
        conclusive=conclusive,
        reason=reason,
    )


def api_watermark_binding(
    *, claimant_labels: npt.ArrayLike, served_labels: npt.ArrayLike, max_agreement: float = 0.1
) -> tuple[bool, float]:
    """Whether a journal is bound to the claimant's model: ``(bound, agreement)``.

    The guard serves, on every watermarked row, a label other than its model's own answer. So the
    claimant's registered model should give the served label on (almost) no journaled row; a model
    that "carries" the served labels is not the model that served them. ``agreement`` is the share
    of rows where it gives the served label; the journal is bound when that is at most ``max_agreement``.
    """
    threshold = float(max_agreement)
    if not 0.0 <= threshold <= 1.0:  # also rejects NaN
        raise ValueError(f"max_agreement must be a share in [0, 1], got {max_agreement!r}.")
    served = _labels(served_labels, "served_labels")
    if served.size == 0:
        raise ValueError("The journal has no rows: there is nothing to bind.")
    claimant = _labels(claimant_labels, "claimant_labels", rows=int(served.size))
    agreement = float(np.mean(claimant == served))
    return agreement <= threshold, agreement
