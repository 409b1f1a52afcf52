"""Artifacts: OpenSSF digests, and sandboxed validation that accepts real models and refuses everything else."""

import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from ownership.artifacts import (
    ArtifactRejected,
    ArtifactReport,
    detect_format,
    file_digest,
    inspect_artifact,
    model_digest,
)
from ownership.probes import PROBES, registry_probe_inputs
from tests.ownership.model_files import digits_mlp, onnx_file, torchscript_file

SHAPE = (1, 8, 8)
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning",
    "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning",
    "ignore:The feature will be removed:DeprecationWarning",
)


class Canary:
    """Unpickling this creates a directory: proof that nothing unpickled the upload."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


class TwoInputs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] + y.flatten(1)[:, :10]


class TupleOutput(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(1)[:, :10], x


class NanOutput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] / 0.0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits MLP as TorchScript and ONNX, made once for this module."""
    folder = tmp_path_factory.mktemp("models")
    return {"torchscript": torchscript_file(folder / "mlp.pt"), "onnx": onnx_file(folder / "mlp.onnx")}


def _inspect(path: Path, *, input_shape: tuple[int, ...] = SHAPE, num_classes: int = 10, **limits: float) -> str:
    with pytest.raises(ArtifactRejected) as caught:
        inspect_artifact(path, input_shape=input_shape, num_classes=num_classes, **limits)  # type: ignore[arg-type]
    return caught.value.reason


@pytest.mark.parametrize("form", ["torchscript", "onnx"])
def test_accepts_a_model_that_matches_its_registration(models: dict[str, Path], form: str) -> None:
    report = inspect_artifact(str(models[form]), input_shape=[1, 8, 8], num_classes=10)

    # the registration records the model's labels on the registry's fixed probes (both files hold the same weights)
    with torch.inference_mode():
        probed = digits_mlp()(torch.from_numpy(registry_probe_inputs(SHAPE))).argmax(dim=1).tolist()
    assert len(probed) == PROBES
    assert report == ArtifactReport(
        format=form,  # type: ignore[arg-type]
        input_shape=SHAPE,
        num_classes=10,
        output_shape=(2, 10),
        probe_labels=tuple(probed),
    )


@pytest.mark.parametrize("form", ["torchscript", "onnx"])
def test_detects_the_format(models: dict[str, Path], form: str) -> None:
    assert detect_format(models[form]) == form


def test_onnx_with_a_different_input_shape_names_both_shapes(models: dict[str, Path]) -> None:
    reason = _inspect(models["onnx"], input_shape=(1, 28, 28))

    assert reason == "the model expects input shape [1, 8, 8] but the registration says [1, 28, 28]"


def test_torchscript_with_a_different_input_shape_reports_the_failed_forward_pass(models: dict[str, Path]) -> None:
    reason = _inspect(models["torchscript"], input_shape=(1, 28, 28))

    assert reason == (
        "the model failed on a batch of 2 inputs of shape [1, 28, 28]; "
        "check that the registered input shape is the one the model takes"
    )
    assert "2x784" not in reason  # the runtime's own text is not echoed


@pytest.mark.parametrize("form", ["torchscript", "onnx"])
def test_a_different_class_count_names_both_counts(models: dict[str, Path], form: str) -> None:
    reason = _inspect(models[form], num_classes=5)

    assert reason == "the model outputs shape [2, 10] but the registration says 5 classes"


@pytest.mark.parametrize("content", [b"this is not a model" * 20, bytes(range(256)) * 16], ids=["text", "binary"])
def test_rejects_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(content)

    assert _inspect(path).startswith("the file is not an ONNX or TorchScript model")
    with pytest.raises(ArtifactRejected, match="not an ONNX or TorchScript model"):
        detect_format(path)


def test_rejects_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.touch()

    assert _inspect(path) == "the file is empty"


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("torchscript", "the file is a damaged or truncated zip archive"),
        ("onnx", "the file is not an ONNX or TorchScript model: it does not parse as ONNX"),
    ],
)
def test_rejects_a_truncated_file(models: dict[str, Path], tmp_path: Path, form: str, expected: str) -> None:
    data = models[form].read_bytes()
    path = tmp_path / "truncated"
    path.write_bytes(data[: len(data) // 2])

    assert _inspect(path).startswith(expected)


def test_the_canary_fires_when_unpickled(tmp_path: Path) -> None:
    target = tmp_path / "unpickled"

    pickle.loads(pickle.dumps(Canary(target)))  # noqa: S301 (our own bytes: proves the canary works)

    assert target.is_dir()


@pytest.mark.parametrize("layout", ["torch.save", "torch.save legacy", "pickle"])
def test_rejects_a_pickle_without_unpickling_it(tmp_path: Path, layout: str) -> None:
    target = tmp_path / "unpickled"
    path = tmp_path / "model.pt"
    payload = {"state_dict": digits_mlp().state_dict(), "hook": Canary(target)}
    if layout == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=layout == "torch.save")

    reason = _inspect(path)

    assert reason.startswith("the file is a Python pickle (as torch.save writes)")
    assert not target.exists()


def test_rejects_a_zip_that_is_not_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/readme.txt", "weights are elsewhere")

    assert _inspect(path).startswith("the file is a zip archive but not a TorchScript model")


def test_rejects_a_model_with_two_inputs(tmp_path: Path) -> None:
    path = tmp_path / "two.pt"
    torch.jit.script(TwoInputs()).save(str(path))

    assert _inspect(path) == (
        "the model's forward takes 2 required arguments; it must take exactly one Tensor, a batch of inputs"
    )


def test_rejects_onnx_with_two_inputs(tmp_path: Path) -> None:
    path = tmp_path / "two.onnx"
    torch.onnx.export(
        TwoInputs(), (torch.zeros(1, *SHAPE), torch.zeros(1, *SHAPE)), str(path), input_names=["x", "y"], dynamo=False
    )

    assert _inspect(path) == "the model takes 2 inputs; it must take exactly one, a batch of inputs"


def test_rejects_a_tuple_output(tmp_path: Path) -> None:
    path = tmp_path / "tuple.pt"
    torch.jit.script(TupleOutput()).save(str(path))

    assert _inspect(path) == "the model returns a tuple; it must return one tensor of class scores"


def test_rejects_non_finite_scores(tmp_path: Path) -> None:
    path = tmp_path / "nan.pt"
    torch.jit.script(NanOutput()).save(str(path))

    assert _inspect(path) == "the model outputs NaN or infinite scores on a batch of zeros"


def test_rejects_onnx_with_a_fixed_batch_size(tmp_path: Path) -> None:
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(digits_mlp(), (torch.zeros(1, *SHAPE),), str(path), input_names=["input"], dynamo=False)

    assert _inspect(path).startswith("the model's batch dimension is fixed at 1; export it with a dynamic batch axis")


def test_rejects_onnx_with_external_weights(models: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "external.onnx"
    onnx.save_model(onnx.load(models["onnx"]), path, save_as_external_data=True, location="weights", size_threshold=0)

    assert _inspect(path).startswith("the ONNX model keeps its weights in external data files")


def test_a_slow_load_is_rejected_with_the_time_limit(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # a cold child (no warm spare that another test may have left) takes longer than this to import its runtime
    # (0.2 s was not: on a warm page cache the whole check sometimes finished within it)
    monkeypatch.setenv("MODELCOURT_SANDBOX_PREWARM", "0")
    reason = _inspect(models["onnx"], timeout_s=0.02)
    assert reason == "the model took longer than 0.02 s to load and run on a test batch"


def test_a_load_over_the_memory_limit_is_rejected(models: dict[str, Path]) -> None:
    reason = _inspect(models["onnx"], memory_bytes=64 << 20)

    assert reason == "the model needed more than 64 MiB of memory to load and run on a test batch"


def test_file_digest_is_the_sha256_of_the_bytes_and_equal_for_equal_content(tmp_path: Path) -> None:
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    first.write_bytes(b"model bytes" * 100_000)
    second.write_bytes(b"model bytes" * 100_000)

    assert file_digest(first) == file_digest(second) == hashlib.sha256(b"model bytes" * 100_000).hexdigest()


def test_model_digest_of_one_file_hashes_its_raw_digest() -> None:
    digest = hashlib.sha256(b"weights").hexdigest()

    assert model_digest({"model.onnx": digest}) == hashlib.sha256(bytes.fromhex(digest)).hexdigest()


def test_model_digest_hashes_raw_digests_in_path_order_and_ignores_mapping_order() -> None:
    # model-signing compares paths component by component: "a/b" sorts before "a-b" although "-" < "/"
    digests = {name: hashlib.sha256(name.encode()).hexdigest() for name in ("a-b", "a/b", "0")}
    expected = hashlib.sha256(b"".join(bytes.fromhex(digests[name]) for name in ("0", "a/b", "a-b"))).hexdigest()

    assert model_digest(digests) == model_digest(dict(reversed(digests.items()))) == expected


@pytest.mark.parametrize("bad", [{}, {"m.onnx": "ABC"}, {"m.onnx": "0" * 63}])
def test_model_digest_refuses_malformed_input(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the message varies by case)
        model_digest(bad)


def test_model_digest_matches_openssf_model_signing() -> None:
    # known answers from model-signing 1.1.1: hashing.Config().hash(path), then the in-toto subject's sha256
    folder = {"a-b": b"weights-a", "sub/x": b"weights-b", "0": b"w0"}
    single = {"single.onnx": b"onnx bytes"}

    def digest(files: dict[str, bytes]) -> str:
        return model_digest({name: hashlib.sha256(data).hexdigest() for name, data in files.items()})

    assert digest(folder) == "c5d29887bde5c7b5b5614958c1a9703d75b89d3734c03f74724e064c301d527e"
    assert digest(single) == "3d786220eea6f2fb72f87b1f606f1459aaa9935325ad814ac9e383f07b5c8bee"
