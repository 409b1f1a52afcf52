"""One dispute's methods from plain data to plain data: what a verification run calls in its sandbox child.

The parent (a Celery worker) opens the escrow, checks commitments and signs; it never loads the
suspect. It hands :func:`run_methods` a spec of plain values and NumPy arrays (the suspect's file
or endpoint, the revealed evidence, the reference panel's folder) and gets back plain values:
the decision record, the numbers behind the plots, the queries spent and where the time went.
Nothing here touches a database or a key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ownership.probes import registry_probe_inputs
from verification.methods.api_watermark import api_watermark_binding, api_watermark_test
from verification.methods.binding import claim_binding
from verification.methods.dataset_inference import Method, claimant_side_features, dataset_inference_test
from verification.methods.decision import DEFAULT_ALPHA, ClaimScreen, Standing, TestResult, decide
from verification.methods.evaluate import AgreementClaim, agreement_claim_test
from verification.methods.panels import ReferencePanel
from verification.methods.suspects import (
    HttpSuspect,
    OnnxSuspect,
    QueryBudgetExceeded,
    Suspect,
    SuspectError,
    TorchScriptSuspect,
)

__all__ = ["METHODS", "PanelMismatchError", "claimant_claim_labels", "dataset_specs", "load_suspect", "run_methods"]

METHODS = ("watermark", "fingerprint", "dataset_inference", "api_watermark")
Progress = Callable[[str, int], None]


class PanelMismatchError(ValueError):
    """The reference panel does not serve the claimant's classes or input layout: nothing about the suspect."""


def load_suspect(spec: Mapping[str, Any], *, num_classes: int, input_shape: tuple[int, ...]) -> Suspect:
    """The suspect described by ``spec``: ``{"kind": "torchscript"|"onnx", "path"}`` or ``{"kind": "http", ...}``."""
    kind = spec.get("kind")
    budget = spec.get("budget")
    if kind == "torchscript":
        return TorchScriptSuspect(spec["path"], num_classes=num_classes, input_shape=input_shape, budget=budget)
    if kind == "onnx":
        return OnnxSuspect(spec["path"], num_classes=num_classes, input_shape=input_shape, budget=budget, threads=1)
    if kind == "http":
        return HttpSuspect(
            spec["url"],
            protocol=spec.get("protocol", "json"),
            model_name=spec.get("model_name") or None,
            num_classes=num_classes,
            input_shape=input_shape,
            output_kind=spec.get("output_kind", "logits"),
            timeout_s=float(spec.get("timeout_s", 10)),
            budget=budget,
        )
    raise ValueError(f"unknown suspect kind {kind!r}")


def _claimant_module(path: str) -> torch.nn.Module:
    module = torch.jit.load(path, map_location="cpu")  # type: ignore[no-untyped-call]
    if not isinstance(module, torch.nn.Module):
        raise ValueError("the claimant's artifact did not load as a module")
    return module.eval()


def run_methods(
    spec: Mapping[str, Any], *, suspect_path: str | None = None, claimant_path: str | None = None
) -> dict[str, Any]:
    """Run the requested methods against the suspect and decide; see the module docstring for the shape.

    ``suspect_path`` and ``claimant_path``, when given, replace the spec's paths: in the sandbox they name
    the private copies of the artifacts, the only model files the child can read.

    ``spec`` keys: ``suspect`` (for :func:`load_suspect`), ``num_classes``, ``input_shape``, ``low``,
    ``high``, ``alpha``, ``panel_dir``, optional ``panel_name`` (for messages), ``claims`` (list of
    ``{name, kind, inputs, labels, verifiable}``), optional ``datasets`` (list of ``{name, members,
    nonmembers, split_seed}`` with ``claimant_features`` or ``claimant_path``, optional ``method``; the older
    single ``dataset`` is accepted too; see :func:`dataset_specs`), each set a test of its own calibrated on
    the panel. Raises :class:`PanelMismatchError` before any query when the
    panel does not serve the claimant's classes and input layout.
    """
    if suspect_path is not None:
        spec = {**spec, "suspect": {**spec["suspect"], "path": suspect_path}}
    datasets = dataset_specs(spec)
    if claimant_path is not None:
        datasets = [{**dataset, "claimant_path": claimant_path} for dataset in datasets]
    timings: dict[str, float] = {}
    started = time.perf_counter()
    num_classes = int(spec["num_classes"])
    input_shape = tuple(int(d) for d in spec["input_shape"])
    alpha = float(spec.get("alpha", DEFAULT_ALPHA))
    low, high = float(spec.get("low", 0.0)), float(spec.get("high", 1.0))

    panel = ReferencePanel.load(Path(spec["panel_dir"]))
    # the claimant's registration fixes the layout the suspect is queried in; the panel must serve it
    refusal = panel.interface(spec.get("panel_name")).refusal(input_shape, num_classes, subject="the claimant model")
    if refusal:
        raise PanelMismatchError(
            f"{refusal} (the panel does not fit the claimant's registration; the suspect was not queried)"
        )
    timings["panel_load_s"] = time.perf_counter() - started

    mark = time.perf_counter()
    tests: list[TestResult] = []
    screens: list[ClaimScreen] = []
    plots: dict[str, Any] = {}
    bindings: dict[str, tuple[bool, float]] = {}
    failure = ""
    try:
        suspect = load_suspect(spec["suspect"], num_classes=num_classes, input_shape=input_shape)
    except (SuspectError, ValueError, OSError):
        suspect = None
        # a category, not the exception's text: a suspect file or endpoint can make that say anything
        failure = "the suspect could not be loaded (not a model this service can run, or unreachable)"
    timings["model_load_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    for raw in spec.get("claims", []):
        claim = AgreementClaim.from_spec(raw)
        if suspect is None:
            tests.append(TestResult(claim.name, claim.kind, 1.0, {"K": len(claim.labels)}, False, failure))
            continue
        if claim.kind == "api_watermark":
            test, bound = _api_watermark(claim, raw.get("claimant_labels"), suspect, panel, num_classes, alpha)
            tests.append(test)
            if bound is not None:
                bindings[claim.name] = bound
            plots[claim.name] = _api_watermark_plot(test, num_classes)
            continue
        test, screen = agreement_claim_test(claim, suspect, panel, alpha=alpha, tie_break=claim.tie_break)
        tests.append(test)
        screens.append(screen)
        if raw.get("claimant_labels") is not None:
            binding = claim_binding(claim, raw["claimant_labels"], panel, alpha=alpha)
            bindings[claim.name] = (binding.bound, binding.p_value)
        panel_rates = (panel.labels(claim.inputs) == claim.labels[None, :]).mean(axis=1)
        plots[claim.name] = {
            "kind": claim.kind,
            "suspect_match_rate": float(test.statistics.get("match_rate", float("nan"))),
            "panel_match_rates": [float(v) for v in panel_rates],
            "chance": 1.0 / num_classes,
        }
    timings["agreement_queries_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    panel_seconds = 0.0
    for dataset in datasets:
        result = _dataset_inference(
            dataset, suspect=suspect, failure=failure, panel=panel, num_classes=num_classes, low=low, high=high,
            alpha=alpha,
        )  # fmt: skip
        panel_seconds += float(result.statistics.get("panel_seconds", 0.0))
        tests.append(result)
    timings["dataset_inference_panel_s"] = panel_seconds
    timings["dataset_inference_s"] = time.perf_counter() - mark

    # the registry's probes: which earlier registration, if any, the suspect behaves as (the parent compares)
    probe_labels: list[int] | None = None
    if spec.get("registry_probe") and suspect is not None:
        try:
            probe_labels = [int(v) for v in suspect.labels(registry_probe_inputs(input_shape))]
        except (SuspectError, QueryBudgetExceeded, ValueError):
            probe_labels = None

    decision = decide(tests=tests, screens=screens, standings=_standings(spec, tests, bindings), alpha=alpha)
    timings["total_s"] = time.perf_counter() - started
    return {
        "decision": decision.to_dict(),
        "registry_probe_labels": probe_labels,
        "panel": {"hash": panel.hash, "size": len(panel), "task": panel.task},
        "plots": plots,
        "queries": 0 if suspect is None else int(suspect.queries),
        "suspect": "" if suspect is None else suspect.describe(),
        "device": str(getattr(suspect, "device", "remote")),
        "timings": timings,
    }


def _api_watermark(
    claim: AgreementClaim,
    claimant_labels: Any,
    suspect: Suspect,
    panel: ReferencePanel,
    num_classes: int,
    alpha: float,
) -> tuple[TestResult, tuple[bool, float] | None]:
    """A guard's journaled answers put to the suspect, against the panel; binding on the claimant's labels.

    The binding's number is the claimant model's agreement with the served labels (not a p-value): the
    guard serves a label other than the model's own, so a model that gives the served labels did not serve them.
    """
    if claimant_labels is None:
        reason = "the claimant's own model gave no labels for the journaled inputs"
        return TestResult(claim.name, "api_watermark", 1.0, {"K": len(claim.labels)}, False, reason), None
    own = np.asarray(claimant_labels, dtype=np.int64)
    try:
        answered = suspect.labels(claim.inputs)
    except QueryBudgetExceeded:
        reason = f"the suspect's query budget does not cover the {len(claim.labels)} journaled inputs"
        return TestResult(claim.name, "api_watermark", 1.0, {"K": len(claim.labels)}, False, reason), None
    except (SuspectError, ValueError):
        reason = "the suspect did not answer the journaled inputs"
        return TestResult(claim.name, "api_watermark", 1.0, {"K": len(claim.labels)}, False, reason), None
    test = api_watermark_test(
        name=claim.name,
        suspect_labels=answered,
        served_labels=claim.labels,
        claimant_labels=own,
        panel_labels=list(panel.labels(claim.inputs)),
        num_classes=num_classes,
        alpha=alpha,
    )
    bound, agreement = api_watermark_binding(claimant_labels=own, served_labels=claim.labels)
    return test, (bound, agreement)


def _api_watermark_plot(test: TestResult, num_classes: int) -> dict[str, Any]:
    k, m = test.statistics.get("K"), test.statistics.get("m")
    rate = float(m) / float(k) if isinstance(k, int | float) and isinstance(m, int | float) and k else float("nan")
    return {
        "kind": "api_watermark",
        "suspect_match_rate": rate,
        "panel_match_rates": [],
        "chance": 1.0 / max(1, num_classes - 1),
    }


def _standings(
    spec: Mapping[str, Any], tests: list[TestResult], bindings: Mapping[str, tuple[bool, float]]
) -> list[Standing]:
    """Each test's standing: binding measured here; precedence and draws from ``spec["standings"]`` if given.

    A verification run's parent ignores this decision and decides again with its own standings (judged
    after the run); without them a generated watermark stands as one draw and everything else as
    claimant-chosen evidence whose precedence is not established.
    """
    given = spec.get("standings") or {}
    generated = {str(c["name"]) for c in spec.get("claims", []) if c.get("verifiable")}
    standings = []
    for test in tests:
        raw = given.get(test.name) or {}
        bound, binding_p = bindings.get(test.name, (None, None))
        standings.append(
            Standing(
                name=test.name,
                chosen=bool(raw.get("chosen", test.name not in generated)),
                precedes=raw.get("precedes"),
                precedence_detail=str(raw.get("precedence_detail", "")),
                bound=bound,
                binding_p_value=binding_p,
                draws=int(raw.get("draws", 1)),
            )
        )
    return standings


def claimant_claim_labels(spec: Mapping[str, Any], *, claimant_path: str) -> dict[str, list[int]]:
    """The claimant's own model's labels on every claimed set's inputs (its own sandbox call: no suspect there).

    ``spec``: ``claimant`` (``{"kind": "torchscript"|"onnx"}``), ``num_classes``, ``input_shape`` and ``claims``
    (``[{name, inputs}]``). Returns name -> labels, for :func:`verification.methods.binding.claim_binding`.
    """
    num_classes = int(spec["num_classes"])
    input_shape = tuple(int(d) for d in spec["input_shape"])
    claimant = load_suspect(
        {"kind": spec["claimant"]["kind"], "path": claimant_path}, num_classes=num_classes, input_shape=input_shape
    )
    return {
        str(raw["name"]): [int(v) for v in claimant.labels(np.asarray(raw["inputs"], dtype=np.float32))]
        for raw in spec["claims"]
    }


class _ClaimantUnmeasured(Exception):  # noqa: N818 (a condition the test reports, not a program error)
    """The claimant's own model could not be measured for dataset inference; the sentence is ours."""


def dataset_specs(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The run's dataset sets: ``datasets`` (a list), or the single ``dataset`` of older specs, each named.

    A set without a name is called ``dataset_inference`` (the single set) or ``dataset_inference-<i>``.
    Two sets with one name, or a spec with both keys, raise ``ValueError``: no set is dropped silently.
    """
    many, one = spec.get("datasets"), spec.get("dataset")
    if many and one:
        raise ValueError("the spec gives both 'datasets' and 'dataset'; give the list alone")
    raw: list[Mapping[str, Any]] = list(many) if many else ([one] if one else [])
    named: list[Mapping[str, Any]] = [
        {**dataset, "name": str(dataset.get("name") or ("dataset_inference" if one else f"dataset_inference-{i}"))}
        for i, dataset in enumerate(raw)
    ]
    names = [dataset["name"] for dataset in named]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset sets need distinct names, got {names}")
    return named


def _dataset_inference(
    dataset: Mapping[str, Any],
    *,
    suspect: Suspect | None,
    failure: str,
    panel: ReferencePanel,
    num_classes: int,
    low: float,
    high: float,
    alpha: float,
) -> TestResult:
    """One dataset set's test, calibrated on the panel; a suspect that stops answering makes it inconclusive."""
    name = str(dataset["name"])
    if suspect is None:
        return TestResult(name, "dataset_inference", 1.0, {}, False, failure)
    method: Method = "mingd" if suspect.white_box else "blind_walk"
    if dataset.get("method") in ("mingd", "blind_walk"):
        method = dataset["method"]
    measured = dataset.get("claimant_features")
    if measured is not None:
        method = measured["method"]  # measured in the claimant's own sandbox call, for this method
    try:
        if dataset.get("claimant_failure"):
            raise _ClaimantUnmeasured(str(dataset["claimant_failure"]))
        return dataset_inference_test(
            claimant=None if measured is not None else _claimant_module(str(dataset["claimant_path"])),
            claimant_features=measured,
            suspect=suspect,
            private_x=np.asarray(dataset["members"], dtype=np.float32),
            public_x=np.asarray(dataset["nonmembers"], dtype=np.float32),
            num_classes=num_classes,
            split_seed=int(dataset.get("split_seed", 0)),
            method=method,
            low=low,
            high=high,
            fallback_to_blind_walk=True,
            name=name,
            panel=panel,
            alpha=alpha,
        )
    except _ClaimantUnmeasured as exc:
        return TestResult(name, "dataset_inference", 1.0, {}, False, str(exc))
    except (SuspectError, QueryBudgetExceeded) as exc:
        why = "its query budget ran out" if isinstance(exc, QueryBudgetExceeded) else "it failed or refused a query"
        return TestResult(name, "dataset_inference", 1.0, {}, False, f"the suspect did not answer: {why}")


def dataset_inference_method(*, suspect_kind: str, requested: str | None) -> Method:
    """The method dataset inference will use against a suspect of this kind (MinGD needs a TorchScript file)."""
    white_box = suspect_kind == "torchscript"
    if requested == "blind_walk" or not white_box:
        return "blind_walk"
    return "mingd"


def claimant_dataset_features(spec: Mapping[str, Any], *, claimant_path: str) -> dict[str, Any]:
    """The claimant's half of dataset inference, run in a sandbox call of its own (the suspect is not there).

    ``spec``: the run's ``num_classes``, ``input_shape``, ``low``, ``high``, ``method`` (from
    :func:`dataset_inference_method`, for every set) and its ``datasets`` (a list of ``{name, members,
    nonmembers, split_seed}``): returns ``{name: {"method", "private", "public"}}``, every set measured.
    An older spec with the single ``dataset`` gets that set's ``{"method", "private", "public"}`` alone.
    """
    claimant = _claimant_module(claimant_path)
    measured = {
        str(dataset["name"]): claimant_side_features(
            claimant=claimant,
            private_x=np.asarray(dataset["members"], dtype=np.float32),
            public_x=np.asarray(dataset["nonmembers"], dtype=np.float32),
            input_shape=tuple(int(d) for d in spec["input_shape"]),
            num_classes=int(spec["num_classes"]),
            split_seed=int(dataset.get("split_seed", 0)),
            method=spec["method"],
            low=float(spec.get("low", 0.0)),
            high=float(spec.get("high", 1.0)),
        )
        for dataset in dataset_specs(spec)
    }
    if not measured:
        raise ValueError("the spec names no dataset set to measure")
    if spec.get("datasets"):
        return measured
    return next(iter(measured.values()))
