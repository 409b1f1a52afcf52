"""The verdict: every branch of decide(), the agreement-test builder and the JSON record."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from verification.methods.decision import (
    ClaimScreen,
    Decision,
    Standing,
    TestResult,
    agreement_test,
)
from verification.methods.decision import decide as _decide
from verification.methods.nulls import agreement_null
from verification.methods.statistics import binomial_test, panel_rank_p_value

ALPHA = 1e-3


def decide(**kwargs: Any) -> Decision:
    """decide() where every set's precedence is established (the standing rules: test_standing.py)."""
    kwargs.setdefault("standings", [Standing(t.name, precedes=True) for t in kwargs.get("tests", [])])
    return _decide(**kwargs)


def _test(name: str, p: float, *, conclusive: bool = True, kind: str = "watermark") -> TestResult:
    return TestResult(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        p_value=p,
        statistics={"K": 100, "m": 42},
        conclusive=conclusive,
        reason="" if conclusive else "too few queries",
    )


def _screen(name: str, rejected: bool) -> ClaimScreen:
    return ClaimScreen(name=name, rejected=rejected, p_value=1e-9 if rejected else 0.4, statistics={"panel": 20})


def _json_roundtrip(decision: Decision) -> dict[str, object]:
    text = json.dumps(decision.to_dict(), allow_nan=False)
    loaded: dict[str, object] = json.loads(text)
    return loaded


def test_integrity_failure_rejects_the_claim() -> None:
    d = decide(tests=[_test("wm", 1e-12)], integrity_ok=False)
    assert d.outcome == "claim_rejected"
    assert d.holm == {}
    assert "integrity" in d.reasons[0]
    assert _json_roundtrip(d)["outcome"] == "claim_rejected"


def test_all_evidence_flagged_rejects_the_claim() -> None:
    tests = [_test("wm", 1e-12), _test("fp", 1e-9, kind="fingerprint")]
    d = decide(tests=tests, screens=[_screen("wm", True), _screen("fp", True)], alpha=ALPHA)
    assert d.outcome == "claim_rejected"
    assert any("false-claim screen" in r for r in d.reasons)
    assert sum("transfers like adversarial examples" in r for r in d.reasons) == 2


def test_flagged_evidence_is_set_aside_and_others_decide() -> None:
    tests = [_test("wm", 1e-12), _test("di", 1e-5, kind="dataset_inference")]
    d = decide(tests=tests, screens=[_screen("wm", True), _screen("di", False)], alpha=ALPHA)
    assert d.outcome == "ownership_confirmed"
    assert d.holm == {"di": True}
    assert "wm" not in d.holm

    weak = [_test("wm", 1e-12), _test("di", 0.2, kind="dataset_inference")]
    d = decide(tests=weak, screens=[_screen("wm", True)], alpha=ALPHA)
    assert d.outcome == "not_confirmed"
    assert d.holm == {"di": False}


def test_ownership_confirmed_through_holm() -> None:
    tests = [_test("wm", 4e-4), _test("fp", 0.3, kind="fingerprint")]
    d = decide(tests=tests, screens=[_screen("wm", False)], alpha=ALPHA)
    assert d.outcome == "ownership_confirmed"
    assert d.holm == {"wm": True, "fp": False}
    assert d.reasons[-1].startswith("Ownership is confirmed")


def test_holm_correction_can_deny_a_bare_pass() -> None:
    # 6e-4 < alpha alone, but with two tests the smallest must be <= alpha / 2 = 5e-4.
    d = decide(tests=[_test("wm", 6e-4), _test("fp", 0.9, kind="fingerprint")], alpha=ALPHA)
    assert d.outcome == "not_confirmed"
    assert d.holm == {"wm": False, "fp": False}
    assert decide(tests=[_test("wm", 6e-4)], alpha=ALPHA).outcome == "ownership_confirmed"


def test_not_confirmed() -> None:
    d = decide(tests=[_test("wm", 0.04)], alpha=ALPHA)
    assert d.outcome == "not_confirmed"
    assert d.reasons[-1].startswith("Ownership is not confirmed")


def test_inconclusive_when_no_conclusive_test_remains() -> None:
    d = decide(tests=[_test("wm", 1.0, conclusive=False)], alpha=ALPHA)
    assert d.outcome == "inconclusive"
    assert d.holm == {}
    assert any("too few queries" in r for r in d.reasons)
    # Inconclusive tests are left out of Holm: they do not dilute the conclusive ones.
    d = decide(tests=[_test("wm", 8e-4), _test("fp", 1.0, conclusive=False, kind="fingerprint")], alpha=ALPHA)
    assert d.outcome == "ownership_confirmed"
    assert d.holm == {"wm": True}
    # Remaining test inconclusive after the other was flagged.
    d = decide(
        tests=[_test("wm", 1e-12), _test("fp", 1.0, conclusive=False, kind="fingerprint")],
        screens=[_screen("wm", True)],
    )
    assert d.outcome == "inconclusive"


def test_inconclusive_when_nothing_was_run() -> None:
    d = decide(tests=[])
    assert d.outcome == "inconclusive"
    assert d.reasons == ("No ownership test was run.",)


def test_decide_rejects_inconsistent_inputs() -> None:
    with pytest.raises(ValueError, match="unique"):
        decide(tests=[_test("wm", 0.1), _test("wm", 0.2)])
    with pytest.raises(ValueError, match="name no test"):
        decide(tests=[_test("wm", 0.1)], screens=[_screen("other", True)])
    with pytest.raises(ValueError, match="one screen"):
        decide(tests=[_test("wm", 0.1)], screens=[_screen("wm", True), _screen("wm", False)])
    with pytest.raises(ValueError, match="alpha"):
        decide(tests=[_test("wm", 0.1)], alpha=0.0)
    with pytest.raises(ValueError, match="p-value"):
        _test("wm", math.nan)
    with pytest.raises(ValueError, match="kind"):
        _test("wm", 0.1, kind="astrology")


def test_agreement_test_records_every_number() -> None:
    panel = [20, 25, 18, 22, 27, 19, 24, 21, 23, 26] * 2  # twenty models: the null has the model as its unit
    t = agreement_test(name="wm", kind="watermark", matches=90, trials=100, p0=0.3, panel_matches=panel, alpha=ALPHA)
    null = agreement_null(panel_matches=panel, trials=100, num_classes=None, alpha=ALPHA, rate_floor=0.3)
    assert t.conclusive
    assert t.p_value == pytest.approx(null.p_value(90))
    assert t.p_value >= binomial_test(90, 100, 0.3)  # never below the old pooled rule
    assert t.statistics["pooled_binomial_p_value"] == pytest.approx(binomial_test(90, 100, 0.3))
    assert t.statistics["K"] == 100
    assert t.statistics["m"] == 90
    assert t.statistics["p0"] == 0.3
    assert t.statistics["panel_size"] == 20
    assert t.statistics["panel_rank_p_value"] == pytest.approx(panel_rank_p_value(90, panel))
    assert t.statistics["min_achievable_p_value"] == pytest.approx(null.min_achievable_p_value())
    assert t.statistics["pooled_min_achievable_p_value"] == pytest.approx(0.3**100)
    assert decide(tests=[t], alpha=ALPHA).outcome == "ownership_confirmed"


def test_agreement_test_too_few_queries_is_inconclusive() -> None:
    # p0 = 0.5: 9 queries give at best 2**-9 > 1e-3.
    t = agreement_test(name="fp", kind="fingerprint", matches=9, trials=9, p0=0.5, alpha=ALPHA)
    assert not t.conclusive
    assert "more queries" in t.reason
    d = decide(tests=[t], alpha=ALPHA)
    assert d.outcome == "inconclusive"


def test_to_dict_is_json_safe_and_complete() -> None:
    tests = [
        TestResult(
            name="di",
            kind="dataset_inference",
            p_value=1.0,
            statistics={"t": math.nan, "df": math.inf, "n": 30, "split": "fixed"},
            conclusive=False,
            reason="Both samples are constant.",
        ),
        _test("wm", 1e-6),
    ]
    d = decide(tests=tests, screens=[_screen("wm", False)], alpha=ALPHA)
    record = _json_roundtrip(d)
    assert record["alpha"] == ALPHA
    assert record["holm"] == {"wm": True}
    assert record["outcome"] == "ownership_confirmed"
    listed = record["tests"]
    assert isinstance(listed, list)
    assert listed[0]["statistics"] == {"t": "nan", "df": "inf", "n": 30, "split": "fixed"}
    assert listed[1]["p_value"] == 1e-6
    assert record["screens"] == [{"name": "wm", "rejected": False, "p_value": 0.4, "statistics": {"panel": 20}}]
    assert record["reasons"] == list(d.reasons)
