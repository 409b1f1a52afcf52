"""Evidence .npz files: round trips, a container-independent digest, and a precise reason for each rejection."""

import io
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ownership.commitments import evidence_digest
from ownership.evidence import EvidenceRejected, dump_evidence, load_evidence

SHAPE = (1, 8, 8)
rng = np.random.default_rng(0)


class Canary:
    """Unpickling this creates a directory: proof that nothing unpickled the upload."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


def watermark(count: int = 5) -> dict[str, np.ndarray]:
    return {
        "inputs": rng.random((count, *SHAPE), dtype=np.float32),
        "labels": rng.integers(0, 10, size=count, dtype=np.int64),
    }


def dataset(count: int = 12) -> dict[str, np.ndarray]:
    return {name: rng.random((count, *SHAPE), dtype=np.float32) for name in ("members", "nonmembers")}


def savez(**arrays: object) -> bytes:
    """An .npz as numpy writes it, pickles allowed (as an uploader's numpy would)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    """A single .npy file, not an archive."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def load(data: bytes, kind: str = "watermark", **options: int) -> dict[str, np.ndarray]:
    return load_evidence(data, kind=kind, input_shape=list(SHAPE), num_classes=10, **options)


def rejection(data: bytes, kind: str = "watermark", **options: int) -> str:
    with pytest.raises(EvidenceRejected) as caught:
        load(data, kind, **options)
    return caught.value.reason


@pytest.mark.parametrize(("kind", "make"), [("watermark", watermark), ("fingerprint", watermark), ("dataset", dataset)])
def test_round_trip(kind: str, make: Callable[[], dict[str, np.ndarray]]) -> None:
    arrays = make()

    loaded = load(dump_evidence(arrays), kind)

    assert list(loaded) == list(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)


def test_the_digest_is_equal_for_the_same_arrays_saved_twice() -> None:
    arrays = watermark()

    compressed = load(dump_evidence(arrays))
    plain = load(savez(labels=arrays["labels"], inputs=np.asfortranarray(arrays["inputs"])))

    assert evidence_digest(compressed) == evidence_digest(plain) == evidence_digest(arrays)


def test_accepts_the_sample_count_limits() -> None:
    assert len(load(dump_evidence(watermark(1)))["inputs"]) == 1
    assert len(load(dump_evidence(watermark(10_000)))["inputs"]) == 10_000
    assert len(load(dump_evidence(dataset(10)), "dataset")["members"]) == 10


def test_rejects_a_file_over_the_size_limit_before_parsing() -> None:
    assert rejection(b"x" * 101, max_bytes=100) == "the evidence file is 101 bytes; the limit is 100"


@pytest.mark.parametrize(
    "data",
    [b"", b"not an archive", pickle.dumps({"inputs": [1.0]}), npy(np.zeros(3, dtype=np.float32))],
    ids=["empty", "text", "pickle", "npy"],
)
def test_rejects_what_is_not_a_zip(data: bytes) -> None:
    assert rejection(data).startswith("the evidence is not an .npz archive")


def test_rejects_a_truncated_archive() -> None:
    data = dump_evidence(watermark(200))

    assert rejection(data[: len(data) // 2]) == "the .npz archive is damaged (a member cannot be read or decompressed)"


def test_rejects_a_missing_array() -> None:
    reason = rejection(savez(inputs=watermark()["inputs"]))

    assert reason == "watermark evidence must hold exactly the arrays inputs, labels (missing: labels)"


def test_rejects_an_extra_array() -> None:
    reason = rejection(savez(**watermark(), notes=np.zeros(1)))

    assert reason == "watermark evidence must hold exactly the arrays inputs, labels (1 unexpected member(s))"


def test_rejects_dataset_arrays_in_watermark_evidence() -> None:
    reason = rejection(dump_evidence(dataset()))

    assert reason == (
        "watermark evidence must hold exactly the arrays inputs, labels "
        "(missing: inputs, labels; 2 unexpected member(s))"
    )


def test_rejects_a_member_that_is_not_npy() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("inputs.npy", b"not an array")
        archive.writestr("labels.npy", b"not an array")

    assert rejection(buffer.getvalue()) == "array 'inputs' is not a .npy array"


def test_rejects_object_arrays_without_unpickling_them(tmp_path: Path) -> None:
    target = tmp_path / "unpickled"
    inputs = np.empty(1, dtype=object)
    inputs[0] = Canary(target)

    reason = rejection(savez(inputs=inputs, labels=np.zeros(1, dtype=np.int64)))

    assert reason == "array 'inputs' holds Python objects (dtype object); save plain float32 arrays"
    assert not target.exists()


@pytest.mark.parametrize(
    ("name", "dtype", "expected"),
    [
        ("inputs", np.float64, "array 'inputs' has dtype float64; expected float32 (convert with .astype(np.float32))"),
        ("labels", np.int32, "array 'labels' has dtype int32; expected int64 (convert with .astype(np.int64))"),
        (
            "inputs",
            np.dtype(">f4"),
            "array 'inputs' has dtype >f4; expected float32 (convert with .astype(np.float32))",
        ),
    ],
)
def test_rejects_a_wrong_dtype_without_casting(name: str, dtype: np.dtype, expected: str) -> None:
    arrays = watermark()
    arrays[name] = arrays[name].astype(dtype)

    assert rejection(savez(**arrays)) == expected


def test_rejects_inputs_of_another_shape() -> None:
    arrays = watermark()
    arrays["inputs"] = arrays["inputs"].reshape(5, 64)

    assert rejection(savez(**arrays)) == "array 'inputs' has shape [5, 64]; expected [N, 1, 8, 8]"


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (np.zeros(4, dtype=np.int64), "array 'labels' has shape [4]; expected [5] (one label per input)"),
        (np.zeros((5, 1), dtype=np.int64), "array 'labels' has shape [5, 1]; expected [5] (one label per input)"),
    ],
)
def test_rejects_labels_that_do_not_match_the_inputs(labels: np.ndarray, expected: str) -> None:
    assert rejection(savez(inputs=watermark()["inputs"], labels=labels)) == expected


@pytest.mark.parametrize(
    ("kind", "arrays", "expected"),
    [
        ("watermark", watermark(0), "array 'inputs' holds 0 samples; expected between 1 and 10000"),
        ("watermark", watermark(10_001), "array 'inputs' holds 10001 samples; expected between 1 and 10000"),
        (
            "dataset",
            {**dataset(12), "members": dataset(9)["members"]},
            "array 'members' holds 9 samples; expected between 10 and 10000",
        ),
    ],
    ids=["none", "too many", "too few members"],
)
def test_rejects_a_sample_count_out_of_range(kind: str, arrays: dict[str, np.ndarray], expected: str) -> None:
    assert rejection(savez(**arrays), kind) == expected


@pytest.mark.parametrize("label", [-1, 10])
def test_rejects_labels_outside_the_classes(label: int) -> None:
    arrays = watermark()
    arrays["labels"][3] = label

    assert rejection(savez(**arrays)) == (
        f"array 'labels' holds {label} at index 3; labels must be in [0, 10) for 10 classes"
    )


@pytest.mark.parametrize(
    ("kind", "name", "value"), [("watermark", "inputs", np.nan), ("dataset", "nonmembers", np.inf)]
)
def test_rejects_non_finite_inputs(kind: str, name: str, value: float) -> None:
    arrays = watermark() if kind == "watermark" else dataset()
    arrays[name][2, 0, 3, 4] = value

    assert rejection(savez(**arrays), kind) == f"array {name!r} holds NaN or infinite values (first in sample 2)"


def test_rejects_evidence_that_unpacks_beyond_the_limit() -> None:
    reason = rejection(dump_evidence(watermark(100)), max_unpacked_bytes=1000)

    assert reason == f"the evidence unpacks to {100 * 64 * 4 + 100 * 8} bytes; the limit is 1000"


def test_rejects_an_unknown_kind() -> None:
    assert (
        rejection(dump_evidence(watermark()), "backdoor")
        == "kind must be one of watermark, fingerprint, dataset, api_watermark"
    )


def test_dump_refuses_object_arrays() -> None:
    with pytest.raises(ValueError, match="allow_pickle"):
        dump_evidence({"inputs": np.array([object()], dtype=object)})


# --- generation caps ------------------------------------------------------------------------


def _model(owner, input_shape: list[int]):  # type: ignore[no-untyped-def]
    from django.utils import timezone

    from ownership.models import RegisteredModel

    return RegisteredModel.objects.create(
        owner=owner,
        name=f"wide-{'x'.join(map(str, input_shape))}",
        input_shape=input_shape,
        num_classes=10,
        artifact="artifacts/unused.onnx",
        artifact_format=RegisteredModel.Format.ONNX,
        artifact_size=1,
        file_digests={},
        model_digest="0" * 64,
        created_at=timezone.now(),
    )


def _client(user):  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    return client


def _no_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    from ownership import watermarks

    def refuse(**_: object) -> dict[str, np.ndarray]:
        raise AssertionError("the generator ran: the cap must refuse before anything is allocated")

    monkeypatch.setattr(watermarks, "generate_watermark", refuse)


@pytest.mark.django_db
def test_a_generation_over_the_element_cap_is_a_400_before_anything_is_allocated(
    owner, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from ownership.models import EvidenceSet

    # given the attack of 10 000 inputs of 4096 x 4096 (1.22 TiB of float32)
    model = _model(owner, [4096, 4096])
    _no_generation(monkeypatch)

    # when
    response = _client(owner).post(
        f"/api/v1/models/{model.public_id}/evidence/generate", {"count": 10_000}, format="json"
    )

    # then
    assert response.status_code == 400
    assert response.json()["code"] == "too_many_elements"
    assert "167772160000 values" in response.json()["detail"]
    assert "a count of at most 1 for this shape" in response.json()["detail"]
    assert not EvidenceSet.objects.exists()


@pytest.mark.django_db
def test_the_element_cap_is_a_setting_and_a_set_at_the_cap_is_generated(owner, settings) -> None:  # type: ignore[no-untyped-def]
    settings.MODELCOURT_MAX_GENERATED_ELEMENTS = 5 * 64
    model = _model(owner, [1, 8, 8])
    url = f"/api/v1/models/{model.public_id}/evidence/generate"
    client = _client(owner)

    over = client.post(url, {"count": 6}, format="json")
    at = client.post(url, {"count": 5}, format="json")

    assert over.status_code == 400
    assert "a count of at most 5 for this shape" in over.json()["detail"]
    assert at.status_code == 201, at.content


@pytest.mark.django_db
def test_generation_is_throttled_per_owner(owner, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from django.conf import settings
    from rest_framework.throttling import ScopedRateThrottle

    from tests.conftest import _user

    assert "evidence-generate" in settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    monkeypatch.setattr(
        ScopedRateThrottle, "THROTTLE_RATES", {**ScopedRateThrottle.THROTTLE_RATES, "evidence-generate": "2/min"}
    )
    _no_generation(monkeypatch)  # over-cap requests: each reaches the view, none allocates
    model = _model(owner, [4096, 4096])
    url = f"/api/v1/models/{model.public_id}/evidence/generate"
    client = _client(owner)

    codes = [client.post(url, {"count": 10_000}, format="json").status_code for _ in range(3)]

    assert codes == [400, 400, 429]
    assert client.post(url, {"count": 10_000}, format="json").json()["code"] == "throttled"
    # another owner has a budget of their own
    other = _user("oscar", "owner")
    other_model = _model(other, [4096, 4096])
    other_url = f"/api/v1/models/{other_model.public_id}/evidence/generate"
    assert _client(other).post(other_url, {"count": 10_000}, format="json").status_code == 400


@pytest.mark.django_db
def test_numpy_refusing_a_shape_is_a_400_in_our_words(owner) -> None:  # type: ignore[no-untyped-def]
    # a shape NumPy cannot allocate (71 dimensions with the batch), well under the element cap
    model = _model(owner, [1] * 70)

    response = _client(owner).post(f"/api/v1/models/{model.public_id}/evidence/generate", {"count": 2}, format="json")

    assert response.status_code == 400
    assert response.json()["code"] == "generate"
    assert "cannot be generated" in response.json()["detail"]
    assert "ndarray" not in response.content.decode()
    assert "maximum supported dimension" not in response.content.decode()
