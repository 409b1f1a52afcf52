"""The verdict: combine the ownership tests and the false-claim screens into one outcome.

Rules (DESIGN.md, "Methods and decision rules"), applied in this order by :func:`decide`:

1. An integrity failure (evidence that does not match its commitment) rejects the claim:
   ``claim_rejected``.
2. A test whose evidence set was flagged by a false-claim screen (it transfers to independent
   reference models) is removed. Screens are matched to tests by name. If every test was flagged:
   ``claim_rejected``.
3. Holm-Bonferroni at ``alpha`` over the remaining *conclusive* tests. Any rejection of the null:
   ``ownership_confirmed``.
4. Otherwise, if no conclusive test remains (too few queries to reach alpha even at a perfect match,
   a suspect that failed to answer, no test run at all): ``inconclusive``.
5. Otherwise ``not_confirmed``.

Every number goes into the :class:`Decision`; :meth:`Decision.to_dict` gives a JSON-safe record
(non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from verification.methods.statistics import (
    binomial_test,
    holm_bonferroni,
    min_achievable_p_value,
    panel_rank_p_value,
)

__all__ = [
    "DEFAULT_ALPHA",
    "ClaimScreen",
    "Decision",
    "Outcome",
    "StatValue",
    "TestKind",
    "TestResult",
    "agreement_test",
    "decide",
]

DEFAULT_ALPHA = 1e-3

TestKind = Literal["watermark", "fingerprint", "dataset_inference"]
Outcome = Literal["ownership_confirmed", "not_confirmed", "claim_rejected", "inconclusive"]
StatValue = float | int | str


def _json_number(value: Any) -> Any:
    """Python int/float/str/bool/None for JSON; non-finite floats as strings."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "item"):  # NumPy scalar
        return _json_number(value.item())
    if isinstance(value, dict):
        return {str(k): _json_number(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_number(v) for v in value]
    raise TypeError(f"Cannot record {value!r} ({type(value).__name__}) in a verdict.")


def _check_p(p: float, what: str) -> None:
    if not (0.0 <= float(p) <= 1.0):  # also rejects NaN
        raise ValueError(f"The p-value of {what} must lie in [0, 1], got {p!r}.")


@dataclass(frozen=True)
class TestResult:
    """One ownership test run against the suspect.

    ``conclusive`` is False when the test could not have confirmed ownership whatever the suspect
    answered (e.g. ``p0 ** K > alpha``) or could not be run (suspect failed); ``reason`` says why.
    """

    __test__ = False  # not a pytest test class

    name: str
    kind: TestKind
    p_value: float
    statistics: dict[str, StatValue] = field(default_factory=dict)
    conclusive: bool = True
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("A test needs a name.")
        if self.kind not in get_args(TestKind):
            raise ValueError(f"Unknown test kind {self.kind!r}; expected one of {get_args(TestKind)}.")
        _check_p(self.p_value, f"test {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "p_value": _json_number(self.p_value),
            "statistics": _json_number(dict(self.statistics)),
            "conclusive": self.conclusive,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ClaimScreen:
    """False-claim screen of one evidence set (named like the test that uses it).

    ``rejected`` is True when the set's agreement on independent reference models is significantly
    above chance: the evidence transfers like adversarial examples and proves nothing.
    """

    name: str
    rejected: bool
    p_value: float
    statistics: dict[str, StatValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("A screen needs the name of the test whose evidence it screens.")
        _check_p(self.p_value, f"screen {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rejected": self.rejected,
            "p_value": _json_number(self.p_value),
            "statistics": _json_number(dict(self.statistics)),
        }


@dataclass(frozen=True)
class Decision:
    """The verdict with every input that led to it."""

    outcome: Outcome
    alpha: float
    tests: tuple[TestResult, ...]
    screens: tuple[ClaimScreen, ...]
    holm: dict[str, bool]
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "alpha": _json_number(self.alpha),
            "tests": [t.to_dict() for t in self.tests],
            "screens": [s.to_dict() for s in self.screens],
            "holm": {k: bool(v) for k, v in self.holm.items()},
            "reasons": list(self.reasons),
        }


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}.")
    return alpha


def agreement_test(
    *,
    name: str,
    kind: Literal["watermark", "fingerprint"],
    matches: int,
    trials: int,
    p0: float,
    panel_matches: Sequence[int] = (),
    alpha: float = DEFAULT_ALPHA,
    tie_break: float | None = None,
) -> TestResult:
    """Watermark / fingerprint test as a :class:`TestResult`: exact binomial p-value against p0.

    Records K, m, p0, the binomial p-value, the smallest achievable p-value and, when a panel is
    given, the rank p-value of the suspect among the panel (reported, not used for the verdict: it
    can never go below ``1 / (1 + len(panel))``). Inconclusive when ``p0 ** K > alpha``.
    """
    alpha = _check_alpha(alpha)
    p_value = binomial_test(matches, trials, p0)
    floor = min_achievable_p_value(trials, p0)
    stats: dict[str, StatValue] = {
        "K": int(trials),
        "m": int(matches),
        "p0": float(p0),
        "match_rate": matches / trials,
        "binomial_p_value": p_value,
        "min_achievable_p_value": floor,
    }
    if len(panel_matches) > 0:
        stats["panel_size"] = len(panel_matches)
        stats["panel_rank_p_value"] = panel_rank_p_value(matches, panel_matches)
        if tie_break is not None:
            # exact under exchangeability (ties broken by a draw made before the suspect answered)
            stats["panel_rank_p_value_randomised"] = panel_rank_p_value(matches, panel_matches, tie_break=tie_break)
            stats["tie_break"] = float(tie_break)
    conclusive = floor <= alpha
    reason = (
        ""
        if conclusive
        else (
            f"With K={trials} queries and p0={p0:.4g}, even a perfect match gives p={floor:.3g}, "
            f"above alpha={alpha:g}: more queries are needed."
        )
    )
    return TestResult(name=name, kind=kind, p_value=p_value, statistics=stats, conclusive=conclusive, reason=reason)


def decide(
    *,
    tests: Sequence[TestResult],
    screens: Sequence[ClaimScreen] = (),
    integrity_ok: bool = True,
    alpha: float = DEFAULT_ALPHA,
) -> Decision:
    """Apply the decision rules of the module docstring.

    Raises ``ValueError`` for duplicate test names, duplicate screens, or a screen that names no test.
    """
    alpha = _check_alpha(alpha)
    tests = tuple(tests)
    screens = tuple(screens)
    names = [t.name for t in tests]
    if len(set(names)) != len(names):
        raise ValueError(f"Test names must be unique, got {names}.")
    screen_names = [s.name for s in screens]
    if len(set(screen_names)) != len(screen_names):
        raise ValueError(f"At most one screen per evidence set, got {screen_names}.")
    unknown = sorted(set(screen_names) - set(names))
    if unknown:
        raise ValueError(f"Screens {unknown} name no test that was run.")

    def verdict(outcome: Outcome, reasons: list[str], holm: dict[str, bool] | None = None) -> Decision:
        return Decision(outcome, alpha, tests, screens, holm or {}, tuple(reasons))

    if not integrity_ok:
        return verdict(
            "claim_rejected",
            ["The evidence does not match its commitment (integrity check failed), so the claim is rejected."],
        )

    reasons: list[str] = []
    flagged = {s.name for s in screens if s.rejected}
    for s in screens:
        if s.rejected:
            reasons.append(
                f"The evidence of {s.name!r} also agrees with independent reference models beyond chance "
                f"(screen p={s.p_value:.3g}): it transfers like adversarial examples and is set aside."
            )
    if tests and flagged == set(names):
        reasons.append("Every piece of evidence failed the false-claim screen, so the claim is rejected.")
        return verdict("claim_rejected", reasons)

    remaining = [t for t in tests if t.name not in flagged]
    conclusive = [t for t in remaining if t.conclusive]
    for t in remaining:
        if not t.conclusive:
            reasons.append(f"Test {t.name!r} is inconclusive" + (f": {t.reason}" if t.reason else "."))

    if not conclusive:
        reasons.append(
            "No ownership test was run." if not tests else "No conclusive test remains, so no verdict can be reached."
        )
        return verdict("inconclusive", reasons)

    holm = holm_bonferroni({t.name: t.p_value for t in conclusive}, alpha)
    confirmed = [t for t in conclusive if holm[t.name]]
    for t in conclusive:
        if holm[t.name]:
            reasons.append(
                f"Test {t.name!r} ({t.kind}) rejects independence: p={t.p_value:.3g} passes the "
                f"Holm-Bonferroni threshold at alpha={alpha:g} over {len(conclusive)} test(s)."
            )
        else:
            reasons.append(
                f"Test {t.name!r} ({t.kind}) does not reject independence: p={t.p_value:.3g} "
                f"at alpha={alpha:g} over {len(conclusive)} test(s) (Holm-Bonferroni)."
            )
    if confirmed:
        reasons.append("Ownership is confirmed: the suspect is not independent of the claimant's model.")
        return verdict("ownership_confirmed", reasons, holm)
    reasons.append("Ownership is not confirmed: no test shows the suspect to depend on the claimant's model.")
    return verdict("not_confirmed", reasons, holm)
