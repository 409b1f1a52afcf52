"""The validity benchmark: how often each method gives each outcome, per kind of suspect and claimant, over seeds.

For every seed, on scikit-learn's digits: an owner model with a seeded watermark embedded and a set
of conferrable fingerprints; a reference panel; independent models made by the panel's recipe with
other seeds (exchangeable with the panel); the thefts of :mod:`verification.methods.thefts`; and a
false claimant who crafts targeted transferable adversarial examples against models of their own
and claims them as a watermark against innocent (independent) suspects. Dataset inference runs on
digits and on the generated task that memorises, where it has power, calibrated against reference
models of the task (the same test run on each of them).

The adaptive section adds claimants who know the rules (:mod:`verification.methods.adaptive`):
examples crafted on the suspect's own weights or picked from its answers, a thief's counter-claim
against the original, the best of many generated watermarks, a dataset split chosen by margin, a
panel holding a family of similar models, and the honest verifiable flow end to end.

Every dispute is decided twice on the same inputs by :func:`verification.methods.decision.decide`:
under the rules in force (standing: who chose the evidence, whether its commitment precedes the
suspect, whether the claimant's own model carries it, how many watermarks were drawn) and under the
old rules (precedence assumed, no binding, no multiplicity, the pooled binomial null, dataset
inference by an uncalibrated Welch test). At the methods level precedence is stated per row as two
times on one clock: the claimant's commitment and the suspect's first known time (ties count
against the claimant). :func:`summarise` turns the records into the tables and the pass/fail
checks that ``make bench-validity`` prints.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy import stats  # type: ignore[import-untyped]
from torch import nn

from modelcourt.embed import embed_watermark
from modelcourt.guard.watermark import ResponseWatermark
from ownership.watermarks import generate_watermark
from verification.methods.adaptive import (
    best_of_watermarks,
    carry_claim,
    craft_on_suspect,
    fine_tuned_family,
    label_only_claim,
    margin_split,
)
from verification.methods.api_watermark import api_watermark_binding, api_watermark_test
from verification.methods.binding import claim_binding
from verification.methods.dataset_inference import (
    Method,
    claimant_side_features,
    dataset_inference_test,
    mingd_distances,
    mingd_distances_naive,
    panel_p_value,
)
from verification.methods.datasets import TaskData, digits_task, synthetic_task
from verification.methods.decision import ClaimScreen, Decision, Outcome, Standing, TestResult, decide
from verification.methods.evaluate import AgreementClaim, agreement_claim_test
from verification.methods.fingerprints import generate_fingerprints
from verification.methods.panels import ReferencePanel, load_or_train_panel, train_panel
from verification.methods.statistics import binomial_test, min_achievable_p_value
from verification.methods.suspects import TorchModuleSuspect
from verification.methods.thefts import (
    THEFT_KINDS,
    Augmentation,
    ClaimSet,
    TheftKind,
    extract_knockoff,
    false_claim_set,
    fine_tune,
    simulate,
)
from verification.methods.training import accuracy, build_model, predict_labels, train_classifier

__all__ = [
    "ADAPTIVE_ROWS",
    "GUARD_ROWS",
    "DisputeRecord",
    "ValidityConfig",
    "ValidityReport",
    "configs_for",
    "format_report",
    "is_false_claim",
    "main_checks_pass",
    "run_validity",
    "summarise",
]

OUTCOMES: tuple[Outcome, ...] = ("ownership_confirmed", "not_confirmed", "claim_rejected", "inconclusive")
Progress = Callable[[str], None]

# the adaptive rows, what each claimant does, and whether the claim is true (the suspect does derive from the claimant)
ADAPTIVE_ROWS: dict[str, tuple[str, bool]] = {
    "whitebox_claim": ("examples crafted on the suspect's weights, away from the attacker's models", False),
    "whitebox_claim_bound": ("the same, the attacker's own model fine-tuned to carry them", False),
    "label_only_claim": ("natural inputs where the suspect differs from the attacker's models", False),
    "label_only_claim_bound": ("the same, the attacker's own model fine-tuned to carry them", False),
    "counterclaim_crafted": ("a thief's fingerprints crafted on its stolen copy, against the original", False),
    "counterclaim_watermark": (
        "a thief's generated watermark embedded in its stolen copy, against the original",
        False,
    ),
    "multiplicity": ("the best of many generated watermarks put to an independent suspect", False),
    "margin_split": ("dataset inference with members chosen by the claimant's margin, independent suspect", False),
    "family": ("fingerprints of a fine-tuned model against a sibling; the panel holds the family", False),
    "verifiable_flow_copy": ("generated watermark, embedded, bound; the suspect is a copy", True),
    "verifiable_flow_fine_tune": ("generated watermark, embedded, bound; the suspect is fine-tuned", True),
    "verifiable_flow_prune": ("generated watermark, embedded, bound; the suspect is pruned", True),
}

# one clock for the precedence of every row: the owner commits, then suspects appear
OWNER_COMMITS = 0
SUSPECT_APPEARS = 1
ATTACKER_COMMITS = 2  # an attacker files after seeing the suspect (it needs the suspect to craft on)


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
    di_samples_digits: int = 100
    di_samples_synthetic: int = 500
    di_independents: int = 10
    di_panel_members: int = 10
    synthetic_independents: int = 6
    synthetic_panel_members: int = 8
    synthetic: bool = True
    thefts: tuple[TheftKind, ...] = THEFT_KINDS
    synthetic_thefts: tuple[TheftKind, ...] = THEFT_KINDS
    alpha: float = 1e-3
    cost_samples: int = 20
    min_independent_disputes: int = 100
    # the adaptive section
    adaptive: bool = True
    adaptive_suspects: int = 4
    adaptive_count: int = 40
    thief_thefts: tuple[TheftKind, ...] = ("copy", "fine_tune")
    multiplicity_draws: int = 50_000
    multiplicity_triggers: int = 20
    family_in_panel: int = 4
    family_suspects: int = 4
    margin_samples: int = 100
    margin_suspects: int = 4
    min_false_disputes: int = 200
    # the API guard section
    guard: bool = True
    guard_rate: float = 0.005
    guard_budgets: tuple[int, ...] = (2_500, 5_000, 10_000)
    guard_noise: float = 0.1
    guard_mixup_budget: int = 10_000  # 0: no mixup thief
    guard_min_seed_share: float = 0.8
    guard_min_independent: int = 100
    cache_dir: Path | None = None


@dataclass(frozen=True)
class DisputeRecord:
    """One simulated dispute: which suspect, which method, what came out (now and under the old rules), and why."""

    task: str
    seed: int
    suspect: str
    method: str
    outcome: Outcome
    p_value: float
    extra: dict[str, float] = field(default_factory=dict)
    old_outcome: Outcome | None = None


@dataclass
class ValidityReport:
    """Every dispute plus the cost measurements."""

    config: ValidityConfig
    records: list[DisputeRecord] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def is_false_claim(record: DisputeRecord) -> bool:
    """Whether the suspect does NOT derive from the claimant's model: a confirmation there is a false one."""
    if record.suspect == "independent" or record.suspect.startswith("false_claim"):
        return True
    row = ADAPTIVE_ROWS.get(record.suspect) or GUARD_ROWS.get(record.suspect)
    return row is not None and not row[1]


def _seed_bytes(*parts: int) -> bytes:
    return hashlib.sha256(b"modelcourt-validity" + b"".join(p.to_bytes(8, "big") for p in parts)).digest()


def _suspect(module: nn.Module, task: TaskData) -> TorchModuleSuspect:
    return TorchModuleSuspect(module, num_classes=task.num_classes, input_shape=task.input_shape, device="cpu")


def _panel(task: TaskData, config: ValidityConfig, seed: int) -> ReferencePanel:
    if config.cache_dir is not None:
        return load_or_train_panel(task, config.cache_dir, size=config.panel_size, seed=seed)
    return train_panel(task, size=config.panel_size, seed=seed)


def _panel_of(panel: ReferencePanel, modules: list[nn.Module], label: str) -> ReferencePanel:
    """A panel with ``panel``'s interface and other members (resampled, or holding a family)."""
    return ReferencePanel(
        task=panel.task,
        num_classes=panel.num_classes,
        input_shape=panel.input_shape,
        params={**panel.params, "variant": label},
        members=[],
        modules=modules,
    )


# ------------------------------------------------------------------------------------------ standing


def _standing(
    name: str,
    *,
    chosen: bool,
    committed: int,
    first_known: int,
    binding: tuple[bool, float] | None = None,
    draws: int = 1,
) -> Standing:
    """The standing of one evidence set; precedence from the two times, ties against the claimant."""
    return Standing(
        name,
        chosen=chosen,
        precedes=committed < first_known,
        precedence_detail=f"committed at t={committed}, suspect first known at t={first_known}",
        bound=None if binding is None else binding[0],
        binding_p_value=None if binding is None else binding[1],
        draws=draws,
    )


def _binding(claim: AgreementClaim, claimant: nn.Module, panel: ReferencePanel, alpha: float) -> tuple[bool, float]:
    """Whether the claimant's own model carries ``claim`` (its labels, judged by ``panel``)."""
    bound = claim_binding(claim, predict_labels(claimant, claim.inputs), panel, alpha=alpha)
    return bound.bound, bound.p_value


def _old_test(test: TestResult, alpha: float) -> TestResult:
    """``test`` as the old rules computed it: the pooled binomial null, or dataset inference's plain Welch test."""
    s = test.statistics
    if test.kind == "dataset_inference":
        welch = s.get("welch_p_value")
        if not isinstance(welch, float) or not math.isfinite(welch):
            return test
        return TestResult(test.name, test.kind, welch, s, test.conclusive or welch < 1.0, "")
    if "m" not in s:  # the suspect did not answer: no rule could use the test
        return test
    pooled = float(s.get("pooled_binomial_p_value", test.p_value))
    floor = s.get("pooled_min_achievable_p_value")
    if floor is None:  # a generated watermark's exact test records the panel's p0 the old rule used
        floor = min_achievable_p_value(int(s["K"]), float(s.get("panel_p0", s["p0"])))
    return TestResult(test.name, test.kind, pooled, s, float(floor) <= alpha, "")


def _decide_both(
    tests: Sequence[TestResult], screens: Sequence[ClaimScreen], standings: Sequence[Standing], alpha: float
) -> tuple[Decision, Decision]:
    """The decision under the rules in force, and what the old rules would have said on the same inputs."""
    new = decide(tests=tests, screens=screens, standings=standings, alpha=alpha)
    old_tests = [_old_test(t, alpha) for t in tests]
    assumed = [
        Standing(t.name, chosen=True, precedes=True, precedence_detail="assumed by the old rules") for t in tests
    ]
    old = decide(tests=old_tests, screens=screens, standings=assumed, alpha=alpha)
    return new, old


def _agreement_record(
    task: TaskData,
    seed: int,
    suspect_kind: str,
    claim: AgreementClaim,
    module: nn.Module,
    panel: ReferencePanel,
    standing: Standing,
    alpha: float,
    index: int,
    extra: dict[str, float] | None = None,
    what_if: dict[str, Standing] | None = None,
) -> DisputeRecord:
    """One agreement dispute decided now and under the old rules; ``what_if`` adds ``<label>_confirmed`` under other
    standings (the same dispute with one fact changed)."""
    # the tie-breaking draw comes from its own stream, fixed before the suspect answers
    u = float(np.random.default_rng([seed, *suspect_kind.encode(), *claim.kind.encode(), index]).random())
    test, screen = agreement_claim_test(claim, _suspect(module, task), panel, alpha=alpha, tie_break=u)
    decision, old = _decide_both([test], [screen], [standing], alpha)
    s = test.statistics
    k, m = int(s["K"]), int(s["m"])
    panel_rate = float(screen.statistics["agreement_rate"])
    values = {
        "naive_p_value": float(s["naive_p_value"]),
        # reported beside the test in use (a generated watermark's exact test has no randomised rank)
        "rank_p_value": float(s.get("panel_rank_p_value", math.nan)),
        "rank_p_value_randomised": float(s.get("panel_rank_p_value_randomised", math.nan)),
        # p0 at the panel's pooled rate, without the upper bound or the 1/C floor: shows what the bound costs
        "point_p_value": binomial_test(m, k, min(max(panel_rate, 1e-12), 1.0)),
        "old_p_value": _old_test(test, alpha).p_value,
        "match_rate": m / k,
        "p0": float(s["p0"]),
        "screen_p_value": screen.p_value,
        "screen_rejected": float(screen.rejected),
        **({} if standing.binding_p_value is None else {"binding_p_value": standing.binding_p_value}),
        **(extra or {}),
    }
    for label, other in (what_if or {}).items():
        outcome = decide(tests=[test], screens=[screen], standings=[other], alpha=alpha).outcome
        values[f"{label}_confirmed"] = float(outcome == "ownership_confirmed")
    return DisputeRecord(
        task.name, seed, suspect_kind, claim.kind, decision.outcome, decision.tests[0].p_value, values, old.outcome
    )


# ------------------------------------------------------------------------------------------ dataset inference


@dataclass
class _DatasetClaim:
    """A dataset-inference claim: the claimant's model and samples, a split seed, and the models that calibrate it.

    The calibration (the same test run on every calibrating model) depends on the claimant's scorer, the
    split and those models, never on the suspect, so the benchmark measures it once per claim: the first
    suspect runs :func:`dataset_inference_test` with the panel, the others without it, and their p-value
    is completed from the first call's panel statistics as the test combines them. The first suspect's
    own numbers are completed so too and must give the full call's p-value, so the shortcut cannot drift
    from the test it stands for.
    """

    task: TaskData
    claimant: nn.Module
    private_x: npt.NDArray[np.float32]
    public_x: npt.NDArray[np.float32]
    split_seed: int
    method: Method
    calibration: list[nn.Module]
    features: dict[str, Any] | None = None
    panel_t: list[float] | None = None

    def _run(self, module: nn.Module, calibrated: bool) -> TestResult:
        if self.features is None:
            # the claimant's side is measured once and reused for every suspect, as a run's own sandbox call does
            self.features = claimant_side_features(
                claimant=self.claimant,
                private_x=self.private_x,
                public_x=self.public_x,
                input_shape=self.task.input_shape,
                num_classes=self.task.num_classes,
                split_seed=self.split_seed,
                method=self.method,
                low=self.task.low,
                high=self.task.high,
            )
        return dataset_inference_test(
            claimant=None,
            suspect=_suspect(module, self.task),
            private_x=self.private_x,
            public_x=self.public_x,
            num_classes=self.task.num_classes,
            split_seed=self.split_seed,
            method=self.method,
            low=self.task.low,
            high=self.task.high,
            claimant_features=self.features,
            panel=self.calibration if calibrated else None,
            panel_members=len(self.calibration),
        )

    def _completed(self, plain: TestResult) -> TestResult:
        """An uncalibrated result completed with the claim's panel statistics."""
        s = dict(plain.statistics)
        within, t = s.get("p_value_within"), s.get("t_statistic")
        if self.panel_t is None or not isinstance(within, float) or not isinstance(t, float):
            return plain  # the suspect's own comparison could not be made: nothing to calibrate
        finite = [v for v in self.panel_t if math.isfinite(v)]
        s.update(calibration="panel", panel_members=len(self.panel_t))
        if len(finite) < len(self.panel_t) or len(finite) < 2 or float(np.std(finite)) == 0.0:
            return TestResult(plain.name, plain.kind, 1.0, {**s, "p_value": 1.0}, False, "Not calibrated.")
        p_panel = panel_p_value(t, finite)
        p = max(within, p_panel)
        s.update(p_value_panel=p_panel, p_value=p)
        return TestResult(plain.name, plain.kind, p, s, plain.conclusive, plain.reason)

    def test(self, module: nn.Module) -> TestResult:
        if self.panel_t is not None:
            return self._completed(self._run(module, calibrated=False))
        full = self._run(module, calibrated=True)
        listed = str(full.statistics.get("panel_t_statistics", ""))
        self.panel_t = [float(v) for v in listed.split(",")] if listed else []
        # the full result holds the suspect's own numbers too: completing them must give the full test's p-value
        # (the panel's statistics are listed to 6 digits, so agreement to 1e-3 of the p-value is exact enough)
        check = self._completed(full)
        if check.conclusive != full.conclusive or not math.isclose(check.p_value, full.p_value, rel_tol=1e-3):
            raise RuntimeError(
                f"the reused dataset-inference calibration gives p={check.p_value!r} where the full test gives "
                f"p={full.p_value!r}: the benchmark's shortcut no longer matches dataset_inference_test"
            )
        return full


def _di_record(seed: int, suspect_kind: str, claim: _DatasetClaim, module: nn.Module, alpha: float) -> DisputeRecord:
    test = claim.test(module)
    # the claimant's samples were committed before the suspect appeared: the samples are chosen, not bound
    standing = _standing(test.name, chosen=True, committed=OWNER_COMMITS, first_known=SUSPECT_APPEARS)
    decision, old = _decide_both([test], [], [standing], alpha)
    s = test.statistics
    within = s.get("p_value_within")
    extra = {
        # the suspect's own measurement: the claimant's side and the calibration run once per claim
        "seconds": float(s["seconds"]) - float(s.get("panel_seconds", 0.0)),
        "samples": float(int(s["n_private_test"]) + int(s["n_public_test"])),
        "queries_per_sample": float(s["queries_per_sample"]),
        "t": float(s["t_statistic"]) if isinstance(s["t_statistic"], float) else math.nan,
        "old_p_value": _old_test(test, alpha).p_value,
    }
    if isinstance(within, float):
        # what dataset_inference_test says without a panel (its within-suspect permutation test) under these rules
        plain = TestResult(test.name, test.kind, within, s, test.conclusive, test.reason)
        outcome = decide(tests=[plain], standings=[standing], alpha=alpha).outcome
        extra.update(uncalibrated_p_value=within, uncalibrated_confirmed=float(outcome == "ownership_confirmed"))
    return DisputeRecord(
        claim.task.name,
        seed,
        suspect_kind,
        f"di_{claim.method}",
        decision.outcome,
        test.p_value,
        extra,
        old.outcome,
    )


# ------------------------------------------------------------------------------------------ the main rows


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
    return _panel_of(panel, [others[k][1] for k in picked], f"resampled_for_{index}")


def _owner(task: TaskData, seed: int, arch: str, epochs: int) -> nn.Module:
    model = build_model(arch, input_shape=task.input_shape, num_classes=task.num_classes, seed=1000 + seed)  # type: ignore[arg-type]
    return train_classifier(model, task.owner_x, task.owner_y, epochs=epochs, seed=1000 + seed)


@dataclass
class _DigitsWorld:
    """What one digits seed builds once and every row uses."""

    task: TaskData
    base: nn.Module  # the owner's model before any watermark
    owner: nn.Module
    watermark: AgreementClaim
    fingerprint: AgreementClaim
    own_refs: list[nn.Module]
    panel: ReferencePanel
    thefts: dict[str, nn.Module]
    independents: list[nn.Module]
    attacker: list[nn.Module]  # a false claimant's own models, trained on public data; the first is its registered one


def _digits_world(config: ValidityConfig, seed: int, progress: Progress) -> _DigitsWorld:
    task = digits_task(seed)
    base = _owner(task, seed, "mlp", 60)
    owner = copy.deepcopy(base)
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
    thefts: dict[str, nn.Module] = {kind: simulate(kind, owner, task, seed=seed) for kind in config.thefts}
    independents = train_panel(task, size=config.independents, seed=20_000 + seed, name_prefix="ind").modules
    attacker = train_panel(task, size=config.claimant_ensemble, seed=30_000 + seed, name_prefix="fc").modules
    return _DigitsWorld(task, base, owner, watermark, fingerprint, own_refs, panel, thefts, independents, attacker)


def _digits_main(config: ValidityConfig, seed: int, world: _DigitsWorld, report: ValidityReport) -> None:
    """The owner's watermark, fingerprints and dataset inference against every theft and every independent."""
    task, panel, alpha = world.task, world.panel, config.alpha
    suspects: list[tuple[str, nn.Module]] = list(world.thefts.items())
    suspects += [("independent", m) for m in world.independents]
    pool = [*zip(panel.members, panel.modules, strict=True), *((None, m) for m in world.independents)]
    n = config.di_samples_digits
    dataset = _DatasetClaim(
        task, world.owner, task.owner_x[:n], task.holdout_x[:n], seed, "mingd", panel.modules[: config.di_panel_members]
    )
    for i, (kind, module) in enumerate(suspects):
        judge = panel if kind != "independent" else _resampled_panel(panel, pool, module, seed, i)
        for claim in (world.watermark, world.fingerprint):
            # the owner committed before any suspect appeared; the generated watermark needs no precedence
            standing = _standing(
                claim.name,
                chosen=not claim.verifiable,
                committed=OWNER_COMMITS,
                first_known=SUSPECT_APPEARS,
                binding=_binding(claim, world.owner, judge, alpha),
            )
            report.records.append(_agreement_record(task, seed, kind, claim, module, judge, standing, alpha, i))
        if kind != "independent" or i - len(world.thefts) < config.di_independents:
            report.records.append(_di_record(seed, kind, dataset, module, alpha))


def _digits_false_claims(config: ValidityConfig, seed: int, world: _DigitsWorld, report: ValidityReport) -> None:
    """Transferable adversarial examples crafted against the claimant's own models, claimed against independents.

    The claimant's commitment is taken to precede the suspects and binding is measured on its first
    model (the set was crafted on it), so precedence cannot help: the screen (or binding) must stop it.
    """
    task, alpha = world.task, config.alpha
    rng = np.random.default_rng([seed, 0xFC])
    for eps in config.false_claim_eps:
        picked = rng.choice(len(task.public_x), size=config.triggers, replace=False)
        crafted = false_claim_set(
            world.attacker, task.public_x[picked], eps=eps, low=task.low, high=task.high, seed=seed
        )
        claim = AgreementClaim(f"false_claim_eps{eps:g}", "watermark", crafted["inputs"], crafted["labels"])
        standing = _standing(
            claim.name,
            chosen=True,
            committed=OWNER_COMMITS,
            first_known=SUSPECT_APPEARS,
            binding=_binding(claim, world.attacker[0], world.panel, alpha),
        )
        for j, module in enumerate(world.independents[: config.false_claim_suspects]):
            report.records.append(
                _agreement_record(task, seed, claim.name, claim, module, world.panel, standing, alpha, j)
            )


# ------------------------------------------------------------------------------------------ the adaptive rows


def _claim(name: str, made: ClaimSet) -> AgreementClaim:
    """A crafted set filed as fingerprints: inputs and labels the claimant chose."""
    return AgreementClaim(name, "fingerprint", made["inputs"], made["labels"])


def _crafted_claims(config: ValidityConfig, seed: int, world: _DigitsWorld, report: ValidityReport) -> None:
    """White-box and label-only claimants against innocent suspects, with and without binding to their own model."""
    task, panel, alpha = world.task, world.panel, config.alpha
    registered = world.attacker[0]
    for j, module in enumerate(world.independents[: config.adaptive_suspects]):
        made = {
            "whitebox_claim": craft_on_suspect(
                module,
                task.public_x,
                own_models=world.attacker,
                count=config.adaptive_count,
                seed=seed * 97 + j,
            ),
            "label_only_claim": label_only_claim(
                _suspect(module, task),
                np.concatenate([task.public_x, task.holdout_x]),
                own_models=world.attacker,
                count=config.adaptive_count,
                min_count=10,
                max_own_agreement=1,
            ),
        }
        for row, crafted in made.items():
            claim = _claim("fingerprint", crafted)
            carrier = carry_claim(registered, crafted, train_x=task.public_x, train_y=task.public_y, seed=seed)
            for suffix, own in (("", registered), ("_bound", carrier)):
                # the suspect was registered (or its endpoint sighted) before the attacker committed the set
                standing = _standing(
                    claim.name,
                    chosen=True,
                    committed=ATTACKER_COMMITS,
                    first_known=SUSPECT_APPEARS,
                    binding=_binding(claim, own, panel, alpha),
                )
                report.records.append(
                    _agreement_record(task, seed, row + suffix, claim, module, panel, standing, alpha, j)
                )


def _counterclaims(config: ValidityConfig, seed: int, world: _DigitsWorld, report: ValidityReport) -> None:
    """A thief registers its copy after the owner, then claims the owner's original as derived from it."""
    task, panel, alpha = world.task, world.panel, config.alpha
    for j, kind in enumerate(config.thief_thefts):
        stolen = world.thefts[kind] if kind in world.thefts else simulate(kind, world.owner, task, seed=seed)
        crafted = craft_on_suspect(
            stolen,
            task.public_x,
            own_models=world.attacker,
            count=config.adaptive_count,
            seed=seed * 89 + j,
        )
        claim = _claim("fingerprint", crafted)
        # crafted on the stolen copy after the original was first known: chosen, and late
        standing = _standing(
            claim.name,
            chosen=True,
            committed=ATTACKER_COMMITS,
            first_known=OWNER_COMMITS,
            binding=_binding(claim, stolen, panel, alpha),
        )
        report.records.append(
            _agreement_record(task, seed, "counterclaim_crafted", claim, world.owner, panel, standing, alpha, j)
        )
        mark = generate_watermark(
            seed=_seed_bytes(seed, 0x7EF, j),
            count=config.triggers,
            input_shape=task.input_shape,
            num_classes=task.num_classes,
        )
        marked = carry_claim(
            stolen,
            ClaimSet(inputs=mark["inputs"], labels=mark["labels"]),
            train_x=task.public_x,
            train_y=task.public_y,
            seed=seed,
        )
        claim = AgreementClaim("watermark", "watermark", mark["inputs"], mark["labels"], verifiable=True)
        # generated from a committed seed: not chosen, so precedence is not needed; the original never saw it
        standing = _standing(
            claim.name,
            chosen=False,
            committed=ATTACKER_COMMITS,
            first_known=OWNER_COMMITS,
            binding=_binding(claim, marked, panel, alpha),
        )
        report.records.append(
            _agreement_record(task, seed, "counterclaim_watermark", claim, world.owner, panel, standing, alpha, j)
        )


def _multiplicity(config: ValidityConfig, seed: int, world: _DigitsWorld, report: ValidityReport) -> None:
    """The claimant draws many generated watermarks, puts each to an innocent suspect and files the best match."""
    task, panel, alpha = world.task, world.panel, config.alpha
    suspects = world.independents[: config.adaptive_suspects]
    seeds = [_seed_bytes(seed, 0x3D, i) for i in range(config.multiplicity_draws)]
    draws = best_of_watermarks(
        [_suspect(m, task) for m in suspects],
        seeds=seeds,
        count=config.multiplicity_triggers,
        input_shape=task.input_shape,
        num_classes=task.num_classes,
    )
    for j, (module, draw) in enumerate(zip(suspects, draws, strict=True)):
        claim = AgreementClaim("watermark", "watermark", draw.inputs, draw.labels, verifiable=True)
        # the attacker embeds the winner in its registered model, so that binding passes
        marked = carry_claim(
            world.attacker[0],
            ClaimSet(inputs=draw.inputs, labels=draw.labels),
            train_x=task.public_x,
            train_y=task.public_y,
            seed=seed,
        )
        standing = _standing(
            claim.name,
            chosen=False,
            committed=ATTACKER_COMMITS,
            first_known=SUSPECT_APPEARS,
            binding=_binding(claim, marked, panel, alpha),
            draws=draw.draws,
        )
        extra = {"draws": float(draw.draws), "best_matches": float(draw.matches)}
        single = dataclasses.replace(standing, draws=1)
        report.records.append(
            _agreement_record(
                task, seed, "multiplicity", claim, module, panel, standing, alpha, j, extra, {"uncorrected": single}
            )
        )


def _family(config: ValidityConfig, seed: int, world: _DigitsWorld, report: ValidityReport) -> None:
    """A public parent's fine-tuned children: the claimant's model is one, the suspect another, the panel holds some.

    The siblings share the parent's boundaries, so the claimant's fingerprints transfer to them far more
    than to the rest of the panel; a null that pools the panel's answers as independent trials misses that.
    """
    task, alpha = world.task, config.alpha
    parent_seed = 60_000 + seed
    parent = build_model("mlp", input_shape=task.input_shape, num_classes=task.num_classes, seed=parent_seed)
    train_classifier(parent, task.public_x, task.public_y, epochs=60, seed=parent_seed)
    children = fine_tuned_family(
        parent,
        task.public_x,
        task.public_y,
        size=config.family_in_panel + config.family_suspects,
        epochs=20,
        lr=1e-2,
        seed=parent_seed,
    )
    claimant = fine_tune(parent, task.owner_x, task.owner_y, epochs=20, lr=1e-2, seed=parent_seed + 1)
    made = generate_fingerprints(
        claimant, task.holdout_x, references=world.own_refs, count=config.fingerprints, seed=seed
    )
    claim = AgreementClaim("fingerprint", "fingerprint", made.inputs, made.labels)
    regular = world.panel.modules[: len(world.panel) - config.family_in_panel]
    panel = _panel_of(world.panel, [*regular, *children[: config.family_in_panel]], "family")
    standing = _standing(
        claim.name,
        chosen=True,
        committed=OWNER_COMMITS,
        first_known=SUSPECT_APPEARS,
        binding=_binding(claim, claimant, panel, alpha),
    )
    for j, module in enumerate(children[config.family_in_panel :]):
        report.records.append(_agreement_record(task, seed, "family", claim, module, panel, standing, alpha, j))


def _margin_split(config: ValidityConfig, seed: int, world: _DigitsWorld, report: ValidityReport) -> None:
    """Dataset inference whose members the claimant picked by its model's margin, against independent suspects."""
    task = world.task
    n = config.margin_samples
    members, nonmembers = margin_split(
        world.owner, np.concatenate([task.owner_x, task.holdout_x]), members=n, nonmembers=n
    )
    claim = _DatasetClaim(
        task, world.owner, members, nonmembers, seed, "mingd", world.panel.modules[: config.di_panel_members]
    )
    for module in world.independents[: config.margin_suspects]:
        report.records.append(_di_record(seed, "margin_split", claim, module, config.alpha))


def _verifiable_flow(config: ValidityConfig, seed: int, world: _DigitsWorld, report: ValidityReport) -> None:
    """Generate a watermark from a committed seed, embed it, check it regenerates and binds, then steal the model."""
    task, panel, alpha = world.task, world.panel, config.alpha
    committed = _seed_bytes(seed, 0xF10)
    mark = generate_watermark(
        seed=committed, count=config.triggers, input_shape=task.input_shape, num_classes=task.num_classes
    )
    claimant = copy.deepcopy(world.base)
    embed_watermark(
        claimant,
        train_inputs=task.owner_x,
        train_labels=task.owner_y,
        trigger_inputs=mark["inputs"],
        trigger_labels=mark["labels"],
        epochs=20,
        seed=seed + 7,
    )
    claimant.eval()
    again = generate_watermark(
        seed=committed, count=config.triggers, input_shape=task.input_shape, num_classes=task.num_classes
    )
    if not (np.array_equal(again["inputs"], mark["inputs"]) and np.array_equal(again["labels"], mark["labels"])):
        raise RuntimeError("a generated watermark did not regenerate from its seed")
    claim = AgreementClaim("watermark", "watermark", mark["inputs"], mark["labels"], verifiable=True)
    binding = _binding(claim, claimant, panel, alpha)
    for j, kind in enumerate(("copy", "fine_tune", "prune")):
        stolen = simulate(kind, claimant, task, seed=seed)  # type: ignore[arg-type]
        standing = _standing(
            claim.name, chosen=False, committed=OWNER_COMMITS, first_known=SUSPECT_APPEARS, binding=binding
        )
        report.records.append(
            _agreement_record(task, seed, f"verifiable_flow_{kind}", claim, stolen, panel, standing, alpha, j)
        )


# ------------------------------------------------------------------------------------------ the API guard
#
# The owner serves its model behind modelcourt.guard: a keyed share (``guard_rate``) of the answers carries a
# wrong label, and the (input, served label) pairs are journaled and committed as they are served, so the
# journal precedes any model trained on the answers. A thief buys ``Q`` label queries (the public split,
# then augmented samples) and trains a knockoff on what was served; every independent model is put to the
# same journal with a panel resampled as in the main rows. The honest users' cost is how much the served
# labels lose against the model's own on the holdout.

GUARD_ROWS: dict[str, tuple[str, bool]] = {
    "guard_knockoff": ("a knockoff trained on the guarded API's answers (public, then noisy queries)", True),
    "guard_knockoff_mixup": ("the same thief with mixup queries (reported, not required)", True),
    "guard_independent": ("independent models put to the knockoffs' journals", False),
}
_GUARD_KEY_TAG = 0x6A4D


class _GuardedApi(TorchModuleSuspect):
    """The owner's model behind a response watermark: answers labels only and journals every changed answer."""

    white_box = False
    label_only = True

    def __init__(self, module: nn.Module, task: TaskData, mark: ResponseWatermark) -> None:
        super().__init__(
            copy.deepcopy(module), num_classes=task.num_classes, input_shape=task.input_shape, device="cpu"
        )
        self.mark = mark
        self.journal_x: list[npt.NDArray[np.float32]] = []
        self.journal_y: list[npt.NDArray[np.int64]] = []

    def _labels_batch(self, x: torch.Tensor) -> npt.NDArray[np.int64]:
        own = super()._labels_batch(x)
        inputs = x.numpy()
        served, _, mask = self.mark.serve_batch(inputs, own, None)
        self.journal_x.append(inputs[mask].copy())
        self.journal_y.append(served[mask])
        return served

    def journal(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Every journaled (input, served label) pair so far, in the order served."""
        if not self.journal_x:
            return np.empty((0, *self.input_shape), dtype=np.float32), np.empty(0, dtype=np.int64)
        return np.concatenate(self.journal_x), np.concatenate(self.journal_y)


def _guard_mark(config: ValidityConfig, seed: int, task: TaskData) -> ResponseWatermark:
    return ResponseWatermark(_seed_bytes(seed, _GUARD_KEY_TAG), task.num_classes, config.guard_rate)


def _guard_record(
    seed: int,
    suspect: str,
    queries: int,
    module: nn.Module,
    journal: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]],
    owner_labels: npt.NDArray[np.int64],
    panel: ReferencePanel,
    alpha: float,
    extra: dict[str, float],
) -> DisputeRecord:
    """One API-watermark dispute: the suspect's labels on the journaled inputs, decided with the journal's standing."""
    inputs, served = journal
    test = api_watermark_test(
        name="api_watermark",
        suspect_labels=predict_labels(module, inputs),
        served_labels=served,
        claimant_labels=owner_labels,
        panel_labels=list(panel.labels(inputs)),
        num_classes=panel.num_classes,
        alpha=alpha,
    )
    bound, agreement = api_watermark_binding(claimant_labels=owner_labels, served_labels=served)
    # the guard committed each batch as it served it: the journal precedes any model trained on the answers
    standing = _standing(test.name, chosen=True, committed=OWNER_COMMITS, first_known=SUSPECT_APPEARS)
    standing = dataclasses.replace(standing, bound=bound)
    decision = decide(tests=[test], standings=[standing], alpha=alpha)
    s = test.statistics
    values = {
        "queries": float(queries),
        "watermarked": float(len(served)),
        "p_value_panel": float(s.get("p_value_panel", 1.0)),
        "p_value_guard": float(s.get("p_value_guard", 1.0)),
        "binding_agreement": agreement,
        **{key: float(s[key]) for key in ("K", "m", "D", "unbound_rows", "panel_max_matches") if key in s},
        **extra,
    }
    return DisputeRecord("digits", seed, suspect, f"api_wm_q{queries}", decision.outcome, test.p_value, values, None)


def _guard_honest_cost(mark: ResponseWatermark, owner: nn.Module, task: TaskData) -> dict[str, float]:
    """What the guard costs honest users: the served labels against the model's own on the holdout."""
    own = predict_labels(owner, task.holdout_x)
    served, _, mask = mark.serve_batch(task.holdout_x, own, None)
    return {
        "holdout_rows": float(len(own)),
        "holdout_changed": float(mask.sum()),
        "holdout_accuracy_own": float((own == task.holdout_y).mean()),
        "holdout_accuracy_served": float((served == task.holdout_y).mean()),
    }


def _guard_rows(config: ValidityConfig, seed: int, world: _DigitsWorld, report: ValidityReport) -> None:
    """The guard's disputes of one digits seed, against the seed's owner, panel and independent models."""
    report.records.extend(_guard_disputes(config, seed, world.task, world.owner, world.panel, world.independents))


def _guard_disputes(
    config: ValidityConfig,
    seed: int,
    task: TaskData,
    owner: nn.Module,
    panel: ReferencePanel,
    independents: list[nn.Module],
) -> list[DisputeRecord]:
    """The knockoff thief at each budget of the ladder (and the mixup thief), then every independent model.

    Each independent model is judged with a panel drawn from the other models of the recipe (the panel's
    and the other independents), as in the main rows.
    """
    started = time.perf_counter()
    alpha = config.alpha
    mark = _guard_mark(config, seed, task)
    thieves: list[tuple[str, int, Augmentation]] = [("guard_knockoff", q, "noise") for q in config.guard_budgets]
    if config.guard_mixup_budget > 0:
        thieves.append(("guard_knockoff_mixup", config.guard_mixup_budget, "mixup"))
    pool = [*zip(panel.members, panel.modules, strict=True), *((None, m) for m in independents)]
    honest = _guard_honest_cost(mark, owner, task)
    records: list[DisputeRecord] = []
    for suspect, queries, augment in thieves:
        api = _GuardedApi(owner, task, mark)
        knockoff = extract_knockoff(
            api, task.public_x, budget=queries, augment=augment, noise=config.guard_noise, seed=seed
        )
        journal = api.journal()
        if len(journal[1]) == 0:
            continue  # nothing was watermarked: no dispute to run (reported by the missing rung)
        owner_labels = predict_labels(owner, journal[0])
        extra = {"knockoff_accuracy": accuracy(knockoff, task.holdout_x, task.holdout_y), **honest}
        records.append(_guard_record(seed, suspect, queries, knockoff, journal, owner_labels, panel, alpha, extra))
        if suspect != "guard_knockoff":
            continue
        for i, module in enumerate(independents):
            judge = _resampled_panel(panel, pool, module, seed, i)
            records.append(
                _guard_record(seed, "guard_independent", queries, module, journal, owner_labels, judge, alpha, {})
            )
    if records:  # the section's time rides on its first record
        first = records[0]
        records[0] = dataclasses.replace(first, extra={**first.extra, "guard_seconds": time.perf_counter() - started})
    return records


def _guard_summary(report: ValidityReport) -> dict[str, Any]:
    """Per budget: seeds confirmed and the journal's size; the smallest budget that confirms; independents; cost."""
    config = report.config
    records = [r for r in report.records if r.suspect in GUARD_ROWS]
    if not records:
        return {}
    seeds = len(config.seeds)
    needed = math.ceil(config.guard_min_seed_share * seeds)
    ladder: list[dict[str, Any]] = []
    for suspect in ("guard_knockoff", "guard_knockoff_mixup"):
        for queries in sorted({int(r.extra["queries"]) for r in records if r.suspect == suspect}):
            items = [r for r in records if r.suspect == suspect and int(r.extra["queries"]) == queries]
            ladder.append(
                {
                    "suspect": suspect,
                    "queries": queries,
                    "seeds": len(items),
                    "confirmed": sum(1 for r in items if r.outcome == "ownership_confirmed"),
                    "watermarked": float(np.median([r.extra["watermarked"] for r in items])),
                    "matched": float(np.median([r.extra.get("m", 0.0) for r in items])),
                    "bound_rows": float(np.median([r.extra.get("K", 0.0) for r in items])),
                    "knockoff_accuracy": float(np.mean([r.extra["knockoff_accuracy"] for r in items])),
                    "median_p": float(np.median([r.p_value for r in items])),
                }
            )
    reaching = [row for row in ladder if row["suspect"] == "guard_knockoff" and row["confirmed"] >= needed]
    independents = [r for r in records if r.suspect == "guard_independent"]
    per_seed = {r.seed: r.extra for r in records if r.suspect == "guard_knockoff"}
    rows = sum(e["holdout_rows"] for e in per_seed.values())
    changed = sum(e["holdout_changed"] for e in per_seed.values())
    cost = sum(
        (e["holdout_accuracy_own"] - e["holdout_accuracy_served"]) * e["holdout_rows"] for e in per_seed.values()
    )
    lo, hi = (
        (
            float(stats.binom.ppf(0.0005, rows, config.guard_rate)),
            float(stats.binom.isf(0.0005, rows, config.guard_rate)),
        )
        if rows
        else (0.0, 0.0)
    )
    return {
        "rate": config.guard_rate,
        "needed_seeds": needed,
        "ladder": ladder,
        "smallest_budget": None if not reaching else reaching[0],
        "independent_n": len(independents),
        "independent_confirmed": sum(1 for r in independents if r.outcome == "ownership_confirmed"),
        "independent_fpr": _fpr("API watermark, independent models", [r.p_value for r in independents])
        if independents
        else None,
        # the guard's own p-value alone (exact given the suspect's answers, conservative by discreteness)
        "independent_fpr_guard": _fpr("the guard's p-value alone", [r.extra["p_value_guard"] for r in independents])
        if independents
        else None,
        "holdout_rows": rows,
        "holdout_changed": changed,
        "changed_share": changed / rows if rows else math.nan,
        "changed_range": (lo, hi),  # the central 99.9% of Binomial(rows, rate)
        "accuracy_cost": cost / rows if rows else math.nan,
        "seconds": sum(r.extra.get("guard_seconds", 0.0) for r in records),
    }


def _guard_checks(config: ValidityConfig, guard: dict[str, Any]) -> list[tuple[str, bool]]:
    """The guard section's pass/fail lines; when it did not run, one line that passes only if it was switched off."""
    if not guard:
        return [("the API guard section ran", not config.guard)]
    best = guard["smallest_budget"]
    rungs = [row for row in guard["ladder"] if row["suspect"] == "guard_knockoff"]
    if best:
        knockoff = (
            f"guard_knockoff: confirmed in {best['confirmed']} of {best['seeds']} seeds from Q={best['queries']} "
            f"queries ({best['watermarked']:.0f} watermarked answers, median)"
        )
    elif rungs:
        top = rungs[-1]
        knockoff = (
            f"guard_knockoff: confirmed in {top['confirmed']} of {top['seeds']} seeds at the top Q={top['queries']}"
        )
    else:
        knockoff = "guard_knockoff: no budget of the ladder journaled a watermarked answer"
    n, wrong = guard["independent_n"], guard["independent_confirmed"]
    lo, hi = guard["changed_range"]
    return [
        (f"{knockoff} (needed: {guard['needed_seeds']})", best is not None),
        (
            f"guard_independent: never confirmed, {wrong} of {n} disputes",
            wrong == 0 and n >= config.guard_min_independent,
        ),
        (
            f"guard: honest answers changed {guard['holdout_changed']:.0f} of {guard['holdout_rows']:.0f} "
            f"(rate {guard['rate']:g}: 99.9% range {lo:.0f}-{hi:.0f})",
            lo <= guard["holdout_changed"] <= hi,
        ),
    ]


def _guard_lines(guard: dict[str, Any]) -> list[str]:
    """The guard section of the report."""
    if not guard:
        return []
    lines = [
        "",
        f"API guard (wrong label on a keyed {guard['rate']:g} of answers): confirmations per thief and budget Q",
        f"  {'thief':<22} {'Q':>7} {'confirmed':>10} {'watermarked':>12} {'bound':>6} {'matched':>8} "
        f"{'knockoff acc':>13} {'median p':>9}",
    ]
    for row in guard["ladder"]:
        lines.append(
            f"  {row['suspect']:<22} {row['queries']:>7} {row['confirmed']:>4} of {row['seeds']:<3} "
            f"{row['watermarked']:>12.0f} {row['bound_rows']:>6.0f} {row['matched']:>8.0f} "
            f"{row['knockoff_accuracy']:>13.3f} {row['median_p']:>9.2g}"
        )
    lines += [f"  {name}: {what}" for name, (what, _) in GUARD_ROWS.items()]
    fpr = guard["independent_fpr"]
    if fpr is not None:
        lines.append(
            f"  independent models: {guard['independent_confirmed']} of {guard['independent_n']} confirmed; "
            f"FPR at 0.05 {fpr['fpr_at_0.05']:.3f} (a calibrated test: {fpr['calibrated_range'][0]:.3f}-"
            f"{fpr['calibrated_range'][1]:.3f}; the larger of two p-values is conservative); "
            f"the guard's p-value alone: {guard['independent_fpr_guard']['fpr_at_0.05']:.3f}"
        )
    lines.append(
        f"  honest users: {guard['holdout_changed']:.0f} of {guard['holdout_rows']:.0f} holdout answers changed "
        f"({guard['changed_share']:.4f}); accuracy cost {guard['accuracy_cost']:.4f}; "
        f"section time {guard['seconds']:.0f} s"
    )
    return lines


def _digits_seed(config: ValidityConfig, seed: int, report: ValidityReport, progress: Progress) -> None:
    world = _digits_world(config, seed, progress)
    _digits_main(config, seed, world, report)
    progress(f"digits seed {seed}: {len(world.thefts) + len(world.independents)} suspects tested")
    _digits_false_claims(config, seed, world, report)
    progress(f"digits seed {seed}: false claims at eps {list(config.false_claim_eps)} tested")
    if config.adaptive:
        _crafted_claims(config, seed, world, report)
        _counterclaims(config, seed, world, report)
        progress(f"digits seed {seed}: white-box, label-only and counter-claims tested")
        _multiplicity(config, seed, world, report)
        _family(config, seed, world, report)
        _verifiable_flow(config, seed, world, report)
        progress(f"digits seed {seed}: multiplicity, family and the verifiable flow tested")
        _margin_split(config, seed, world, report)
        progress(f"digits seed {seed}: margin-chosen dataset split tested")
    if config.guard:
        _guard_rows(config, seed, world, report)
        progress(f"digits seed {seed}: the API guard's knockoffs and independents tested")


def _synthetic_seed(config: ValidityConfig, seed: int, report: ValidityReport, progress: Progress) -> None:
    task = synthetic_task(seed)
    owner = _owner(task, seed, "wide_mlp", 150)
    suspects: list[tuple[str, nn.Module]] = [
        (kind, simulate(kind, owner, task, seed=seed)) for kind in config.synthetic_thefts
    ]
    models = train_panel(
        task,
        size=config.synthetic_independents + config.synthetic_panel_members,
        seed=40_000 + seed,
        epochs=150,
        name_prefix="ind",
        architectures=("mlp", "wide_mlp", "deep_mlp"),
    ).modules
    # the calibrating models and the independent suspects come from one recipe: they are exchangeable
    calibration, independents = models[: config.synthetic_panel_members], models[config.synthetic_panel_members :]
    suspects += [("independent", m) for m in independents]
    n = config.di_samples_synthetic
    for method in ("mingd", "blind_walk"):
        claim = _DatasetClaim(task, owner, task.owner_x[:n], task.holdout_x[:n], seed, method, calibration)
        for kind, module in suspects:
            report.records.append(_di_record(seed, kind, claim, module, config.alpha))
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


# ------------------------------------------------------------------------------------------ the summary


def _interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval for a rate k/n."""
    lo = 0.0 if k == 0 else float(stats.beta.ppf((1 - level) / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - (1 - level) / 2, k + 1, n - k))
    return lo, hi


def _acceptance(rate: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` range of Binomial(n, rate) / n: where a calibrated test's false-positive rate falls."""
    return float(stats.binom.ppf((1 - level) / 2, n, rate)) / n, float(stats.binom.isf((1 - level) / 2, n, rate)) / n


def _rates(items: Sequence[DisputeRecord], old: bool = False) -> dict[str, float]:
    counts = Counter(r.old_outcome if old else r.outcome for r in items)
    return {o: counts.get(o, 0) / len(items) for o in OUTCOMES}


def _fpr(label: str, values: Sequence[float], level: float = 0.05) -> dict[str, Any]:
    n = len(values)
    k = sum(1 for v in values if v <= level)
    lo, hi = _acceptance(level, n)
    return {
        "test": label,
        "n": n,
        "fpr_at_0.05": k / n,
        "fpr_interval": _interval(k, n),
        "calibrated_range": (lo, hi),
        "within": lo <= k / n <= hi,
    }


def summarise(report: ValidityReport) -> dict[str, Any]:
    """Outcome counts per (task, suspect, method), the adaptive rows, old against new rules, calibration, checks."""
    config = report.config
    groups: dict[tuple[str, str, str], list[DisputeRecord]] = defaultdict(list)
    for r in report.records:
        groups[(r.task, r.suspect, r.method)].append(r)
    rows: list[dict[str, Any]] = []
    adaptive: list[dict[str, Any]] = []
    for (task, suspect, method), items in sorted(groups.items()):
        row: dict[str, Any] = {
            "task": task,
            "suspect": suspect,
            "method": method,
            "n": len(items),
            **_rates(items),
            "old": _rates(items, old=True) if all(r.old_outcome is not None for r in items) else {},
            "median_p": float(np.median([r.p_value for r in items])),
        }
        if suspect in ADAPTIVE_ROWS:
            labels = sorted({k for r in items for k in r.extra if k.endswith("_confirmed")})
            what_if = {
                k.removesuffix("_confirmed"): float(np.mean([r.extra.get(k, 0.0) for r in items])) for k in labels
            }
            adaptive.append(
                {**row, "what": ADAPTIVE_ROWS[suspect][0], "true_claim": ADAPTIVE_ROWS[suspect][1], "what_if": what_if}
            )
        else:
            rows.append(row)
    adaptive.sort(key=lambda a: list(ADAPTIVE_ROWS).index(a["suspect"]))

    # what the new rules cost an honest owner: confirmation rates per theft and method, old against new
    power: list[dict[str, Any]] = []
    for row in rows:
        if row["suspect"] in THEFT_KINDS and row["old"]:
            power.append(
                {
                    "task": row["task"],
                    "suspect": row["suspect"],
                    "method": row["method"],
                    "n": row["n"],
                    "new": row["ownership_confirmed"],
                    "old": row["old"]["ownership_confirmed"],
                }
            )

    independents = [r for r in report.records if r.suspect == "independent"]
    calibration: list[dict[str, Any]] = []
    for label, method, key in (
        ("watermark, agreement test (used)", "watermark", None),
        ("watermark, pooled binomial at the bound p0 (old)", "watermark", "old_p_value"),
        ("watermark, binomial at the panel's point rate", "watermark", "point_p_value"),
        ("watermark, panel rank p-value (ties count against)", "watermark", "rank_p_value"),
        ("watermark, panel rank p-value, random tie-break", "watermark", "rank_p_value_randomised"),
        ("fingerprint, agreement test (used)", "fingerprint", None),
        ("fingerprint, pooled binomial at the bound p0 (old)", "fingerprint", "old_p_value"),
        ("fingerprint, panel rank p-value (ties count against)", "fingerprint", "rank_p_value"),
        ("fingerprint, panel rank p-value, random tie-break", "fingerprint", "rank_p_value_randomised"),
        ("dataset inference (MinGD), panel-calibrated (used)", "di_mingd", None),
        ("dataset inference (MinGD), Welch (old)", "di_mingd", "old_p_value"),
        ("dataset inference (Blind Walk), panel-calibrated (used)", "di_blind_walk", None),
        ("dataset inference (Blind Walk), Welch (old)", "di_blind_walk", "old_p_value"),
    ):
        values = [r.p_value if key is None else r.extra[key] for r in independents if r.method == method]
        values = [v for v in values if math.isfinite(v)]
        if values:
            calibration.append({**_fpr(label, values), "suspects": "independent"})
    family = [r for r in report.records if r.suspect == "family"]
    for label, key in (
        ("family sibling, fingerprint agreement test (used)", None),
        ("family sibling, fingerprint pooled binomial (old)", "old_p_value"),
    ):
        values = [r.p_value if key is None else r.extra[key] for r in family]
        if values:
            calibration.append({**_fpr(label, values), "suspects": "family"})

    checks: list[tuple[str, bool]] = []
    false = [r for r in report.records if is_false_claim(r)]
    wrong = sum(1 for r in false if r.outcome == "ownership_confirmed")
    wrong_old = sum(1 for r in false if r.old_outcome == "ownership_confirmed")
    checks.append(
        (
            f"no false confirmation in any false-claim, independent or adaptive dispute: {wrong} of {len(false)} "
            f"(old rules: {wrong_old})",
            wrong == 0 and len(false) >= config.min_false_disputes,
        )
    )
    confirmed = sum(1 for r in independents if r.outcome == "ownership_confirmed")
    checks.append(
        (
            f"independent models never confirmed: {confirmed} of {len(independents)} disputes",
            confirmed == 0 and len(independents) >= config.min_independent_disputes,
        )
    )
    for kind in ("copy", "fine_tune", "prune"):
        items = [r for r in report.records if r.task == "digits" and r.suspect == kind and r.method == "watermark"]
        ok = sum(1 for r in items if r.outcome == "ownership_confirmed")
        checks.append((f"{kind}: watermark confirms in {ok} of {len(items)} seeds", bool(items) and ok == len(items)))
    eps_claims = [r for r in report.records if r.suspect.startswith("false_claim")]
    caught_needed = [r for r in eps_claims if r.extra["naive_p_value"] <= config.alpha]
    caught = sum(1 for r in caught_needed if r.outcome == "claim_rejected")
    checks.append(
        (
            f"transferable false claims the naive test would confirm are rejected: {caught} of {len(caught_needed)}",
            bool(eps_claims) and caught == len(caught_needed),
        )
    )
    for a in adaptive:
        items = groups[(a["task"], a["suspect"], a["method"])]
        new_conf = sum(1 for r in items if r.outcome == "ownership_confirmed")
        old_conf = sum(1 for r in items if r.old_outcome == "ownership_confirmed")
        if a["true_claim"]:
            text = f"{a['suspect']}: confirmed in {new_conf} of {len(items)} (old rules: {old_conf})"
            checks.append((text, new_conf == len(items)))
        else:
            text = f"{a['suspect']}: never confirmed, {new_conf} of {len(items)} (old rules: {old_conf})"
            checks.append((text, new_conf == 0))
    if config.adaptive:
        missing = [name for name in ADAPTIVE_ROWS if not any(a["suspect"] == name for a in adaptive)]
        checks.append((f"every adaptive row ran{': missing ' + ', '.join(missing) if missing else ''}", not missing))
    # the tests in use may be conservative (bounds, the larger of two p-values), never above the range
    used = [c for c in calibration if c["suspects"] == "independent" and "(used)" in c["test"]]
    checks.append(
        (
            "p-values in use not anti-conservative at 0.05 on independent models (FPR at most the range's top): "
            + ", ".join(f"{c['test']}: {c['fpr_at_0.05']:.3f}" for c in used),
            bool(used) and all(c["fpr_at_0.05"] <= c["calibrated_range"][1] for c in used),
        )
    )
    # the randomised rank p-value is exact under exchangeability: it must fall inside the range
    exact = [c for c in calibration if c["suspects"] == "independent" and "random tie-break" in c["test"]]
    checks.append(
        (
            "exact p-values (panel rank, random tie-break) calibrated at 0.05 on independent models: "
            + ", ".join(f"{c['test']}: {c['fpr_at_0.05']:.3f}" for c in exact),
            bool(exact) and all(c["within"] for c in exact),
        )
    )
    siblings = [c for c in calibration if c["suspects"] == "family" and "(used)" in c["test"]]
    checks.append(
        (
            "family siblings (not exchangeable with the panel) at 0.05: the test in use is not anti-conservative: "
            + ", ".join(f"FPR {c['fpr_at_0.05']:.3f}, range up to {c['calibrated_range'][1]:.3f}" for c in siblings),
            not config.adaptive
            or (bool(siblings) and all(c["fpr_at_0.05"] <= c["calibrated_range"][1] for c in siblings)),
        )
    )
    guard = _guard_summary(report)
    checks += _guard_checks(config, guard)
    if report.cost:
        speedup = report.cost["speedup"]
        checks.append((f"cost: MinGD vectorised is {speedup:.1f}x the per-target loop (aim >= 5x)", speedup >= 5))
    return {
        "rows": rows,
        "adaptive": adaptive,
        # a valid rule may still confirm a false claim with probability alpha: how likely is what was seen
        "false_confirmation_chance": float(stats.binom.sf(wrong - 1, len(false), config.alpha)) if wrong else 1.0,
        "power": power,
        "calibration": calibration,
        "checks": checks,
        "cost": report.cost,
        "false_disputes": len(false),
        "false_confirmations": wrong,
        "false_confirmations_old": wrong_old,
        "guard": guard,
    }


def _outcome_cells(rates: dict[str, float]) -> str:
    return (
        f"{rates['ownership_confirmed']:>6.2f} {rates['not_confirmed']:>6.2f} "
        f"{rates['claim_rejected']:>6.2f} {rates['inconclusive']:>6.2f}"
    )


def format_report(report: ValidityReport, summary: dict[str, Any] | None = None) -> str:
    """The tables as plain text."""
    s = summary or summarise(report)
    lines = [
        f"validity benchmark: seeds {list(report.config.seeds)}, panel of {report.config.panel_size}, "
        f"alpha {report.config.alpha:g}, {len(report.records)} disputes in {report.seconds:.0f} s",
        "",
        "outcome rates under the rules in force (conf / not / rej / inc), and under the old rules",
        f"{'task':<10} {'suspect':<20} {'method':<14} {'n':>4}   {'conf':>6} {'not':>6} {'rej':>6} {'inc':>6}"
        f"   {'old conf':>8} {'median p':>10}",
    ]
    for r in s["rows"]:
        old = f"{r['old']['ownership_confirmed']:>8.2f}" if r["old"] else f"{'-':>8}"
        lines.append(
            f"{r['task']:<10} {r['suspect']:<20} {r['method']:<14} {r['n']:>4}   {_outcome_cells(r)}   {old} "
            f"{r['median_p']:>10.2g}"
        )
    if s["adaptive"]:
        lines += [
            "",
            "adaptive claimants: outcome rates now (conf / not / rej / inc) and under the old rules, same inputs",
            f"{'row':<26} {'method':<12} {'n':>4}   {'conf':>6} {'not':>6} {'rej':>6} {'inc':>6}   "
            f"{'conf':>6} {'not':>6} {'rej':>6} {'inc':>6}  {'median p':>9}",
        ]
        for a in s["adaptive"]:
            old = _outcome_cells(a["old"]) if a["old"] else "-"
            lines.append(
                f"{a['suspect']:<26} {a['method']:<12} {a['n']:>4}   {_outcome_cells(a)}   {old}  {a['median_p']:>9.2g}"
            )
        lines += [f"  {a['suspect']}: {a['what']}" for a in s["adaptive"]]
        for a in s["adaptive"]:
            for label, rate in a["what_if"].items():
                lines.append(f"  {a['suspect']}, decided {label} (all else as now): confirmation rate {rate:.2f}")
    lines += [
        "",
        f"false confirmations over {s['false_disputes']} disputes where the suspect does not derive from the "
        f"claimant: {s['false_confirmations']} (old rules: {s['false_confirmations_old']})"
        + (
            f"; were each at exactly alpha, P[at least that many] = {s['false_confirmation_chance']:.2f}"
            if s["false_confirmations"]
            else ""
        ),
    ]
    if s["power"]:
        lines += ["", "power lost to the new rules: confirmation rate per theft and method, old -> new"]
        for p in s["power"]:
            lines.append(
                f"  {p['task']:<10} {p['suspect']:<10} {p['method']:<14} n={p['n']:<3} {p['old']:.2f} -> {p['new']:.2f}"
            )
    lines += ["", "false-positive rate at 0.05 (a calibrated test falls in the range)"]
    for c in s["calibration"]:
        lo, hi = c["calibrated_range"]
        ilo, ihi = c["fpr_interval"]
        lines.append(
            f"  {c['test']:<56} n={c['n']:<4} FPR {c['fpr_at_0.05']:.3f} (95% CI {ilo:.3f}-{ihi:.3f}); "
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
                f"{method}: {per_sample * 1e3:.1f} ms per tested sample on the suspect (the claimant's side and "
                "the panel's calibration run once per claim), "
                f"{queries:.0f} metered suspect queries per tested sample"
            )
    lines += _guard_lines(s.get("guard", {}))
    lines += ["", "checks"]
    lines += [f"  [{'PASS' if ok else 'FAIL'}] {text}" for text, ok in s["checks"]]
    return "\n".join(lines)


def main_checks_pass(summary: dict[str, Any]) -> bool:
    """True when every check passed."""
    return all(ok for _, ok in summary["checks"])


def configs_for(names: Sequence[str]) -> ValidityConfig:
    """``full`` (the default) or ``quick`` (one seed, smaller sets, every row once; what the test suite runs)."""
    if "quick" in names:
        return ValidityConfig(
            seeds=(0,),
            independents=6,
            di_independents=1,
            di_samples_digits=60,
            di_panel_members=4,
            synthetic_independents=1,
            synthetic_panel_members=5,
            synthetic_thefts=("copy",),
            false_claim_suspects=2,
            cost_samples=3,
            min_independent_disputes=12,
            adaptive_suspects=1,
            thief_thefts=("copy",),
            multiplicity_draws=20_000,
            family_suspects=1,
            margin_samples=60,
            margin_suspects=1,
            min_false_disputes=30,
            guard_budgets=(5_000,),
            guard_mixup_budget=0,
            guard_min_independent=6,
        )
    return ValidityConfig()
