"""Model artifacts: OpenSSF model-signing digests, and validation of uploads in the sandbox (no Django).

The parent process only hashes an upload. Everything that parses it (zip directory, protobuf,
TorchScript) runs in `workers.sandbox`, on a private copy of the upload (`files=`); nothing here ever
unpickles an uploaded file: Python pickles (`torch.save`) are recognised by their bytes and refused, and
TorchScript is read with `torch.jit.load`, whose own deserializer rebuilds only TorchScript types.
Rejection reasons are our own sentences: nothing the file says (names, op types, error texts of its
parser or of the model itself) is put into them, since a model can make those say anything.
"""

import hashlib
import os
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal, NoReturn, TypeVar

from workers.sandbox import SandboxError, SandboxRejection, SandboxUnavailable, run_sandboxed

Format = Literal["onnx", "torchscript"]
R = TypeVar("R")

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MEMORY_BYTES = 4 << 30
TEST_BATCH = 2
_HEX64 = re.compile(r"[0-9a-f]{64}")
_RESULT_KINDS = ((tuple, "a tuple"), (list, "a list"), (dict, "a dict"), (str, "a string"), (type(None), "None"))
_PICKLE_REASON = (
    "the file is a Python pickle (as torch.save writes), which can run code when loaded and is never opened here; "
    "upload TorchScript (torch.jit.script(model).save(path)) or ONNX instead"
)


class ArtifactRejected(ValueError):  # noqa: N818 (a verdict on the upload, not a program error)
    """The artifact cannot be registered; `reason` is a sentence its owner can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ArtifactReport:
    """What the sandbox found: the format, the interface it checked and the output shape of a test batch."""

    format: Format
    input_shape: tuple[int, ...]
    num_classes: int
    output_shape: tuple[int, ...]
    # the model's labels on the registry's fixed probe set (ownership.probes): how later runs recognise it
    probe_labels: tuple[int, ...] = ()


def file_digest(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def model_digest(file_digests: Mapping[str, str]) -> str:
    """Hex SHA-256 of a model as OpenSSF model-signing v1.0 defines its subject digest.

    The hashed bytes are the concatenation of the raw 32-byte SHA-256 digests of the files (not their
    hex), ordered by each file's relative POSIX path compared component by component (model-signing
    sorts `PurePosixPath`s); the names themselves are not hashed (model-signing lists them beside the
    digests in its predicate). A single-file artifact named `m.onnx` therefore has the model digest
    SHA-256(SHA-256(bytes of m.onnx)), which differs from its file digest.
    """
    if not file_digests:
        raise ValueError("a model has at least one file")
    digest = hashlib.sha256()
    for name in sorted(file_digests, key=lambda name: (PurePosixPath(name).parts, name)):
        value = file_digests[name]
        if not _HEX64.fullmatch(value):
            raise ValueError(f"the digest of {name!r} must be 64 lowercase hex digits")
        digest.update(bytes.fromhex(value))
    return digest.hexdigest()


def detect_format(
    path: str | os.PathLike[str], *, timeout_s: float = DEFAULT_TIMEOUT_S, memory_bytes: int = DEFAULT_MEMORY_BYTES
) -> Format:
    """ "onnx" or "torchscript", decided in the sandbox; ArtifactRejected for anything else."""
    return _sandboxed(_detect_in_child, path, timeout_s=timeout_s, memory_bytes=memory_bytes)


def inspect_artifact(
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int],
    num_classes: int,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> ArtifactReport:
    """Load the model in the sandbox, check its interface and run a batch of zeros; ArtifactRejected on any failure."""
    shape = tuple(int(d) for d in input_shape)
    return _sandboxed(
        _inspect_in_child,
        path,
        timeout_s=timeout_s,
        memory_bytes=memory_bytes,
        input_shape=shape,
        num_classes=int(num_classes),
    )


def _sandboxed(
    fn: Callable[..., R], path: str | os.PathLike[str], *, timeout_s: float, memory_bytes: int, **kwargs: Any
) -> R:
    """`fn(path=<private copy of path>, **kwargs)` in the sandbox; every failure as ArtifactRejected."""
    try:
        return run_sandboxed(
            fn, timeout_s=timeout_s, memory_bytes=memory_bytes, files={"path": os.path.abspath(path)}, **kwargs
        )
    except SandboxUnavailable:
        raise  # the host cannot confine models: not the artifact's fault, and not a verdict on it
    except SandboxError as exc:
        if exc.kind == "rejected":
            raise ArtifactRejected(exc.reason) from None
        if exc.kind in ("timeout", "memory"):
            raise ArtifactRejected(f"{exc.reason} to load and run on a test batch") from None
        if exc.kind == "crash":
            raise ArtifactRejected(f"{exc.reason} while loading or running the model") from None
        raise ArtifactRejected(f"the model could not be checked: {exc.reason}") from None


# Below: runs in the sandbox's child process only.


def _reject(reason: str) -> NoReturn:
    raise SandboxRejection(reason)


def _detect_in_child(path: str) -> Format:
    form = _sniff(path)
    if form == "onnx":
        _parse_onnx(path)
    return form


def _inspect_in_child(path: str, input_shape: tuple[int, ...], num_classes: int) -> ArtifactReport:
    from ownership.probes import registry_probe_inputs

    form = _sniff(path)
    run = _run_onnx if form == "onnx" else _run_torchscript
    output_shape, labels = run(path, input_shape, num_classes, registry_probe_inputs(input_shape))
    return ArtifactReport(
        format=form, input_shape=input_shape, num_classes=num_classes, output_shape=output_shape, probe_labels=labels
    )


def _sniff(path: str) -> Format:
    """TorchScript by its zip layout, a refusal for pickles and other zips, else ONNX (to be parsed)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        _reject("the file is empty")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        _reject(_PICKLE_REASON)
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):
        return "onnx"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        _reject("the file is a damaged or truncated zip archive")
    roots = {name.split("/", 1)[0] for name in names}
    root = roots.pop() if len(roots) == 1 else None
    if root is not None and f"{root}/data.pkl" in names:
        if f"{root}/constants.pkl" in names and any(name.startswith(f"{root}/code/") for name in names):
            return "torchscript"
        _reject(_PICKLE_REASON)
    _reject("the file is a zip archive but not a TorchScript model (no code/ and constants.pkl entries)")


def _parse_onnx(path: str) -> Any:
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:
        _reject("the file is not an ONNX or TorchScript model: it does not parse as ONNX")
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        _reject("the file is not an ONNX or TorchScript model: it holds no ONNX graph")
    if any(uses_external_data(tensor) for tensor in _get_all_tensors(model)):
        _reject(
            "the ONNX model keeps its weights in external data files; upload one self-contained .onnx file "
            "(torch.onnx.export(..., external_data=False))"
        )
    return model


def _run_onnx(
    path: str, input_shape: tuple[int, ...], num_classes: int, probes: Any = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    import numpy as np

    _parse_onnx(path)
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception:
        _reject("onnxruntime cannot load the model (an unsupported operator, opset or a malformed graph)")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        _reject(f"the model takes {len(inputs)} inputs; it must take exactly one, a batch of inputs")
    declared = list(inputs[0].shape)
    if inputs[0].type != "tensor(float)":
        _reject("the model's input is not float32; it must be tensor(float)")
    if len(declared) != len(input_shape) + 1 or any(
        isinstance(d, int) and d != want for d, want in zip(declared[1:], input_shape, strict=False)
    ):
        _reject(f"the model expects input shape {_dims(declared[1:])} but the registration says {list(input_shape)}")
    if isinstance(declared[0], int):
        _reject(
            f"the model's batch dimension is fixed at {declared[0]}; export it with a dynamic batch axis "
            "(e.g. torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}))"
        )
    batch = np.zeros((TEST_BATCH, *input_shape), dtype=np.float32)
    try:
        outputs = session.run(None, {inputs[0].name: batch})
    except Exception:
        _reject(_failed_on_batch(input_shape))
    if len(outputs) != 1:
        _reject(f"the model has {len(outputs)} outputs; it must have one, the class scores [batch, {num_classes}]")
    scores = np.asarray(outputs[0])
    floating = scores.dtype.kind == "f"
    shape = _check_scores(
        scores.shape, str(scores.dtype), floating, floating and bool(np.isfinite(scores).all()), num_classes
    )
    labels: tuple[int, ...] = ()
    if probes is not None:
        try:
            answered = np.asarray(session.run(None, {inputs[0].name: probes})[0])
            labels = tuple(int(v) for v in answered.reshape(len(probes), -1).argmax(axis=1))
        except Exception:  # the probes are a record, not a check: a model that fails them is still registered
            labels = ()
    return shape, labels


def _run_torchscript(
    path: str, input_shape: tuple[int, ...], num_classes: int, probes: Any = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    import torch

    torch.set_num_threads(1)
    try:
        # TorchScript's own deserializer: it rebuilds TorchScript types only, never runs pickle
        module = torch.jit.load(path, map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception:
        _reject("the file is not a valid TorchScript model: torch.jit.load cannot read it")
    module.eval()
    try:
        arguments = module.forward.schema.arguments[1:]
    except (AttributeError, RuntimeError):
        _reject("the TorchScript model has no forward method")
    required = [argument for argument in arguments if not argument.has_default_value()]
    if len(required) != 1 or not isinstance(required[0].type, torch.TensorType):
        count = len(required)
        what = "one argument that is not a Tensor" if count == 1 else f"{count} required arguments"
        _reject(f"the model's forward takes {what}; it must take exactly one Tensor, a batch of inputs")
    try:
        with torch.inference_mode():
            scores = module(torch.zeros(TEST_BATCH, *input_shape))
    except Exception:
        _reject(_failed_on_batch(input_shape))
    if not isinstance(scores, torch.Tensor):
        # named by our own words: a TorchScript NamedTuple's class name is the model's
        kind = next((name for cls, name in _RESULT_KINDS if isinstance(scores, cls)), "something else")
        _reject(f"the model returns {kind}; it must return one tensor of class scores")
    floating = scores.is_floating_point()
    finite = floating and bool(torch.isfinite(scores).all())
    shape = _check_scores(tuple(scores.shape), str(scores.dtype), floating, finite, num_classes)
    labels: tuple[int, ...] = ()
    if probes is not None:
        try:
            with torch.inference_mode():
                answered = module(torch.from_numpy(probes))
            labels = tuple(int(v) for v in answered.reshape(len(probes), -1).argmax(dim=1).tolist())
        except Exception:  # the probes are a record, not a check: a model that fails them is still registered
            labels = ()
    return shape, labels


def _check_scores(
    shape: tuple[int, ...], dtype: str, floating: bool, finite: bool, num_classes: int
) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    if len(shape) == 2 and shape[0] == TEST_BATCH and shape[1] != num_classes:
        _reject(f"the model outputs shape {list(shape)} but the registration says {num_classes} classes")
    if shape != (TEST_BATCH, num_classes):
        _reject(
            f"the model outputs shape {list(shape)} for a batch of {TEST_BATCH}; "
            f"expected [{TEST_BATCH}, {num_classes}] (batch, classes)"
        )
    if not floating:
        _reject(f"the model outputs {dtype} values; it must output floating-point class scores")
    if not finite:
        _reject("the model outputs NaN or infinite scores on a batch of zeros")
    return shape


def _dims(dims: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in dims) + "]"


def _failed_on_batch(input_shape: tuple[int, ...]) -> str:
    # the model's own error text is not quoted: a model can make it say anything (a file it read, say)
    return (
        f"the model failed on a batch of {TEST_BATCH} inputs of shape {list(input_shape)}; "
        "check that the registered input shape is the one the model takes"
    )
