"""The API guard's validity rows and its benchmark, reduced: what they produce, never how fast."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats

from benchmarks import guard as bench
from verification.methods.datasets import digits_task
from verification.methods.panels import train_panel
from verification.methods.validity import (
    GUARD_ROWS,
    ValidityReport,
    _guard_checks,
    _guard_disputes,
    _guard_lines,
    _guard_mark,
    _guard_summary,
    _owner,
    configs_for,
)


def _binomial_range(n: int, rate: float, tail: float = 1e-4) -> tuple[float, float]:
    """Where Binomial(n, rate) falls but for ``tail`` on each side."""
    return float(stats.binom.ppf(tail, n, rate)), float(stats.binom.isf(tail, n, rate))


@pytest.mark.slow
def test_guard_rows_produce_their_records() -> None:
    # given one digits seed with a small panel and four independent models
    config = dataclasses.replace(configs_for(["quick"]), guard_budgets=(5_000,), guard_mixup_budget=3_000)
    task = digits_task(0)
    owner = _owner(task, 0, "mlp", 60)
    panel = train_panel(task, size=8, seed=0, epochs=30)
    independents = train_panel(task, size=4, seed=20_000, epochs=30, name_prefix="ind").modules

    # when the guarded API is stolen and every model is put to the journal
    records = _guard_disputes(config, 0, task, owner, panel, independents)

    # then one knockoff record per thief and one record per independent model, on the same journal
    by_row = {name: [r for r in records if r.suspect == name] for name in GUARD_ROWS}
    assert [r.method for r in by_row["guard_knockoff"]] == ["api_wm_q5000"]
    assert [r.method for r in by_row["guard_knockoff_mixup"]] == ["api_wm_q3000"]
    assert len(by_row["guard_independent"]) == len(independents)
    (knockoff,) = by_row["guard_knockoff"]
    lo, hi = _binomial_range(5_000, config.guard_rate)
    assert lo <= knockoff.extra["watermarked"] <= hi
    assert {r.extra["watermarked"] for r in by_row["guard_independent"]} == {knockoff.extra["watermarked"]}
    # the owner never gives the label it served instead of its own: the journal is bound, no row left out
    assert knockoff.extra["binding_agreement"] == 0.0
    assert knockoff.extra["unbound_rows"] == 0
    assert knockoff.extra["m"] <= knockoff.extra["D"] <= knockoff.extra["K"] == knockoff.extra["watermarked"]
    # the noisy thief's knockoff learnt the wrong labels it was served; no independent model is confirmed
    assert knockoff.extra["m"] >= knockoff.extra["K"] / 3
    assert knockoff.extra["p_value_guard"] <= 1e-6
    assert all(r.outcome != "ownership_confirmed" for r in by_row["guard_independent"])

    # and the honest users' cost is the share of answers changed, within the binomial range of the rate
    rows, changed = int(knockoff.extra["holdout_rows"]), int(knockoff.extra["holdout_changed"])
    lo, hi = _binomial_range(rows, config.guard_rate)
    assert rows == len(task.holdout_x)
    assert lo <= changed <= hi
    cost = knockoff.extra["holdout_accuracy_own"] - knockoff.extra["holdout_accuracy_served"]
    assert -1e-12 <= cost <= changed / rows + 1e-12

    # and the summary reads them back
    report = ValidityReport(config=dataclasses.replace(config, seeds=(0,)), records=records)
    summary = _guard_summary(report)
    assert summary["independent_n"] == len(independents)
    assert summary["holdout_changed"] == changed
    assert {(row["suspect"], row["queries"]) for row in summary["ladder"]} == {
        ("guard_knockoff", 5_000),
        ("guard_knockoff_mixup", 3_000),
    }
    checks = dict(_guard_checks(report.config, summary))
    assert any(text.startswith("guard_independent: never confirmed, 0 of 4") for text in checks)
    assert "guard_knockoff" in "\n".join(_guard_lines(summary))


def test_the_guard_changes_only_the_answers_its_key_selects() -> None:
    # given the guard of one seed on the holdout
    config = configs_for(["quick"])
    task = digits_task(0)
    mark = _guard_mark(config, 0, task)
    own = np.arange(len(task.holdout_x)) % task.num_classes

    # when it serves the holdout
    served, _, mask = mark.serve_batch(task.holdout_x, own, None)

    # then exactly the selected answers differ, and the same key selects the same inputs again
    assert np.array_equal(served != own, mask)
    assert np.array_equal(mark.serve_batch(task.holdout_x, own, None)[2], mask)
    assert mask.any()
    assert np.all((served[mask] >= 0) & (served[mask] < task.num_classes))


@pytest.mark.slow
def test_quick_guard_benchmark_measures_every_part() -> None:
    # when the benchmark runs at its reduced size
    results = bench.run(bench.QUICK)
    figures = results.figures
    text = results.table()

    # then every part produced its figures; timings are printed, never asserted
    for part in (
        "(a) in-process overhead",
        "(a) overhead / bare predict call",
        "(a) overhead / bare served HTTP request",
        "(a) proxy's cost",
        "(a) part: client tag (cached)",
        "(a) part: Shapiro-Wilk W",
        "(b) build the npz",
        "(b) flush one batch",
    ):
        assert part in text
    assert "(c) PRADA: benign streams alarmed" in text
    assert figures["in_process_queries"] == bench.QUICK.in_process_calls + 20
    # the overhead's share of the served request is computed from the two baselines of the same run
    overhead_median = figures["in_process_overhead_s"][0]
    assert figures["served_overhead"] == pytest.approx(overhead_median / figures["http_bare_s"][0])
    # through the proxy the served label is the model's own exactly when the key does not select the input
    assert figures["proxy_consistent"] == figures["proxy_requests"] == bench.QUICK.http_requests
    assert figures["batch_rows"] == bench.BATCH
    assert figures["flush_committed"] == bench.BATCH
    assert figures["npz_bytes"] > 0
    assert figures["benign_streams"] == bench.QUICK.benign_streams
    assert 0 <= figures["benign_alarmed"] <= figures["benign_streams"]
    for kind in ("augment", "augment_every1", "noise", "mixup", "synthetic"):
        assert len(figures[f"thief_{kind}_flagged"]) == bench.QUICK.thief_seeds
    # the thief that augments as it goes is flagged in every seed, once the window of 100 distances is full
    assert all(q is not None and q >= 100 for q in figures["thief_augment_flagged"])
    assert "(c) PRADA: augment-as-you-go thief" in text
    assert "FLAGGED in" in text
    lo, hi = _binomial_range(figures["rate_queries"], bench.RATE)
    assert lo <= figures["rate_selected"] <= hi
    assert len(results.targets) == 3


def test_the_augment_as_you_go_thief_sends_each_sample_then_its_copies() -> None:
    # given three public samples
    pool = np.linspace(0.0, 1.0, 3 * 4, dtype=np.float32).reshape(3, 4)

    # when the thief augments them as it goes
    queries = bench._augment_as_you_go(pool, 2, 0.1, np.random.default_rng(0))

    # then each public sample comes once, followed by two noisy copies close to it, inside [0, 1]
    assert queries.shape == (9, 4)
    originals = queries[::3]
    assert sorted(map(tuple, originals.tolist())) == sorted(map(tuple, pool.tolist()))
    for k in range(3):
        copies = queries[3 * k + 1 : 3 * k + 3]
        assert not np.array_equal(copies[0], originals[k])
        assert np.all(np.abs(copies - originals[k]) < 0.6)
    assert queries.min() >= 0.0
    assert queries.max() <= 1.0
