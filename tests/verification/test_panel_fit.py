"""Which reference panels fit a registration: the check before filing, the panel list, an installed panel's layouts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from ownership.models import RegisteredModel
from verification import reference
from verification.exceptions import DisputeError, StressTestError
from verification.methods.datasets import digits_task
from verification.panel_fit import panel_check, panel_names_for, panels_for

DIGITS_REFUSAL = (
    "the reference panel 'digits' serves 10-class models with inputs [64], [8, 8] or [1, 8, 8]; "
    "this model takes [3, 32, 32]"
)


def _manifest(**fields: Any) -> dict[str, Any]:
    base = {
        "format": "modelcourt-panel-v1",
        "task": "letters",
        "num_classes": 26,
        "input_shape": [784],
        "params": {},
        "members": [{"name": f"m{i}"} for i in range(4)],
    }
    return {**base, **fields}


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data folder with two installed panels (one declaring 28x28 layouts) and one with a broken manifest."""
    installed = tmp_path / "panels" / "installed"
    for name, manifest in {
        "letters": _manifest(),
        "letters-images": _manifest(accepted_input_shapes=[[28, 28], [1, 28, 28]]),
    }.items():
        (installed / name).mkdir(parents=True)
        (installed / name / "manifest.json").write_text(json.dumps(manifest))
    (installed / "broken").mkdir()
    (installed / "broken" / "manifest.json").write_text("{not json")
    with override_settings(DATA_DIR=tmp_path):
        yield tmp_path


def _model(shape: list[int], classes: int = 10) -> RegisteredModel:
    return RegisteredModel(name="m", task="t", input_shape=shape, num_classes=classes)


def test_the_builtin_digits_declaration_matches_its_task() -> None:
    task = digits_task(0)
    served = reference.BUILTIN_INTERFACES["digits"]
    assert (served.task, served.num_classes, served.input_shape) == (task.name, task.num_classes, task.input_shape)


def test_every_digits_layout_fits_the_digits_panel(data_dir: Path) -> None:
    for shape in ([64], [8, 8], [1, 8, 8]):
        assert panel_names_for(_model(shape)) == ["digits"]
        panel_check(panel="digits", model=_model(shape))  # no error


def test_a_model_no_panel_serves_is_refused_with_the_reason(data_dir: Path) -> None:
    assert panels_for((3, 32, 32), 10) == []
    with pytest.raises(DisputeError) as caught:
        panel_check(panel="digits", model=_model([3, 32, 32]))
    assert caught.value.code == "no_panel"
    assert str(caught.value) == DIGITS_REFUSAL + "; no installed reference panel fits it"
    with pytest.raises(StressTestError) as stress:
        panel_check(panel="digits", model=_model([1, 8, 8], classes=5), error=StressTestError)
    assert stress.value.code == "no_panel"
    assert "this model has 5 classes and takes [1, 8, 8]" in str(stress.value)


def test_the_refusal_names_the_panels_that_do_fit(data_dir: Path) -> None:
    with pytest.raises(DisputeError, match=r"takes \[28, 28\]; panels that fit it: letters-images$"):
        panel_check(panel="letters", model=_model([28, 28], classes=26))


def test_installed_panels_serve_their_native_shape_unless_they_declare_more(data_dir: Path) -> None:
    assert panel_names_for(_model([784], classes=26)) == ["letters", "letters-images"]
    assert panel_names_for(_model([1, 28, 28], classes=26)) == ["letters-images"]
    assert reference.panel_info("letters").accepted_shapes == ((784,),)
    assert reference.panel_info("letters").size == 4


def test_an_unreadable_manifest_fits_nothing_and_breaks_nothing(data_dir: Path) -> None:
    assert "broken" in reference.panel_list()
    assert "broken" not in [info.name for info in reference.panel_infos()]
    with pytest.raises(DisputeError) as caught:
        panel_check(panel="broken", model=_model([64]))
    assert caught.value.code == "no_panel"
    assert "'broken' is installed without a readable manifest" in str(caught.value)
    assert "not json" not in str(caught.value)


def test_an_unknown_panel_is_refused(data_dir: Path) -> None:
    with pytest.raises(DisputeError, match="no reference panel named 'cifar'"):
        panel_check(panel="cifar", model=_model([64]))


def test_a_registration_with_a_malformed_shape_fits_nothing(data_dir: Path) -> None:
    assert panel_names_for(_model(["x", 64])) == []  # type: ignore[list-item]
    assert panel_names_for(_model([True, 64])) == []
    assert panel_names_for(RegisteredModel(name="m", task="t", input_shape={"x": 1}, num_classes=10)) == []


def test_the_panel_list_shows_what_each_panel_serves(arbiter: Any, data_dir: Path) -> None:
    client = APIClient()
    client.force_authenticate(arbiter)
    response = client.get("/api/v1/panels/")
    assert response.status_code == 200
    panels = {p["name"]: p for p in response.json()}
    assert set(panels) == {"digits", "letters", "letters-images"}
    digits = panels["digits"]
    assert digits["task"] == "digits"
    assert digits["num_classes"] == 10
    assert digits["input_shape"] == [64]
    assert digits["accepted_input_shapes"] == [[64], [8, 8], [1, 8, 8]]
    assert digits["size"] == reference.BUILTIN_SIZE
    assert "digits" in digits["description"]
    assert panels["letters-images"]["accepted_input_shapes"] == [[784], [28, 28], [1, 28, 28]]
    assert panels["letters"]["size"] == 4


@pytest.mark.django_db
def test_a_registration_says_which_panels_can_judge_it(owner: Any, data_dir: Path) -> None:
    from django.utils import timezone

    from ownership.api import ModelOutputSerializer

    def registered(name: str, shape: list[int]) -> RegisteredModel:
        return RegisteredModel.objects.create(
            owner=owner, name=name, task="t", input_shape=shape, num_classes=10, model_digest=name * 64,
            artifact_size=1, file_digests={}, created_at=timezone.now(),
        )  # fmt: skip

    fits, alone = registered("a", [1, 8, 8]), registered("b", [3, 32, 32])

    assert "digits" in ModelOutputSerializer(fits, context={"request": None}).data["panels"]
    assert ModelOutputSerializer(alone, context={"request": None}).data["panels"] == []
