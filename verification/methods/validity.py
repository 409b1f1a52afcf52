"""The validity benchmark: how often each method gives each outcome, per kind of suspect, over seeds.

For every seed, on scikit-learn's digits: an owner model with a seeded watermark embedded and a set
of conferrable fingerprints; a reference panel; independent models made by the panel's recipe with
other seeds (exchangeable with the panel); the thefts of :mod:`verification.methods.thefts`; and a
false claimant who crafts targeted transferable adversarial examples against models of their own
and claims them as a watermark against innocent (independent) suspects. Dataset inference runs on
digits and on the generated task that memorises, where it has power.

Every dispute is decided by :func:`verification.methods.decision.decide` with one method's test (and
its false-claim screen), exactly as a verification run would. :func:`summarise` turns the records
into the tables and the pass/fail checks that ``make bench-validity`` prints.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats  # type: ignore[import-untyped]
from torch import nn

from modelcourt.embed import embed_watermark
from ownership.watermarks import generate_watermark
from verification.methods.dataset_inference import (
    dataset_inference_test,
    mingd_distances,
    mingd_distances_naive,
)
from verification.methods.datasets import TaskData, digits_task, synthetic_task
from verification.methods.decision import Outcome, TestResult, decide
from verification.methods.evaluate import AgreementClaim, agreement_claim_test
from verification.methods.fingerprints import generate_fingerprints
from verification.methods.panels import ReferencePanel, load_or_train_panel, train_panel
from verification.methods.statistics import binomial_test
from verification.methods.suspects import TorchModuleSuspect
from verification.methods.thefts import THEFT_KINDS, TheftKind, false_claim_set, fine_tune, simulate
from verification.methods.training import build_model, train_classifier

__all__ = [
    "DisputeRecord",
    "ValidityConfig",
    "ValidityReport",
    "configs_for",
    "format_report",
    "main_checks_pass",
    "run_validity",
    "summarise",
]

OUTCOMES: tuple[Outcome, ...] = ("ownership_confirmed", "not_confirmed", "claim_rejected", "inconclusive")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ValidityConfig:
    """What to run; the defaults are the full benchmark."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    panel_size: int = 20
    independents: int = 20
    triggers: int = 40
    fingerprints: int = 40
    false_claim_eps: tuple[float, ...] = (0.1, 0.2, 0.3)
    false_claim_suspects: int = 4
    claimant_ensemble: int = 4
    di_samples_digits: int = 200
    di_samples_synthetic: int = 500
    di_independents: int = 10
    synthetic: bool = True
    thefts: tuple[TheftKind, ...] = THEFT_KINDS
    synthetic_thefts: tuple[TheftKind, ...] = THEFT_KINDS
    alpha: float = 1e-3
    cost_samples: int = 20
    min_independent_disputes: int = 100
    cache_dir: Path | None = None


@dataclass(frozen=True)
class DisputeRecord:
    """One simulated dispute: which suspect, which method, what came out, and the numbers behind it."""

    task: str
    seed: int
    suspect: str
    method: str
    outcome: Outcome
    p_value: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class ValidityReport:
    """Every dispute plus the cost measurements."""

    config: ValidityConfig
    records: list[DisputeRecord] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _seed_bytes(*parts: int) -> bytes:
    return hashlib.sha256(b"modelcourt-validity" + b"".join(p.to_bytes(8, "big") for p in parts)).digest()


def _suspect(module: nn.Module, task: TaskData) -> TorchModuleSuspect:
    return TorchModuleSuspect(module, num_classes=task.num_classes, input_shape=task.input_shape, device="cpu")


def _panel(task: TaskData, config: ValidityConfig, seed: int) -> ReferencePanel:
    if config.cache_dir is not None:
        return load_or_train_panel(task, config.cache_dir, size=config.panel_size, seed=seed)
    return train_panel(task, size=config.panel_size, seed=seed)


def _agreement_record(
    task: TaskData,
    seed: int,
    suspect_kind: str,
    claim: AgreementClaim,
    module: nn.Module,
    panel: ReferencePanel,
    alpha: float,
    index: int,
) -> DisputeRecord:
    # the tie-breaking draw comes from its own stream, fixed before the suspect answers
    u = float(np.random.default_rng([seed, *suspect_kind.encode(), *claim.kind.encode(), index]).random())
    test, screen = agreement_claim_test(claim, _suspect(module, task), panel, alpha=alpha, tie_break=u)
    decision = decide(tests=[test], screens=[screen], alpha=alpha)
    s = test.statistics
    k, m = int(s["K"]), int(s["m"])
    panel_rate = float(screen.statistics["agreement_rate"])
    extra = {
        "naive_p_value": float(s["naive_p_value"]),
        "rank_p_value": float(s["panel_rank_p_value"]),
        "rank_p_value_randomised": float(s["panel_rank_p_value_randomised"]),
        # p0 at the panel's pooled rate, without the upper bound or the 1/C floor: shows what the bound costs
        "point_p_value": binomial_test(m, k, min(max(panel_rate, 1e-12), 1.0)),
        "match_rate": m / k,
        "p0": float(s["p0"]),
        "screen_p_value": screen.p_value,
        "screen_rejected": float(screen.rejected),
    }
    return DisputeRecord(task.name, seed, suspect_kind, claim.kind, decision.outcome, test.p_value, extra)


def _di_record(
    task: TaskData,
    seed: int,
    suspect_kind: str,
    owner: nn.Module,
    module: nn.Module,
    method: str,
    config: ValidityConfig,
) -> DisputeRecord:
    n = config.di_samples_digits if task.name == "digits" else config.di_samples_synthetic
    test: TestResult = dataset_inference_test(
        claimant=owner,
        suspect=_suspect(module, task),
        private_x=task.owner_x[:n],
        public_x=task.holdout_x[:n],
        num_classes=task.num_classes,
        split_seed=seed,
        method=method,  # type: ignore[arg-type]
        low=task.low,
        high=task.high,
    )
    decision = decide(tests=[test], alpha=config.alpha)
    s = test.statistics
    extra = {
        "seconds": float(s["seconds"]),
        "samples": float(2 * n),
        "queries_per_sample": float(s["queries_per_sample"]),
        "t": float(s["t_statistic"]) if isinstance(s["t_statistic"], float) else math.nan,
    }
    return DisputeRecord(task.name, seed, suspect_kind, f"di_{method}", decision.outcome, test.p_value, extra)


def _resampled_panel(
    panel: ReferencePanel, pool: list[tuple[Any, nn.Module]], suspect: nn.Module, seed: int, index: int
) -> ReferencePanel:
    """A panel of the same size drawn from every other exchangeable model, for one independent suspect.

    With one shared panel the independents' p-values are correlated (a panel with a high maximum
    keeps them all large), so their false-positive rate would not be a sum of independent trials;
    drawing each suspect's panel from the pool of the other models of the same recipe loosens that.
    """
    others = [entry for entry in pool if entry[1] is not suspect]
    picked = np.random.default_rng([seed, index, 0x9A1]).choice(len(others), size=len(panel), replace=False)
    modules = [others[k][1] for k in picked]
    return ReferencePanel(
        task=panel.task,
        num_classes=panel.num_classes,
        input_shape=panel.input_shape,
        params={**panel.params, "resampled_for": index},
        members=[],
        modules=modules,
    )


def _owner(task: TaskData, seed: int, arch: str, epochs: int) -> nn.Module:
    model = build_model(arch, input_shape=task.input_shape, num_classes=task.num_classes, seed=1000 + seed)  # type: ignore[arg-type]
    return train_classifier(model, task.owner_x, task.owner_y, epochs=epochs, seed=1000 + seed)


def _digits_seed(config: ValidityConfig, seed: int, report: ValidityReport, progress: Progress) -> None:
    task = digits_task(seed)
    alpha = config.alpha
    owner = _owner(task, seed, "mlp", 60)
    mark = generate_watermark(
        seed=_seed_bytes(seed, 1), count=config.triggers, input_shape=task.input_shape, num_classes=task.num_classes
    )
    embed_watermark(
        owner,
        train_inputs=task.owner_x,
        train_labels=task.owner_y,
        trigger_inputs=mark["inputs"],
        trigger_labels=mark["labels"],
        epochs=20,
        seed=seed,
    )
    owner.eval()
    watermark = AgreementClaim("watermark", "watermark", mark["inputs"], mark["labels"], verifiable=True)
    own_refs = train_panel(task, size=4, seed=10_000 + seed, epochs=40, name_prefix="own").modules
    surrogates = [fine_tune(owner, task.owner_x, task.owner_y, seed=50 + i) for i in range(2)]
    fps = generate_fingerprints(
        owner, task.holdout_x, references=own_refs, surrogates=surrogates, count=config.fingerprints, seed=seed
    )
    fingerprint = AgreementClaim("fingerprint", "fingerprint", fps.inputs, fps.labels)
    panel = _panel(task, config, seed)
    progress(f"digits seed {seed}: owner, evidence and panel of {len(panel)} ready")

    suspects: list[tuple[str, nn.Module]] = [(kind, simulate(kind, owner, task, seed=seed)) for kind in config.thefts]
    independents = train_panel(task, size=config.independents, seed=20_000 + seed, name_prefix="ind").modules
    suspects += [("independent", m) for m in independents]
    pool = [*zip(panel.members, panel.modules, strict=True), *((None, m) for m in independents)]
    for i, (kind, module) in enumerate(suspects):
        judge = panel if kind != "independent" else _resampled_panel(panel, pool, module, seed, i)
        for claim in (watermark, fingerprint):
            report.records.append(_agreement_record(task, seed, kind, claim, module, judge, alpha, i))
        if kind != "independent" or i - len(config.thefts) < config.di_independents:
            report.records.append(_di_record(task, seed, kind, owner, module, "mingd", config))
    progress(f"digits seed {seed}: {len(suspects)} suspects tested")

    # the false claimant owns none of these models: it crafts against its own ensemble, then claims
    ensemble = train_panel(task, size=config.claimant_ensemble, seed=30_000 + seed, name_prefix="fc").modules
    rng = np.random.default_rng([seed, 0xFC])
    for eps in config.false_claim_eps:
        picked = rng.choice(len(task.public_x), size=config.triggers, replace=False)
        crafted = false_claim_set(ensemble, task.public_x[picked], eps=eps, low=task.low, high=task.high, seed=seed)
        claim = AgreementClaim(f"false_claim_eps{eps:g}", "watermark", crafted["inputs"], crafted["labels"])
        for j, module in enumerate(independents[: config.false_claim_suspects]):
            record = _agreement_record(task, seed, f"false_claim_eps{eps:g}", claim, module, panel, alpha, j)
            report.records.append(record)
    progress(f"digits seed {seed}: false claims at eps {list(config.false_claim_eps)} tested")


def _synthetic_seed(config: ValidityConfig, seed: int, report: ValidityReport, progress: Progress) -> None:
    task = synthetic_task(seed)
    owner = _owner(task, seed, "wide_mlp", 150)
    suspects: list[tuple[str, nn.Module]] = [
        (kind, simulate(kind, owner, task, seed=seed)) for kind in config.synthetic_thefts
    ]
    independents = train_panel(
        task,
        size=config.di_independents,
        seed=40_000 + seed,
        epochs=150,
        name_prefix="ind",
        architectures=("mlp", "wide_mlp", "deep_mlp"),
    ).modules
    suspects += [("independent", m) for m in independents]
    for kind, module in suspects:
        for method in ("mingd", "blind_walk"):
            report.records.append(_di_record(task, seed, kind, owner, module, method, config))
    progress(f"synthetic seed {seed}: {len(suspects)} suspects tested by dataset inference")


def _measure_cost(config: ValidityConfig, report: ValidityReport) -> None:
    """MinGD vectorised over samples and targets against the per-sample, per-target loop, same inputs."""
    task = digits_task(0)
    model = _owner(task, 0, "mlp", 30)
    x = task.holdout_x[: config.cost_samples]
    start = time.perf_counter()
    fast = mingd_distances(model, x, num_classes=task.num_classes, low=task.low, high=task.high)
    vectorised = time.perf_counter() - start
    start = time.perf_counter()
    slow = mingd_distances_naive(model, x, num_classes=task.num_classes, low=task.low, high=task.high)
    naive = time.perf_counter() - start
    report.cost.update(
        samples=float(len(x)),
        vectorised_s_per_sample=vectorised / len(x),
        naive_s_per_sample=naive / len(x),
        speedup=naive / vectorised,
        max_abs_difference=float(np.abs(fast - slow).max()),
    )


def run_validity(config: ValidityConfig, progress: Progress | None = None) -> ValidityReport:
    """Run every simulated dispute of ``config``; ``progress`` gets a line after each stage."""
    say = progress or (lambda _line: None)
    report = ValidityReport(config=config)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is fastest and makes timings comparable
    try:
        _measure_cost(config, report)
        say(f"cost: MinGD vectorised {report.cost['speedup']:.1f}x faster than the per-target loop")
        for seed in config.seeds:
            _digits_seed(config, seed, report, say)
            if config.synthetic:
                _synthetic_seed(config, seed, report, say)
    finally:
        torch.set_num_threads(threads)
    report.seconds = time.perf_counter() - started
    return report


def _interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval for a rate k/n."""
    lo = 0.0 if k == 0 else float(stats.beta.ppf((1 - level) / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - (1 - level) / 2, k + 1, n - k))
    return lo, hi


def _acceptance(rate: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` range of Binomial(n, rate) / n: where a calibrated test's false-positive rate falls."""
    return float(stats.binom.ppf((1 - level) / 2, n, rate)) / n, float(stats.binom.isf((1 - level) / 2, n, rate)) / n


def summarise(report: ValidityReport) -> dict[str, Any]:
    """Outcome counts per (task, suspect, method), calibration at 0.05, the cost, and every check with its verdict."""
    groups: dict[tuple[str, str, str], list[DisputeRecord]] = defaultdict(list)
    for r in report.records:
        groups[(r.task, r.suspect, r.method)].append(r)
    rows: list[dict[str, Any]] = []
    for (task, suspect, method), items in sorted(groups.items()):
        counts = Counter(r.outcome for r in items)
        rows.append(
            {
                "task": task,
                "suspect": suspect,
                "method": method,
                "n": len(items),
                **{o: counts.get(o, 0) / len(items) for o in OUTCOMES},
                "median_p": float(np.median([r.p_value for r in items])),
            }
        )

    independents = [r for r in report.records if r.suspect == "independent"]
    calibration: list[dict[str, Any]] = []
    for label, method, key in (
        ("watermark, binomial at the bound p0 (used)", "watermark", None),
        ("watermark, binomial at the panel's point rate", "watermark", "point_p_value"),
        ("watermark, panel rank p-value (ties count against)", "watermark", "rank_p_value"),
        ("watermark, panel rank p-value, random tie-break", "watermark", "rank_p_value_randomised"),
        ("fingerprint, binomial at the bound p0 (used)", "fingerprint", None),
        ("fingerprint, panel rank p-value (ties count against)", "fingerprint", "rank_p_value"),
        ("fingerprint, panel rank p-value, random tie-break", "fingerprint", "rank_p_value_randomised"),
        ("dataset inference (MinGD), Welch", "di_mingd", None),
        ("dataset inference (Blind Walk), Welch", "di_blind_walk", None),
    ):
        values = [r.p_value if key is None else r.extra[key] for r in independents if r.method == method]
        if not values:
            continue
        n = len(values)
        k = sum(1 for v in values if v <= 0.05)
        lo, hi = _acceptance(0.05, n)
        calibration.append(
            {
                "test": label,
                "n": n,
                "fpr_at_0.05": k / n,
                "fpr_interval": _interval(k, n),
                "calibrated_range": (lo, hi),
                "within": lo <= k / n <= hi,
            }
        )

    checks = []
    ind_all = independents
    confirmed = sum(1 for r in ind_all if r.outcome == "ownership_confirmed")
    checks.append(
        (
            f"independent models never confirmed: {confirmed} of {len(ind_all)} disputes",
            confirmed == 0 and len(ind_all) >= report.config.min_independent_disputes,
        )
    )
    for kind in ("copy", "fine_tune", "prune"):
        items = [r for r in report.records if r.task == "digits" and r.suspect == kind and r.method == "watermark"]
        ok = sum(1 for r in items if r.outcome == "ownership_confirmed")
        checks.append((f"{kind}: watermark confirms in {ok} of {len(items)} seeds", bool(items) and ok == len(items)))
    false = [r for r in report.records if r.suspect.startswith("false_claim")]
    wrongly = sum(1 for r in false if r.outcome == "ownership_confirmed")
    checks.append((f"false claims never confirmed: {wrongly} of {len(false)}", bool(false) and wrongly == 0))
    naive = [r for r in false if r.extra["naive_p_value"] <= report.config.alpha]
    caught = sum(1 for r in naive if r.outcome == "claim_rejected")
    checks.append(
        (
            f"false claims the naive test would confirm are rejected: {caught} of {len(naive)}",
            caught == len(naive),
        )
    )
    well_calibrated = [c for c in calibration if "random tie-break" in c["test"] or "Welch" in c["test"]]
    checks.append(
        (
            "exact p-values (rank with random tie-break, Welch) calibrated at 0.05: "
            + ", ".join(f"{c['test']}: {c['fpr_at_0.05']:.3f}" for c in well_calibrated),
            bool(well_calibrated) and all(c["within"] for c in well_calibrated),
        )
    )
    if report.cost:
        speedup = report.cost["speedup"]
        checks.append((f"cost: MinGD vectorised is {speedup:.1f}x the per-target loop (aim >= 5x)", speedup >= 5))
    return {"rows": rows, "calibration": calibration, "checks": checks, "cost": report.cost}


def format_report(report: ValidityReport, summary: dict[str, Any] | None = None) -> str:
    """The tables as plain text."""
    s = summary or summarise(report)
    lines = [
        f"validity benchmark: seeds {list(report.config.seeds)}, panel of {report.config.panel_size}, "
        f"alpha {report.config.alpha:g}, {len(report.records)} disputes in {report.seconds:.0f} s",
        "",
        f"{'task':<10} {'suspect':<20} {'method':<14} {'n':>4} {'confirmed':>10} {'not_conf':>9} "
        f"{'rejected':>9} {'inconcl':>8} {'median p':>10}",
    ]
    for r in s["rows"]:
        lines.append(
            f"{r['task']:<10} {r['suspect']:<20} {r['method']:<14} {r['n']:>4} {r['ownership_confirmed']:>10.2f} "
            f"{r['not_confirmed']:>9.2f} {r['claim_rejected']:>9.2f} {r['inconclusive']:>8.2f} {r['median_p']:>10.2g}"
        )
    lines += ["", "false-positive rate at 0.05 on independent models (a calibrated test falls in the range)"]
    for c in s["calibration"]:
        lo, hi = c["calibrated_range"]
        ilo, ihi = c["fpr_interval"]
        lines.append(
            f"  {c['test']:<48} n={c['n']:<4} FPR {c['fpr_at_0.05']:.3f} (95% CI {ilo:.3f}-{ihi:.3f}); "
            f"calibrated range {lo:.3f}-{hi:.3f}: {'yes' if c['within'] else 'no'}"
        )
    cost = s["cost"]
    if cost:
        lines += [
            "",
            f"cost of MinGD on {cost['samples']:.0f} digits samples x 10 classes x 3 norms (1 thread): vectorised "
            f"{cost['vectorised_s_per_sample'] * 1e3:.1f} ms/sample, per-target loop "
            f"{cost['naive_s_per_sample'] * 1e3:.1f} ms/sample: {cost['speedup']:.1f}x "
            f"(largest difference in distance {cost['max_abs_difference']:.2g})",
        ]
    di = [r for r in report.records if r.method.startswith("di_")]
    for method in ("di_mingd", "di_blind_walk"):
        items = [r for r in di if r.method == method]
        if items:
            per_sample = np.mean([r.extra["seconds"] / r.extra["samples"] for r in items])
            queries = np.mean([r.extra["queries_per_sample"] for r in items])
            lines.append(
                f"{method}: {per_sample * 1e3:.1f} ms per sample (claimant and suspect), "
                f"{queries:.0f} metered suspect queries per tested sample"
            )
    lines += ["", "checks"]
    lines += [f"  [{'PASS' if ok else 'FAIL'}] {text}" for text, ok in s["checks"]]
    return "\n".join(lines)


def main_checks_pass(summary: dict[str, Any]) -> bool:
    """True when every check passed."""
    return all(ok for _, ok in summary["checks"])


def configs_for(names: Sequence[str]) -> ValidityConfig:
    """``full`` (the default) or ``quick`` (one seed, smaller sets; what the test suite runs)."""
    if "quick" in names:
        return ValidityConfig(
            seeds=(0,),
            independents=10,
            di_independents=3,
            synthetic_thefts=("copy", "distill"),
            false_claim_suspects=3,
            cost_samples=5,
            min_independent_disputes=20,
        )
    return ValidityConfig()
