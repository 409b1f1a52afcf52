"""An owner's stress test from plain data to plain data: steal their model several ways, test their evidence on each.

The parent (a Celery worker) opens the owner's escrow; it never loads the owner's model, which is untrusted
code like any artifact. It hands :func:`run_stress_test` (through :func:`run_stress_test_reporting` in the
sandbox child) a spec of plain values and NumPy arrays: the artifact's file, the revealed evidence, the
reference panel's folder, the thefts. Every theft is simulated with the thief holding the panel task's public
split; each evidence set is then tested against each stolen model and against an independent control (a fresh
model trained on the public split only), so the table shows both what survives and that nothing matches an
innocent model. Each cell is one test at ``alpha``, as a dispute with that evidence set alone would run it.

Everything runs on the CPU with seeds derived from the spec's seed and the theft's name, so the same spec
gives the same table on the same machine, whatever other thefts were asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from verification.methods import thefts
from verification.methods.dataset_inference import dataset_inference_test
from verification.methods.datasets import TaskData, task_by_name
from verification.methods.decision import DEFAULT_ALPHA, TestResult
from verification.methods.evaluate import AgreementClaim, agreement_claim_test
from verification.methods.panels import ReferencePanel
from verification.methods.suspects import (
    OnnxSuspect,
    QueryBudgetExceeded,
    Suspect,
    SuspectError,
    TorchModuleSuspect,
    TorchScriptSuspect,
)
from verification.methods.training import ARCHITECTURES, Architecture, build_model, train_classifier

__all__ = [
    "CONTROL",
    "RESULTS_FORMAT",
    "WHITE_BOX_THEFTS",
    "StressSpecError",
    "prune_weights_by_name",
    "run_stress_test",
    "run_stress_test_reporting",
    "theft_seed",
]

RESULTS_FORMAT = "modelcourt-stress-v1"
CONTROL = "independent"
# thefts that train the owner's weights further: they need the module itself, so a TorchScript artifact
WHITE_BOX_THEFTS = frozenset({"fine_tune", "prune"})
THEFT_LABELS = {
    "copy": "exact copy",
    "fine_tune": "fine-tuned",
    "prune": "pruned + fine-tuned",
    "distill": "distilled (soft labels)",
    "extract": "extracted (hard labels)",
    CONTROL: "independent model (control)",
}
ModelKind = Literal["torchscript", "onnx"]
Progress = Callable[[int, str], None]
FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.int64]


class StressSpecError(Exception):
    """A stress test that cannot run on this model, evidence or panel; the message is a sentence for the owner."""


@dataclass(frozen=True)
class _Settings:
    """How hard the thief works; the defaults are those of :func:`thefts.simulate` (tuned on digits)."""

    fine_tune_epochs: int = thefts.FINE_TUNE_EPOCHS
    prune_amount: float = thefts.PRUNE_AMOUNT
    student_epochs: int = thefts.STUDENT_EPOCHS
    extract_budget: int = thefts.EXTRACT_BUDGET
    student_arch: Architecture = "mlp"
    control_epochs: int = thefts.STUDENT_EPOCHS

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any]) -> _Settings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise StressSpecError(f"unknown stress-test settings: {', '.join(unknown)}")
        made = cls(**dict(raw))
        if min(made.fine_tune_epochs, made.student_epochs, made.control_epochs, made.extract_budget) < 1:
            raise StressSpecError("epochs and the extraction budget must be at least 1")
        if not 0 < made.prune_amount < 1:
            raise StressSpecError(f"the pruned fraction must lie in (0, 1), got {made.prune_amount}")
        if made.student_arch not in ARCHITECTURES:
            raise StressSpecError(f"unknown student architecture {made.student_arch!r}")
        return made


@dataclass(frozen=True)
class _Stolen:
    """A stolen model as the tests see it, and what the theft cost."""

    suspect: Suspect
    queries: int
    detail: str


def theft_seed(seed: int, theft: str) -> int:
    """The seed of one theft: fixed by the test's seed and the theft's name alone."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{theft}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def _failure(exc: BaseException) -> str:
    """What went wrong, in our words: a model's or a runtime's own text never reaches the owner's page."""
    if isinstance(exc, QueryBudgetExceeded):
        return "the query budget ran out"
    if isinstance(exc, SuspectError):
        return str(exc)  # the adapters' sentences are ours: they never quote what the model said
    return "its answers could not be used"


def _load_script(path: str) -> nn.Module:
    try:
        module = torch.jit.load(path, map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise StressSpecError("your model could not be loaded as TorchScript") from exc
    if not isinstance(module, nn.Module):
        raise StressSpecError("your model did not load as a TorchScript module")
    return module.eval()


def _owner_suspect(kind: ModelKind, path: str, task: TaskData) -> Suspect:
    """A fresh adapter over the owner's artifact (its own query counter), always on the CPU."""
    shape, classes = task.input_shape, task.num_classes
    try:
        if kind == "torchscript":
            return TorchScriptSuspect(path, num_classes=classes, input_shape=shape, device="cpu")
        return OnnxSuspect(path, num_classes=classes, input_shape=shape, device="cpu", threads=1)
    except SuspectError as exc:
        raise StressSpecError("your model could not be loaded") from exc


def _frozen(module: nn.Module) -> nn.Module:
    """Parameters without gradients: a trained TorchScript module refuses inference mode otherwise."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()


def prune_weights_by_name(
    model: nn.Module,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    amount: float,
    epochs: int,
    lr: float = thefts.FINE_TUNE_LR,
    seed: int = 0,
) -> float:
    """Global magnitude pruning of every ``*weight`` parameter of rank >= 2, then fine-tuning; returns the sparsity.

    Works on loaded TorchScript modules too, whose layers are not ``nn.Linear`` instances (so
    :func:`thefts.prune_and_fine_tune` finds nothing to prune there). Pruned weights stay zero while
    fine-tuning because their gradients are masked (Adam without weight decay never moves a weight
    whose gradient is always zero).
    """
    weights = [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "weight" and p.dim() >= 2]
    if not weights:
        raise StressSpecError("your model has no weight matrices to prune")
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    count = round(amount * magnitudes.numel())
    flat_mask = torch.ones_like(magnitudes)
    if count:
        flat_mask[torch.topk(magnitudes, count, largest=False).indices] = 0.0
    masks = torch.split(flat_mask, [w.numel() for w in weights])
    handles = []
    with torch.no_grad():
        for weight, mask in zip(weights, masks, strict=True):
            shaped = mask.reshape(weight.shape)
            weight.mul_(shaped)
            handles.append(weight.register_hook(lambda grad, shaped=shaped: grad * shaped))  # type: ignore[no-untyped-call]
    try:
        train_classifier(model, x, y, epochs=epochs, lr=lr, seed=seed)
    finally:
        for handle in handles:
            handle.remove()
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / magnitudes.numel()


def _steal(theft: str, *, kind: ModelKind, path: str, task: TaskData, settings: _Settings, seed: int) -> _Stolen:
    """One simulated theft of the owner's artifact; the thief holds the task's public split."""
    shape, classes = task.input_shape, task.num_classes
    if theft == "copy":
        return _Stolen(_owner_suspect(kind, path, task), 0, "the artifact itself")
    if theft == CONTROL:
        model = build_model(settings.student_arch, input_shape=shape, num_classes=classes, seed=seed)
        train_classifier(model, task.public_x, task.public_y, epochs=settings.control_epochs, seed=seed)
        detail = f"a fresh {settings.student_arch} trained {settings.control_epochs} epochs on the public split"
        return _Stolen(TorchModuleSuspect(model, num_classes=classes, input_shape=shape, device="cpu"), 0, detail)
    if theft in WHITE_BOX_THEFTS:
        if kind != "torchscript":
            raise StressSpecError(f"the {theft} theft trains your weights: it needs a TorchScript model")
        # a fresh load, not a deep copy: copied ScriptModules hold non-leaf parameters that cannot be trained
        module = _load_script(path)
        epochs = settings.fine_tune_epochs
        if theft == "fine_tune":
            train_classifier(module, task.public_x, task.public_y, epochs=epochs, lr=thefts.FINE_TUNE_LR, seed=seed)
            detail = f"{epochs} epochs on the public split at lr {thefts.FINE_TUNE_LR:g}"
        else:
            sparsity = prune_weights_by_name(
                module, task.public_x, task.public_y, amount=settings.prune_amount, epochs=epochs, seed=seed
            )
            detail = f"{sparsity:.0%} of the weights zeroed, then {epochs} epochs of fine-tuning"
        stolen = TorchModuleSuspect(_frozen(module), num_classes=classes, input_shape=shape, device="cpu")
        return _Stolen(stolen, 0, detail)
    victim = _owner_suspect(kind, path, task)
    arch = settings.student_arch
    if theft == "distill":
        student = thefts.distill(victim, task.public_x, student_arch=arch, epochs=settings.student_epochs, seed=seed)
        detail = f"a {arch} trained {settings.student_epochs} epochs on your soft labels"
    elif theft == "extract":
        student = thefts.extract_knockoff(
            victim,
            task.public_x,
            budget=settings.extract_budget,
            student_arch=arch,
            epochs=settings.student_epochs,
            seed=seed,
        )
        detail = f"a {arch} trained {settings.student_epochs} epochs on your labels for mixup queries"
    else:
        raise StressSpecError(f"unknown theft {theft!r}; expected one of {', '.join(thefts.THEFT_KINDS)}")
    suspect = TorchModuleSuspect(student, num_classes=classes, input_shape=shape, device="cpu")
    return _Stolen(suspect, int(victim.queries), detail)


def _task_for(panel: ReferencePanel, name: str | None) -> TaskData:
    """The panel's task with the split its members were trained on: the thief's public data."""
    try:
        task = task_by_name(name or panel.task)
    except ValueError as exc:
        raise StressSpecError(f"the panel's task {panel.task!r} has no public data to simulate a thief with") from exc
    if panel.params.get("task_digest") not in (None, task.digest):
        raise StressSpecError(f"the panel was trained on other {task.name} data than the thief would hold")
    if (panel.num_classes, panel.input_shape) != (task.num_classes, task.input_shape):
        raise StressSpecError("the panel does not match its task's interface")
    return task


def _in_layout(task: TaskData, shape: tuple[int, ...]) -> TaskData:
    """The task's splits laid out as ``shape`` (the same elements, row-major), as the owner's model takes them."""
    if shape == task.input_shape:
        return task
    return dataclasses.replace(
        task,
        input_shape=shape,
        **{f"{part}_x": getattr(task, f"{part}_x").reshape((-1, *shape)) for part in ("owner", "public", "holdout")},
    )


def _claims(spec: Mapping[str, Any]) -> list[AgreementClaim]:
    return [AgreementClaim.from_spec(raw) for raw in spec.get("claims", [])]


def _cell(test: TestResult, *, alpha: float, screened_out: bool) -> dict[str, Any]:
    match_rate = test.statistics.get("match_rate")
    reason = test.reason
    if screened_out:
        reason = "set aside: the evidence agrees with independent reference models beyond chance (false-claim screen)"
    return {
        "evidence": test.name,
        "p_value": float(test.p_value),
        "match_rate": float(match_rate) if isinstance(match_rate, int | float) else None,
        "matches": int(test.statistics["m"]) if "m" in test.statistics else None,
        "conclusive": bool(test.conclusive),
        "confirmed": bool(test.conclusive and not screened_out and test.p_value <= alpha),
        "reason": reason,
    }


def _agreement(suspect: Suspect, reference: LabelArray, x: FloatArray) -> float:
    return float((suspect.labels(x) == reference).mean())


def run_stress_test(spec: Mapping[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    """Simulate each theft, test each evidence set on each stolen model and on the control; plain data back.

    ``spec`` keys: ``model`` (``{"kind": "torchscript"|"onnx", "path"}``), ``num_classes``, ``input_shape``
    (any layout the panel accepts), ``panel_dir``, optional ``panel_name`` (for messages), ``thefts`` (names
    from :data:`thefts.THEFT_KINDS`), ``alpha``, ``seed``, ``claims``
    (``[{name, kind, inputs, labels, verifiable}]``), ``datasets`` (``[{name, members, nonmembers,
    split_seed}]``, TorchScript models only), optional ``task`` (default: the panel's) and ``settings``
    (thief effort: ``fine_tune_epochs``, ``prune_amount``, ``student_epochs``, ``extract_budget``,
    ``student_arch``, ``control_epochs``). Returns ``{"results", "timings"}``: ``results["rows"]`` has one
    row per theft and a last one for the control, each with the stolen model's holdout accuracy, its
    agreement with the owner's model and one cell per evidence set; ``results`` depends only on the spec
    (seconds are in ``timings``). Raises :class:`StressSpecError`.
    """
    report = progress or (lambda percent, phase: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    alpha = float(spec.get("alpha", DEFAULT_ALPHA))
    seed = int(spec.get("seed", 0))
    kind: ModelKind = spec["model"]["kind"]
    path = str(spec["model"]["path"])
    if kind not in ("torchscript", "onnx"):
        raise StressSpecError(f"unknown model format {kind!r}")
    asked = list(dict.fromkeys(str(t) for t in spec.get("thefts", [])))
    unknown = [t for t in asked if t not in thefts.THEFT_KINDS]
    if not asked or unknown:
        raise StressSpecError(f"thefts must be a non-empty list of {', '.join(thefts.THEFT_KINDS)}")
    if kind != "torchscript" and WHITE_BOX_THEFTS & set(asked):
        raise StressSpecError("fine-tuning and pruning train your weights: they need a TorchScript model")
    settings = _Settings.from_spec(spec.get("settings", {}))
    claims = _claims(spec)
    datasets = list(spec.get("datasets", []))
    if not claims and not datasets:
        raise StressSpecError("no evidence to test")
    if datasets and kind != "torchscript":
        raise StressSpecError("dataset inference needs your model's gradients: it needs a TorchScript model")

    report(0, "loading the reference panel")
    panel = ReferencePanel.load(Path(spec["panel_dir"]))
    task = _task_for(panel, spec.get("task"))
    model_shape = tuple(int(d) for d in spec["input_shape"])
    interface = panel.interface(spec.get("panel_name"))
    refusal = interface.refusal(model_shape, int(spec["num_classes"]), subject="your model")
    if refusal:
        raise StressSpecError(refusal)
    # the thief works in the owner's layout; the panel reshapes its queries to its own
    task = _in_layout(task, model_shape)
    timings["panel_load_s"] = time.perf_counter() - started

    mark = time.perf_counter()
    report(2, "checking your model")
    owner = _owner_suspect(kind, path, task)
    try:
        owner_holdout = owner.labels(task.holdout_x)
    except (SuspectError, ValueError) as exc:
        raise StressSpecError(
            f"your model does not answer like a {task.num_classes}-class classifier ({_failure(exc)})"
        ) from exc
    owner_accuracy = float((owner_holdout == task.holdout_y).mean())
    owner_module = _load_script(path) if datasets else None
    screens: dict[str, dict[str, Any]] = {}
    evidence: list[dict[str, Any]] = []
    for claim in claims:
        _, screen = agreement_claim_test(claim, owner, panel, alpha=alpha, tie_break=claim.tie_break)
        screens[claim.name] = {"rejected": bool(screen.rejected), "p_value": float(screen.p_value)}
        evidence.append(
            {
                "name": claim.name,
                "kind": claim.kind,
                "size": len(claim.labels),
                "owner_match_rate": float((owner.labels(claim.inputs) == claim.labels).mean()),
                "screen": screens[claim.name],
            }
        )
    for raw in datasets:
        evidence.append(
            {"name": str(raw["name"]), "kind": "dataset_inference", "size": len(raw["members"]), "screen": None}
        )
    timings["owner_check_s"] = time.perf_counter() - mark

    columns = [*asked, CONTROL]
    rows = []
    for index, theft in enumerate(columns):
        share = 5 + 95 * index // len(columns)
        label = THEFT_LABELS[theft]
        report(share, f"simulating the theft: {label} ({index + 1} of {len(columns)})")
        mark = time.perf_counter()
        try:
            stolen = _steal(theft, kind=kind, path=path, task=task, settings=settings, seed=theft_seed(seed, theft))
        except (SuspectError, QueryBudgetExceeded, ValueError) as exc:
            raise StressSpecError(f"the {label} theft failed on your model ({_failure(exc)})") from exc
        timings[f"{theft}_simulate_s"] = time.perf_counter() - mark

        report(share + 95 // (2 * len(columns)), f"testing your evidence against the {label} model")
        mark = time.perf_counter()
        suspect = stolen.suspect
        try:
            accuracy = float((suspect.labels(task.holdout_x) == task.holdout_y).mean())
            agreement = _agreement(suspect, owner_holdout, task.holdout_x)
        except SuspectError as exc:
            raise StressSpecError(f"the {label} model does not answer ({_failure(exc)})") from exc
        cells = []
        for claim in claims:
            test, _ = agreement_claim_test(claim, suspect, panel, alpha=alpha, tie_break=claim.tie_break)
            cells.append(_cell(test, alpha=alpha, screened_out=screens[claim.name]["rejected"]))
        for raw in datasets:
            assert owner_module is not None  # noqa: S101 (loaded above whenever datasets are given)
            name = str(raw["name"])
            try:
                result = dataset_inference_test(
                    claimant=owner_module,
                    suspect=suspect,
                    private_x=np.asarray(raw["members"], dtype=np.float32),
                    public_x=np.asarray(raw["nonmembers"], dtype=np.float32),
                    num_classes=task.num_classes,
                    split_seed=int(raw.get("split_seed", 0)),
                    method="mingd" if suspect.white_box else "blind_walk",
                    low=task.low,
                    high=task.high,
                    fallback_to_blind_walk=True,
                    name=name,
                )
            except (SuspectError, QueryBudgetExceeded) as exc:
                reason = f"the model did not answer ({_failure(exc)})"
                result = TestResult(name, "dataset_inference", 1.0, {}, False, reason)
            cells.append(_cell(result, alpha=alpha, screened_out=False))
        timings[f"{theft}_tests_s"] = time.perf_counter() - mark
        rows.append(
            {
                "theft": theft,
                "label": label,
                "control": theft == CONTROL,
                "seed": theft_seed(seed, theft),
                "detail": stolen.detail,
                "accuracy": accuracy,
                "agreement": agreement,
                "thief_queries": stolen.queries,
                "cells": cells,
            }
        )

    report(100, "done")
    timings["total_s"] = time.perf_counter() - started
    results = {
        "format": RESULTS_FORMAT,
        "alpha": alpha,
        "seed": seed,
        "task": task.name,
        "panel": {"hash": panel.hash, "size": len(panel), "task": panel.task},
        "owner": {"format": kind, "accuracy": owner_accuracy},
        "evidence": evidence,
        "rows": rows,
    }
    return {"results": results, "timings": timings}


def run_stress_test_reporting(spec: Mapping[str, Any], *, model_path: str | None = None) -> dict[str, Any]:
    """:func:`run_stress_test` for the sandbox child: progress goes to ``spec["progress_path"]`` as JSON.

    ``model_path``, when given, replaces the spec's (in the sandbox: the private copy of the owner's model).
    A refusal comes back as ``{"failure": sentence}``, so that the parent shows it as it is.
    """
    if model_path is not None:
        spec = {**spec, "model": {**spec["model"], "path": model_path}}
    target = spec.get("progress_path")

    def write(percent: int, phase: str) -> None:
        if not target:
            return
        tmp = f"{target}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"percent": int(percent), "phase": phase}, handle)
        # a rename: the parent never reads half a file
        os.replace(tmp, target)

    try:
        return run_stress_test(spec, write)
    except StressSpecError as exc:
        return {"failure": str(exc)}
