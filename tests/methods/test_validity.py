"""The validity benchmark, reduced to one seed: the same checks the full benchmark prints must pass."""

from __future__ import annotations

import pytest

from verification.methods.validity import configs_for, format_report, run_validity, summarise


@pytest.mark.slow
def test_reduced_validity_benchmark_passes_every_check() -> None:
    config = configs_for(["quick"])
    report = run_validity(config)
    summary = summarise(report)
    text = format_report(report, summary)
    # timings belong to the benchmark, not to the test: the cost check is printed, never asserted here
    failed = [name for name, ok in summary["checks"] if not ok and not name.startswith("cost:")]
    assert not failed, text
    rows = {(r["task"], r["suspect"], r["method"]): r for r in summary["rows"]}
    # every kind of suspect met every method it should
    for theft in ("copy", "fine_tune", "prune", "distill", "extract"):
        assert ("digits", theft, "watermark") in rows
    for theft in ("copy", "distill"):
        assert ("synthetic", theft, "di_mingd") in rows
        assert ("synthetic", theft, "di_blind_walk") in rows
    for eps in ("0.1", "0.2", "0.3"):
        assert rows[("digits", f"false_claim_eps{eps}", "watermark")]["ownership_confirmed"] == 0
    # dataset inference has power where training data is memorised: the copy is found on the synthetic task
    assert rows[("synthetic", "copy", "di_mingd")]["ownership_confirmed"] == 1.0, text
    assert summary["cost"]["max_abs_difference"] < 1e-4, text
    assert "checks" in text
