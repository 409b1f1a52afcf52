"""Stress tests from plain data: a watermarked digits model stolen several ways, its evidence tested on each."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from modelcourt.embed import embed_watermark
from ownership.watermarks import generate_watermark
from verification.methods import thefts
from verification.methods.datasets import TaskData
from verification.methods.panels import ReferencePanel
from verification.methods.stress import (
    CONTROL,
    StressSpecError,
    prune_weights_by_name,
    run_stress_test,
    theft_seed,
)

# the thief works less hard than the defaults here, so that the whole file stays fast
QUICK = {"student_epochs": 8, "control_epochs": 20, "extract_budget": 800, "fine_tune_epochs": 5}


@pytest.fixture(scope="module")
def watermark() -> dict[str, np.ndarray]:
    return generate_watermark(seed=b"stress-test", count=40, input_shape=[64], num_classes=10)


@pytest.fixture(scope="module")
def files(
    tmp_path_factory: pytest.TempPathFactory,
    digits: TaskData,
    digits_owner: nn.Module,
    digits_panel: ReferencePanel,
    watermark: dict[str, np.ndarray],
) -> dict[str, Path]:
    """The owner's marked model as TorchScript and ONNX, and the panel saved as a folder."""
    root = tmp_path_factory.mktemp("stress")
    marked = copy.deepcopy(digits_owner)
    report = embed_watermark(
        marked,
        train_inputs=digits.owner_x,
        train_labels=digits.owner_y,
        trigger_inputs=watermark["inputs"],
        trigger_labels=watermark["labels"],
        epochs=15,
    )
    assert report.trigger_accuracy == 1.0
    marked.eval()
    torch.jit.save(torch.jit.trace(marked, torch.zeros(1, 64)), str(root / "marked.pt"))
    torch.onnx.export(
        marked,
        (torch.zeros(1, 64),),
        str(root / "marked.onnx"),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    # a copy of the shared panel object: saving records file digests on the copy only
    dataclasses.replace(digits_panel, members=list(digits_panel.members)).save(root / "panel")
    return {"torchscript": root / "marked.pt", "onnx": root / "marked.onnx", "panel": root / "panel"}


def _spec(files: dict[str, Path], watermark: dict[str, np.ndarray], **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"kind": "torchscript", "path": str(files["torchscript"])},
        "num_classes": 10,
        "input_shape": [64],
        "panel_dir": str(files["panel"]),
        "thefts": ["copy", "fine_tune"],
        "alpha": 1e-3,
        "seed": 0,
        "claims": [
            {"name": "wm", "kind": "watermark", "inputs": watermark["inputs"], "labels": watermark["labels"]},
        ],
        "settings": QUICK,
    }
    spec.update(overrides)
    return spec


def _cell(results: dict[str, Any], theft: str, evidence: str = "wm") -> dict[str, Any]:
    [row] = [r for r in results["rows"] if r["theft"] == theft]
    [cell] = [c for c in row["cells"] if c["evidence"] == evidence]
    return cell


def test_a_watermark_survives_copy_and_fine_tuning_and_never_confirms_on_the_control(files, watermark) -> None:  # type: ignore[no-untyped-def]
    phases: list[tuple[int, str]] = []
    out = run_stress_test(_spec(files, watermark), lambda percent, phase: phases.append((percent, phase)))
    results = out["results"]

    assert [r["theft"] for r in results["rows"]] == ["copy", "fine_tune", CONTROL]
    assert [r["control"] for r in results["rows"]] == [False, False, True]
    assert all(len(r["cells"]) == 1 for r in results["rows"])
    assert _cell(results, "copy")["confirmed"]
    assert _cell(results, "copy")["match_rate"] == 1.0
    assert _cell(results, "fine_tune")["confirmed"]
    # an uploaded set's null is the panel's models (never below delta = alpha / 10): confirmed, not astronomically
    assert _cell(results, "fine_tune")["p_value"] <= 1e-3
    assert not _cell(results, CONTROL)["confirmed"]
    assert _cell(results, CONTROL)["match_rate"] < 0.4
    copy_row = results["rows"][0]
    assert copy_row["agreement"] == 1.0
    assert copy_row["accuracy"] == results["owner"]["accuracy"]
    assert all(0.8 < r["accuracy"] <= 1.0 for r in results["rows"])
    assert results["evidence"][0]["owner_match_rate"] == 1.0
    # progress only goes up and ends at 100
    percents = [p for p, _ in phases]
    assert percents == sorted(percents)
    assert percents[-1] == 100
    assert {"copy_simulate_s", "fine_tune_tests_s", f"{CONTROL}_simulate_s", "total_s"} <= set(out["timings"])


def test_the_same_seed_gives_the_same_table(files, watermark) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(files, watermark, thefts=["prune", "distill"], seed=11)
    first = run_stress_test(spec)["results"]
    again = run_stress_test(spec)["results"]
    other = run_stress_test({**spec, "seed": 12})["results"]

    assert first == again
    assert [r["seed"] for r in first["rows"]] == [theft_seed(11, t) for t in ("prune", "distill", CONTROL)]
    assert first["rows"] != other["rows"]
    # a theft's result does not depend on which other thefts were asked for
    alone = run_stress_test({**spec, "thefts": ["distill"]})["results"]
    assert alone["rows"][0] == first["rows"][1]


def test_pruning_works_on_a_loaded_torchscript_model(files, digits: TaskData) -> None:  # type: ignore[no-untyped-def]
    module = torch.jit.load(str(files["torchscript"]))
    assert thefts.prunable_weights(module) == []  # why stress tests prune by parameter name
    sparsity = prune_weights_by_name(module, digits.public_x, digits.public_y, amount=0.5, epochs=2, seed=1)

    weights = [p for name, p in module.named_parameters() if name.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert sparsity == pytest.approx(0.5, abs=0.01)
    assert zeros == pytest.approx(sparsity)


def test_an_onnx_model_supports_the_black_box_thefts_only(files, watermark) -> None:  # type: ignore[no-untyped-def]
    onnx = {"kind": "onnx", "path": str(files["onnx"])}
    with pytest.raises(StressSpecError, match="need a TorchScript model"):
        run_stress_test(_spec(files, watermark, model=onnx, thefts=["copy", "prune"]))

    results = run_stress_test(_spec(files, watermark, model=onnx, thefts=["copy", "extract"]))["results"]
    assert results["owner"]["format"] == "onnx"
    assert _cell(results, "copy")["confirmed"]
    assert results["rows"][1]["thief_queries"] == QUICK["extract_budget"]


def test_dataset_evidence_gets_its_own_cell(files, watermark, digits: TaskData) -> None:  # type: ignore[no-untyped-def]
    dataset = {"name": "di", "members": digits.owner_x[:30], "nonmembers": digits.holdout_x[:30], "split_seed": 3}
    results = run_stress_test(_spec(files, watermark, thefts=["copy"], datasets=[dataset]))["results"]

    assert [e["name"] for e in results["evidence"]] == ["wm", "di"]
    cell = _cell(results, "copy", "di")
    assert 0.0 <= cell["p_value"] <= 1.0
    assert cell["match_rate"] is None


class _NaNAnswers(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :10] * float("nan")


def test_a_model_answering_garbage_is_refused_with_a_reason(files, watermark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "nan.pt"
    torch.jit.save(torch.jit.script(_NaNAnswers()), str(path))
    with pytest.raises(StressSpecError, match=r"does not answer like a 10-class classifier.*NaN"):
        run_stress_test(_spec(files, watermark, model={"kind": "torchscript", "path": str(path)}))


def test_unknown_thefts_and_settings_are_refused(files, watermark) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StressSpecError, match="thefts must be"):
        run_stress_test(_spec(files, watermark, thefts=["photocopy"]))
    with pytest.raises(StressSpecError, match="unknown stress-test settings: epochs"):
        run_stress_test(_spec(files, watermark, settings={"epochs": 3}))
